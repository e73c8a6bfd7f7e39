"""The study's training protocol for one run (a trial): no Ray, no MLflow, just a callback.

``train(config, report)`` builds the backbone, attaches the method, trains with AdamW and timm's
``CosineLRScheduler`` stepped after each epoch as the study does (epochs 0 and 1 at
``warmup_lr_init``, epoch k at lr(k - 1)), evaluates at the
configured epochs and calls ``report(metrics, checkpoint_dir)`` after every epoch (training
metrics and lr always, validation metrics at evaluation epochs; a checkpoint at evaluation
epochs and every ``checkpoint_every`` epochs, else ``None``).

Final runs test either the last epoch (``final_acc_hp: true``, VTAB-1K: trained on train+val) or
the epoch with the best validation top-1 (``final_acc_hp: false``, CLIP on few-shot ImageNet:
trained on train, validated at every evaluation with early-stop patience); the model returned
and the last checkpoint reported hold the tested weights. The test set is evaluated once, at the
end, and never selects anything.
"""
from __future__ import annotations

import math
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import AfterValidator, ConfigDict, Field, ValidationError, model_validator
from timm.scheduler import CosineLRScheduler

from . import checkpoint as ckpt
from .api import apply, count_inserted
from .backbones import build_backbone, cached_weights, check_checkpoint, get_backbone
from .clip import build_clip_classifier
from .data import DataSpec, build_datasets, build_transforms
from .data.loaders import FORMATS, TRANSFORMS, augments, check_dataset
from .evaluation import evaluate, save_predictions
from .features import FeatureCache, cacheable
from .registry import get_method
from .typed import KeyedError, StrictModel, one_line

