"""``peft-search evaluate`` and ``peft-search wise``: a trained final run on more test sets
(ImageNet and its domain shifts), logged to MLflow under that run.

The model is the run's own adapter: the weights its final run kept (the last epoch, or the
epoch selected on validation when the run selects), never a checkpoint chosen on test.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from peft_core.data.imagenet import SUBSETS as DOMAIN_SETS
from peft_core.yaml_files import read_yaml

from ..mlflow_layout import PHASE, PHASE_FINAL
from .export import model_classes


@dataclass
class TrainedRun:
    config: dict
    adapter: Path
    run_id: str | None
    tracking_uri: str | None


def parse_sets(pairs: list[str]) -> dict[str, Path]:
    """``["imagenet_r=/data/imagenet-r", ...]`` -> {name: folder}; names as in SPEC 4.3."""
    sets = {}
    for pair in pairs:
        name, sep, folder = pair.partition("=")
        if not sep or name not in DOMAIN_SETS:
            raise ValueError(f"--data {pair}: expected NAME=FOLDER with NAME one of {', '.join(DOMAIN_SETS)}")
        if not Path(folder).is_dir():
            raise ValueError(f"--data {name}: folder not found: {folder}")
        sets[name] = Path(folder)
    return sets


def from_mlflow(run_id: str, tracking_uri: str, workdir: Path) -> TrainedRun:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise ValueError(f"--run {run_id}: {str(err).splitlines()[0]} ({tracking_uri})") from None
    if run.data.tags.get(PHASE) != PHASE_FINAL or run.info.status != "FINISHED":
        raise ValueError(f"--run {run_id}: not a finished final run (phase={run.data.tags.get(PHASE)}, "
                         f"status={run.info.status}); evaluate the runs that trained on train+val")
    config = read_yaml(Path(client.download_artifacts(run_id, "config.yaml", str(workdir))))
    adapter = Path(client.download_artifacts(run_id, "adapter.safetensors", str(workdir)))
    return TrainedRun(config, adapter, run_id, tracking_uri)


def from_export(folder: Path) -> TrainedRun:
    for name in ("config.yaml", "adapter.safetensors"):
        if not (folder / name).is_file():
            raise ValueError(f"--export {folder}: no {name} (a folder written by peft-search export)")
    metrics = json.loads((folder / "metrics.json").read_text()) if (folder / "metrics.json").is_file() else {}
    from peft_core.run_config import load_train_config
    config = load_train_config([folder / "config.yaml"]).to_dict()  # its paths: relative to the export
    return TrainedRun(config, folder / "adapter.safetensors", metrics.get("run_id"), metrics.get("tracking_uri"))


def load_run(run_id: str | None, export: Path | None, tracking_uri: str | None, workdir: Path) -> TrainedRun:
    if export is not None:
        return from_export(export)
    if not tracking_uri:
        raise ValueError("--run needs --tracking-uri (or MLFLOW_TRACKING_URI)")
    return from_mlflow(run_id, tracking_uri, workdir)


def build(run: TrainedRun):
    """(fine-tuned model, its zero-shot state): the run's model before and after its adapter."""
    import torch

    from peft_core.checkpoint import load_adapter
    from peft_core.train import TrainConfig, build_model
    config = TrainConfig(**run.config)
    torch.manual_seed(config.seed)  # the same freshly attached modules as the run started with
    model = build_model(config, model_classes(config, run.adapter))
    zero_shot = {k: v.detach().clone() for k, v in model.state_dict().items()}
    load_adapter(model, run.adapter)
    return config, model.eval(), zero_shot


def _log(run: TrainedRun, metrics: list[tuple[str, float, int]], artifacts: dict[Path, str]) -> None:
    """Metrics (name, value, step) and artifacts {file: artifact folder} on the run, if it has one."""
    if run.run_id is None or run.tracking_uri is None:
        return
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient
    client, now = MlflowClient(run.tracking_uri), int(time.time() * 1000)
    client.log_batch(run.run_id, metrics=[Metric(k, float(v), now, step) for k, v, step in metrics])
    for path, folder in artifacts.items():
        client.log_artifact(run.run_id, str(path), folder)


def evaluate_run(run: TrainedRun, sets: dict[str, Path], batch_size: int = 256,
                 predictions: bool = False) -> dict[str, dict]:
    """top-1/top-5 of the run on each set (R and A among their 200 classes); logged as
    ``eval_<set>_top1`` / ``eval_<set>_top5`` (and ``predictions/<set>.npz``) on the run."""
    from peft_core.evaluation import evaluate_domains, save_predictions
    from peft_core.train import transforms_for
    config, model, _ = build(run)
    results = evaluate_domains(model, sets, transforms_for(config)[1], batch_size, keep_outputs=predictions)
    metrics = [(f"eval_{name}_{k}", r[k], 0) for name, r in results.items() for k in ("top1", "top5")]
    with tempfile.TemporaryDirectory() as tmp:
        saved = [save_predictions(Path(tmp) / f"{name}.npz", r) for name, r in results.items()] if predictions else []
        _log(run, metrics, {path: "predictions" for path in saved})
    return {name: {k: r[k] for k in ("top1", "top5", "loss", "n")} for name, r in results.items()}


def wise_run(run: TrainedRun, sets: dict[str, Path], alphas: list[float], batch_size: int = 256) -> dict:
    """WiSE along ``alphas``: {alpha: {set: top1}}; logged as ``wise_<set>_top1`` at step
    ``round(10 * alpha)`` on the run."""
    from peft_core.evaluation import evaluate_domains
    from peft_core.train import transforms_for
    from peft_core.wise import WiSE
    config, model, zero_shot = build(run)
    wise, transform = WiSE(model, zero_shot), transforms_for(config)[1]
    curve = {}
    for alpha in alphas:
        results = evaluate_domains(wise.at(alpha).eval(), sets, transform, batch_size)
        curve[alpha] = {name: r["top1"] for name, r in results.items()}
        _log(run, [(f"wise_{name}_top1", top1, round(10 * alpha)) for name, top1 in curve[alpha].items()], {})
    return curve
