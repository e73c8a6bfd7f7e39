"""Export a study: per final run, a runnable YAML, the adapter, and merged weights where mergeable."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

import peft_core
from peft_core.backbones import get_backbone
from peft_core.checkpoint import adapter_from_checkpoint, load_adapter
from peft_core.clip import split_text_head
from peft_core.run_config import PATH_KEYS
from peft_core.train import TrainConfig, build_model

from ..study_folder import SEARCH_STATE, TRAINED, read_mlflow_runs, read_trials
from ..study import StudyError


def trial_checkpoint(study_dir: Path, trial_id: str) -> Path:
    """The last checkpoint Ray kept for ``trial_id``."""
    dirs = [d for d in (Path(study_dir) / "ray").glob(f"*/*{trial_id}*") if d.is_dir()]
    checkpoints = sorted(c for d in dirs for c in d.glob("checkpoint_*") if (c / "state.json").is_file())
    if not checkpoints:
        raise StudyError(f"{study_dir}: no checkpoint for trial {trial_id}")
    return checkpoints[-1]


def final_runs(study_dir: Path, seed: int | str | None = None) -> list[dict]:
    """The finished final runs to export, in cell order: each cell's first seed (``seed`` None),
    the run of one seed, or every seed's (``"all"``)."""
    if not (Path(study_dir) / SEARCH_STATE).is_file():
        raise StudyError(f"{study_dir}: not a study folder (no {SEARCH_STATE})")
    by_cell: dict[str, list[dict]] = {}
    for record in read_trials(study_dir).values():
        if record["phase"] == "final" and record["status"] in TRAINED:
            by_cell.setdefault(record["cell"], []).append(record)
    if not by_cell:
        raise StudyError(f"{study_dir}: no finished final run to export yet")
    if seed is None:
        return [runs[0] for _, runs in sorted(by_cell.items())]
    chosen = [r for _, runs in sorted(by_cell.items()) for r in runs if seed == "all" or r["seed"] == seed]
    if not chosen:
        seeds = sorted({r["seed"] for runs in by_cell.values() for r in runs})
        raise StudyError(f"{study_dir}: no finished final run with seed {seed}; its final runs have "
                         f"seeds {', '.join(map(str, seeds))}")
    return chosen


def export_study(study_dir: Path, out: Path, seed: int | str | None = None) -> list[dict]:
    """Per exported final run (``final_runs``): ``<dataset>__<method>/`` (``__seed<N>`` added with
    ``seed="all"``) holding ``config.yaml`` (paths relative to the folder), ``adapter.safetensors``,
    ``merged.safetensors`` (+ ``classifier.safetensors`` on CLIP) when mergeable, ``metrics.json``."""
    exported = []
    for record in final_runs(study_dir, seed):
        name = record["cell"].replace("/", "__") + (f"__seed{record['seed']}" if seed == "all" else "")
        folder = Path(out) / name
        folder.mkdir(parents=True, exist_ok=True)
        checkpoint = trial_checkpoint(study_dir, record["trial_id"])
        progress = json.loads((checkpoint / "state.json").read_text())["progress"]
        config = TrainConfig(**_trial_config(study_dir, record["trial_id"]))
        (folder / "config.yaml").write_text(yaml.safe_dump(_relative_paths(config.to_dict(), folder), sort_keys=True))
        meta = {"method": config.method, "hp": config.hp, "backbone": config.backbone}
        adapter_from_checkpoint(checkpoint, folder / "adapter.safetensors", meta)
        merged = _merge(config, folder / "adapter.safetensors", folder)
        metrics = {**record["metrics"], "trial_id": record["trial_id"], "seed": record["seed"],
                   "epochs": progress["epoch"], "merged": merged, **_mlflow_run(study_dir, record["trial_id"])}
        (folder / "metrics.json").write_text(json.dumps(metrics, sort_keys=True))
        exported.append({"cell": record["cell"], "folder": str(folder), **metrics})
    return exported


def _relative_paths(values: dict, folder: Path) -> dict:
    """Paths to files and folders as ./ or ../ paths from the export (read back relative to it)."""
    def relative(value):
        if not isinstance(value, str) or not value or not Path(value).is_absolute():
            return value
        path = os.path.relpath(value, folder.resolve())
        return path if path.startswith("../") else f"./{path}"
    return {k: relative(v) if k in PATH_KEYS else v for k, v in values.items()}


def _mlflow_run(study_dir: Path, trial_id: str) -> dict:
    """Where the trial's final run lives, so ``evaluate --export`` logs under it."""
    runs = read_mlflow_runs(study_dir)
    uri = Path(study_dir) / "tracking_uri.txt"
    return {"run_id": runs["trials"].get(trial_id), "tracking_uri": uri.read_text().strip() if uri.is_file() else None}


def _trial_config(study_dir: Path, trial_id: str) -> dict:
    dirs = [d for d in (Path(study_dir) / "ray").glob(f"*/*{trial_id}*") if (d / "params.json").is_file()]
    if not dirs:
        raise StudyError(f"{study_dir}: no config for trial {trial_id}")
    return json.loads((dirs[0] / "params.json").read_text())["train"]


def _merge(config: TrainConfig, adapter: Path, folder: Path) -> bool:
    """Plain timm weights with the method folded in, when the method is linear in its input:
    ``merged.safetensors`` loads with ``strict=True`` into ``timm.create_model(timm_model,
    **timm_kwargs)`` (both in its metadata); a CLIP text head goes to ``classifier.safetensors``."""
    if not peft_core.methods()[config.method]["mergeable"]:
        return False
    state, classifier = split_text_head(peft_core.merge(trained_model(config, adapter)))
    spec = get_backbone(config.backbone)
    timm_kwargs = {**spec.kwargs, "num_classes": state["head.weight"].shape[0]}
    save_file(state, str(folder / "merged.safetensors"),
              metadata={"backbone": config.backbone, "method": config.method,
                        "timm_model": spec.timm_name, "timm_kwargs": json.dumps(timm_kwargs, sort_keys=True)})
    if classifier:
        save_file(classifier, str(folder / "classifier.safetensors"),
                  metadata={"input": "merged.safetensors' output, L2-normalised"})
    return True


def trained_model(config: TrainConfig, adapter: Path) -> torch.nn.Module:
    """A run's model as it ended, in eval mode: built as the run built it (seeded, so a random-init
    backbone is the same one), its trained tensors loaded."""
    torch.manual_seed(config.seed)
    model = build_model(config, model_classes(config, adapter))
    load_adapter(model, adapter)
    return model.eval()


def model_classes(config: TrainConfig, adapter: Path) -> int:
    """The class count to build a run's model with: its trained head's, or (no trained head:
    zero_shot) whatever the text head built from its class names holds."""
    classes = head_classes(adapter)
    if classes is None and config.class_names is None:
        raise ValueError(f"{adapter}: no trained head, and the run names no class_names to build one from")
    return classes or 1


def head_classes(adapter: Path) -> int | None:
    """The class count of a saved adapter's head; None when the run trained no head (zero_shot)."""
    from safetensors import safe_open
    with safe_open(str(adapter), "pt") as f:
        # head.weight, or the last layer's of a Sequential head (CLIP: projection, text head)
        rows = [f.get_slice(k).get_shape()[0] for k in sorted(f.keys()) if k.startswith("head.") and k.endswith("weight")]
    return rows[-1] if rows else None