Report = Callable[[dict[str, Any], "Path | None"], None]


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite: the trial failed."""


def registered(lookup: Callable[[str], Any]) -> Callable[[str], str]:
    """A field validator: the name must be known to ``lookup`` (a registry's getter)."""
    def check(name: str) -> str:
        lookup(name)  # raises a one-line ValueError naming the allowed names
        return name
    return check


def _device_name(value: str) -> str:
    if value != "auto":
        try:
            torch.device(value)
        except RuntimeError:
            raise ValueError(f"unknown device '{value}'; use auto, cpu, cuda or cuda:N") from None
    return value


MethodName = Annotated[str, AfterValidator(registered(get_method))]
BackboneName = Annotated[str, AfterValidator(registered(get_backbone))]
# numpy's seeding takes 0 <= seed < 2**32: a seed outside would fail the run, not the config
Seed = Annotated[int, Field(ge=0, lt=2**32)]


class TrainSettings(StrictModel):
    """The training settings a study sets once for all its runs (its ``train:`` section). Keys
    follow the study's config files. Every float is finite: a NaN lr is a typo, not a trial."""

    model_config = ConfigDict(**StrictModel.model_config, allow_inf_nan=False)

    pretrained: bool = True  # False: random init (tests, training from scratch)
    normalize: bool = False
    # resize (VTAB-1K, Clevr) | randaugment (few-shot ImageNet) | cifar100 | resisc45 (many-shot):
    # each scenario's training and evaluation transforms as the study ran them (data.build_transforms)
    transform: Literal[TRANSFORMS] = "resize"
    class_names: str | None = None  # CLIP text head from these names: "imagenet" or a file; None: random head
    templates: str = "openai"  # the text head's prompt templates: "openai" (CLIP's 80) or a file
    epoch: int = Field(100, ge=1)
    warmup_epoch: int = Field(10, ge=0)
    lr: float = Field(1e-3, gt=0)
    wd: float = Field(1e-4, ge=0)
    warmup_lr_init: float = Field(1e-6, ge=0)
    lr_min: float = Field(1e-5, ge=0)
    batch_size: int = Field(64, ge=1)
    test_batch_size: int = Field(512, ge=1)
    drop_path_rate: float = Field(0.1, ge=0.0, lt=1.0)
    eval_freq: int = Field(0, ge=0)  # evaluate every N epochs (0: only the first and the last epoch)
    early_patience: int = Field(0, ge=0)  # evaluations without improvement before stopping (0: never)
    final_acc_hp: bool = True  # final: test the last epoch; false: train on train, test the best-val epoch
    save_predictions: bool = False  # final: keep test logits + labels (predictions_test.npz by the checkpoint)
    feature_cache: bool | None = None  # None: on for linear probing where exact (no drop-path, no dropout)
    preload: bool | None = None  # keep decoded images in memory; None: when under 1 GiB
    device: Annotated[str, AfterValidator(_device_name)] = "auto"
    bf16: bool = False
    num_workers: int = Field(0, ge=0)
    # Checkpoint every N epochs besides the evaluation epochs (0: only at those), so a resumed or
    # retried trial continues from its last finished epoch.
    checkpoint_every: int = Field(1, ge=0)

    @model_validator(mode="after")
    def _warmup_inside_the_run(self) -> "TrainSettings":
        # A run that never leaves the warm-up never trains at its lr: the lr searched is not the one used.
        if self.warmup_epoch >= self.epoch:
            raise KeyedError("warmup_epoch", f"must be below epoch ({self.epoch}), got {self.warmup_epoch}",
                             relative=True)
        return self


class TrainConfig(TrainSettings):
    """One run, complete and self-describing: the settings plus what a cell and a trial decide."""

    method: MethodName = "linear"
    hp: dict[str, Any] = {}  # the method's hyper-parameters
    backbone: BackboneName = "fmnist_vit_tiny"
    checkpoint: str | None = None  # local weights file; None: the backbone's shipped weights
    data: str = "digits"  # task; the study's "processed_vtab-<task>" is accepted
    data_path: str = ""
    data_format: Literal[FORMATS] = "vtab"
    num_classes: int | None = Field(None, ge=2)
    phase: Literal["tune", "final"] = "tune"  # tune: train800 -> val200; final: train800val200 -> test
    seed: Seed = 42
    eval_epochs: list[Annotated[int, Field(ge=1)]] = []  # extra epochs to evaluate (ASHA rungs)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as err:  # one line, like every other error
            raise ValueError(f"train config: {one_line(err, TrainConfig)}") from None

    @classmethod
    def keys(cls) -> set[str]:
        return set(cls.model_fields)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def evaluates_at(self, epoch: int) -> bool:
        """Epochs count from 1 here: ``epoch`` epochs have been trained. As the study (which counts
        from 0 and evaluates at ``epoch % eval_freq == 0`` and the last epoch): the first, every
        ``eval_freq``-th after it, the last, and the ASHA rungs in ``eval_epochs``."""
        if epoch in (1, self.epoch) or epoch in self.eval_epochs:
            return True
        return bool(self.eval_freq) and (epoch - 1) % self.eval_freq == 0

    @property
    def selects_on_val(self) -> bool:
        """A final run that trains on train and tests the weights of its best validation epoch."""
        return self.phase == "final" and not self.final_acc_hp


@dataclass
class TrainResult:
    status: str  # completed | early_stopped
    metrics: dict[str, Any]  # the last evaluation
    history: list[dict[str, Any]]
    inserted_params: int
    seconds: float
    model: torch.nn.Module = field(repr=False, default=None)  # with the selected epoch's weights
    selected_epoch: int = 0  # the best-val epoch when ``selects_on_val``, else the last one trained


def track_best(state: dict, value: float, epoch: int) -> bool:
    """Record one validation result; True when it is a new best. As the study, early-stop
    patience (``bad_evals``) counts only results strictly worse than the best: a tie neither
    resets nor counts."""
    if state["best"] is None or value > state["best"]:
        state["best"], state["best_epoch"], state["bad_evals"] = value, epoch, 0
        return True
    if value < state["best"]:
        state["bad_evals"] += 1
    return False


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def weights_file(backbone: str, checkpoint: str | None, pretrained: bool) -> Path | None:
    """The weights a run loads: ``checkpoint``, else the backbone's shipped file; None when not
    ``pretrained``."""
    if not pretrained:
        return None
    if checkpoint is not None:
        return Path(checkpoint)
    spec = get_backbone(backbone)
    if spec.default_checkpoint is not None:
        return spec.default_checkpoint
    cached = cached_weights(spec.hf_hub_id) if spec.hf_hub_id else None
    if cached is None:
        where = f" and {spec.hf_hub_id} is not in the local Hugging Face cache" if spec.hf_hub_id else ""
        raise ValueError(f"backbone '{backbone}' ships no weights{where}; set checkpoint: PATH or pretrained: false")
    return cached


def check_inputs(config: TrainConfig) -> None:
    """What a run reads, checked before it trains (one-line ValueError): the data's folders,
    split lists and labels (no image opened), and the weights file's header against the backbone."""
    check_dataset(DataSpec(config.data, Path(config.data_path), config.data_format, config.num_classes))
    weights = weights_file(config.backbone, config.checkpoint, config.pretrained)
    if weights is not None:
        # with class_names the file is open_clip's (text tower too), not the backbone's layout
        check_checkpoint(config.backbone, weights, header=config.class_names is None)


def build_model(config: TrainConfig, num_classes: int, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The backbone with its weights and the method attached (seeded: repeatable init).

    With ``class_names``: the CLIP tower with its zero-shot text head (``checkpoint``: the
    open_clip file); ``device`` encodes the prompts the first time (then they are cached).
    """
    weights = weights_file(config.backbone, config.checkpoint, config.pretrained)
    if config.class_names is None:
        model = build_backbone(config.backbone, num_classes, weights, drop_path_rate=config.drop_path_rate)
    else:
        model = build_clip_classifier(config.backbone, config.class_names, config.templates, weights,
                                      device=device, drop_path_rate=config.drop_path_rate)
        if num_classes > model.num_classes:  # fewer is fine: a subset of the named classes
            raise ValueError(f"class_names {config.class_names!r} lists {model.num_classes} classes "
                             f"but the data has labels up to {num_classes - 1}")
    return apply(model, config.method, **config.hp)


def transforms_for(config: TrainConfig):
    """(training, evaluation) image transforms of a run: its recipe on its backbone's size/stats."""
    spec = get_backbone(config.backbone)
    return build_transforms(config.transform, spec.img_size, spec.mean, spec.std, config.normalize, config.phase)


class _Batches:
    """Per-epoch shuffled batches (drop last) seeded by (seed, epoch): resumable without state."""

    def __init__(self, dataset, batch_size: int, seed: int, workers: int, pin: bool) -> None:
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.workers, self.pin = workers, pin

    def indices(self, epoch: int) -> list[list[int]]:
        order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(
            self.seed * 100_003 + epoch)).tolist()
        return [order[i:i + self.batch_size]
                for i in range(0, len(order) - self.batch_size + 1, self.batch_size)]

    def epoch(self, epoch: int):
        batches = self.indices(epoch)
        if isinstance(self.dataset, _Preloaded):
            return ((self.dataset.images[b], self.dataset.labels[b]) for b in batches)
        return torch.utils.data.DataLoader(self.dataset, batch_sampler=batches,
                                           num_workers=self.workers, pin_memory=self.pin)


class _Preloaded(torch.utils.data.Dataset):
    """Decoded, transformed images held in memory (no augmentation, so they never change)."""

    def __init__(self, dataset) -> None:
        loader = torch.utils.data.DataLoader(dataset, batch_size=256)
        pairs = list(loader)
        self.images = torch.cat([x for x, _ in pairs])
        self.labels = torch.cat([torch.as_tensor(y) for _, y in pairs])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def _maybe_preload(dataset, config: TrainConfig, img_size: int):
    size = len(dataset) * 3 * img_size * img_size * 4
    if config.preload or (config.preload is None and size <= 2**30):
        return _Preloaded(dataset)
    return dataset


def _eval_batches(dataset, batch_size: int, features: FeatureCache | None, name: str):
    if features is not None:
        return features.eval_batches(name, batch_size)
    if isinstance(dataset, _Preloaded):
        return ((dataset.images[i:i + batch_size], dataset.labels[i:i + batch_size])
                for i in range(0, len(dataset), batch_size))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size)


def _datasets(config: TrainConfig):
    """(train set, {"val" | "test": evaluation set, ...}, class count) of the run's phase."""
    train_tf, eval_tf = transforms_for(config)
    data = DataSpec(config.data, Path(config.data_path), config.data_format, config.num_classes,
                    config.normalize)
    if not config.selects_on_val:
        train_set, eval_set, num_classes = build_datasets(data, config.phase, eval_tf, train_tf)
        return train_set, {"val" if config.phase == "tune" else "test": eval_set}, num_classes
    train_set, val_set, num_classes = build_datasets(data, "tune", eval_tf, train_tf)
    return train_set, {"val": val_set, "test": build_datasets(data, "final", eval_tf)[1]}, num_classes


def train(config: TrainConfig, report: Report | None = None, resume_from: Path | None = None,
          progress: bool = False) -> TrainResult:
    """Run the protocol; ``report(metrics, checkpoint_dir)`` after every epoch.

    ``resume_from``: a checkpoint folder given to ``report`` earlier; training continues from
    it exactly as if never stopped. Raises ``TrainingDiverged`` on a NaN/inf loss.
    """
    start = time.time()
    _seed_everything(config.seed)
    device = _device(config.device)
    spec = get_backbone(config.backbone)
    train_set, eval_sets, num_classes = _datasets(config)
    model = build_model(config, num_classes, device).to(device)
    inserted = count_inserted(model)
    augmented = augments(config.transform, config.phase)  # a new random view of every image each epoch
    if not augmented:
        train_set = _maybe_preload(train_set, config, spec.img_size)
    eval_sets = {name: _maybe_preload(data, config, spec.img_size) for name, data in eval_sets.items()}
    use_cache = (cacheable(model) and not augmented) if config.feature_cache is None else config.feature_cache
    if use_cache and augmented:
        raise ValueError(f"train config: feature_cache needs the same images every epoch; transform "
                         f"'{config.transform}' augments {config.phase} runs")
    features = FeatureCache(model, train_set, eval_sets, config.test_batch_size, device) if use_cache else None
    use_bf16 = config.bf16 and device.type == "cuda"

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

    kept: dict[str, dict] = {}  # test logits and labels, when the run keeps its predictions

    def scores(name: str) -> dict[str, float]:
        keep = config.save_predictions and name == "test"
        result = evaluate(model.head if features is not None else model,
                          _eval_batches(eval_sets[name], config.test_batch_size, features, name),
                          device=device, autocast=autocast, keep_outputs=keep)
        if keep:
            kept[name] = result
        return {f"{name}_{key}": result[key] for key in ("loss", "top1", "top5")}

    def checkpoint_and_report(metrics: dict, optimizer, scheduler, state: dict, best: dict) -> None:
        folder = Path(tempfile.mkdtemp(prefix="peft-ckpt-"))
        try:
            ckpt.save(folder, model, optimizer, scheduler, state, best)
            for name, result in kept.items():
                save_predictions(folder / f"predictions_{name}.npz", result)
            report(metrics, folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:  # zero-shot: nothing to train, one evaluation of every set
        metrics = {"epoch": 0, "inserted_params": 0}
        for name in eval_sets:
            metrics.update(scores(name))
        if report is not None:  # its checkpoint: what export, predict and evaluate rebuild it from
            checkpoint_and_report(metrics, None, None, {"epoch": 0, "history": [metrics]}, {})
        return TrainResult("completed", metrics, [metrics], 0, time.time() - start, model)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.wd)
    scheduler = CosineLRScheduler(optimizer, t_initial=config.epoch, lr_min=config.lr_min,
                                  warmup_t=config.warmup_epoch, warmup_lr_init=config.warmup_lr_init)
    state = {"epoch": 0, "history": [], "best": None, "best_epoch": 0, "bad_evals": 0}
    best: dict[str, torch.Tensor] = {}  # trainable tensors of the best-val epoch (selects_on_val)
    if resume_from is not None:
        state, best = ckpt.load(Path(resume_from), model, optimizer, scheduler)
    batches = _Batches(train_set, config.batch_size, config.seed, config.num_workers,
                       pin=device.type == "cuda")
    validates = "val" in eval_sets

    status = "completed"
    for epoch in range(state["epoch"], config.epoch):
        # As the study: the scheduler steps after each epoch, so epoch 0 runs at the lr the
        # scheduler starts with (warmup_lr_init), and epoch k at lr(k - 1).
        lr = optimizer.param_groups[0]["lr"]
        if not math.isfinite(lr):
            raise TrainingDiverged(f"learning rate is {lr} at epoch {epoch + 1}")
        train_metrics = _train_epoch(model, features.train_batches(batches, epoch) if features
                                     else batches.epoch(epoch), optimizer, device, autocast,
                                     epoch, lr, head_only=features is not None)
        scheduler.step(epoch)
        state["epoch"] = epoch + 1
        metrics = {"epoch": epoch + 1, "lr": lr, "inserted_params": inserted, "train_examples": len(train_set),
                   **train_metrics}
        evaluated, stop = config.evaluates_at(epoch + 1), False
        if evaluated:
            if validates:
                metrics.update(scores("val"))
                if track_best(state, metrics["val_top1"], epoch + 1) and config.selects_on_val:
                    best = {n: t.clone() for n, t in ckpt.trainable_state(model).items()}
            stop = validates and config.early_patience and state["bad_evals"] >= config.early_patience
            # The test set is looked at once, at the end; it never selects anything.
            if "test" in eval_sets and (stop or epoch + 1 == config.epoch):
                if config.selects_on_val:
                    ckpt.copy_trainable(model, best, "the best validation epoch's weights")
                    metrics["selected_epoch"] = state["best_epoch"]
                metrics.update(scores("test"))
            state["history"].append(metrics)
        if progress:
            shown = "".join(f" {key} {metrics[key]:.2f}" for key in ("val_top1", "test_top1") if key in metrics)
            print(f"epoch {epoch + 1}/{config.epoch} lr {lr:.2e} train_loss {metrics['train_loss']:.4f}"
                  f"{shown}", file=sys.stderr, flush=True)
        if report is not None:  # every epoch: training curves, and a checkpoint to resume from
            every = config.checkpoint_every
            if evaluated or (every and (epoch + 1) % every == 0):
                checkpoint_and_report(metrics, optimizer, scheduler, state, best)
            else:
                report(metrics, None)
        if stop:
            status = "early_stopped"
            break
    selected = state["best_epoch"] if config.selects_on_val else state["epoch"]
    return TrainResult(status, state["history"][-1] if state["history"] else {}, state["history"],
                       inserted, time.time() - start, model, selected)


def _train_epoch(model, batches, optimizer, device, autocast, epoch: int, lr: float,
                 head_only: bool) -> dict[str, float]:
    model.train()
    total, loss_sum, correct = 0, 0.0, 0
    for step, (x, y) in enumerate(batches):
        x, y = x.to(device, non_blocking=True), torch.as_tensor(y).to(device, non_blocking=True)
        with autocast():
            logits = model.head(x) if head_only else model(x)
            loss = F.cross_entropy(logits.float(), y)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"loss is {loss.item()} at epoch {epoch + 1} step {step} (lr {lr:.3g})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(-1) == y).sum().item()
        total += len(y)
    return {"train_loss": loss_sum / max(total, 1), "train_top1": 100.0 * correct / max(total, 1)}
