"""Export a study: per cell, a runnable YAML, the adapter, and merged weights where mergeable."""
from __future__ import annotations

import json
from pathlib import Path

import yaml
from safetensors.torch import save_file

import peft_core
from peft_core.checkpoint import adapter_from_checkpoint, load_adapter
from peft_core.train import TrainConfig, build_model

from ..study_folder import COMPLETED, SEARCH_STATE, read_mlflow_runs, read_trials
from ..study import StudyError


def trial_checkpoint(study_dir: Path, trial_id: str) -> Path:
    """The last checkpoint Ray kept for ``trial_id``."""
    dirs = [d for d in (Path(study_dir) / "ray").glob(f"*/*{trial_id}*") if d.is_dir()]
    checkpoints = sorted(c for d in dirs for c in d.glob("checkpoint_*") if (c / "state.json").is_file())
    if not checkpoints:
        raise StudyError(f"{study_dir}: no checkpoint for trial {trial_id}")
    return checkpoints[-1]


def export_study(study_dir: Path, out: Path) -> dict[str, dict]:
    """For every cell with a finished final run: ``<dataset>__<method>/{config.yaml,
    adapter.safetensors, merged.safetensors (when mergeable), metrics.json}``."""
    if not (Path(study_dir) / SEARCH_STATE).is_file():
        raise StudyError(f"{study_dir}: not a study folder (no {SEARCH_STATE})")
    finals = {}
    for record in read_trials(study_dir).values():
        if record["phase"] == "final" and record["status"] == COMPLETED:
            finals.setdefault(record["cell"], record)  # the first seed's run
    if not finals:
        raise StudyError(f"{study_dir}: no finished final run to export yet")
    exported = {}
    for cell, record in sorted(finals.items()):
        folder = out / cell.replace("/", "__")
        folder.mkdir(parents=True, exist_ok=True)
        checkpoint = trial_checkpoint(study_dir, record["trial_id"])
        progress = json.loads((checkpoint / "state.json").read_text())["progress"]
        config = TrainConfig(**_trial_config(study_dir, record["trial_id"]))
        (folder / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=True))
        meta = {"method": config.method, "hp": config.hp, "backbone": config.backbone}
        adapter_from_checkpoint(checkpoint, folder / "adapter.safetensors", meta)
        merged = _merge(config, folder / "adapter.safetensors", folder / "merged.safetensors")
        metrics = {**record["metrics"], "trial_id": record["trial_id"], "epochs": progress["epoch"],
                   "merged": merged, **_mlflow_run(study_dir, record["trial_id"])}
        (folder / "metrics.json").write_text(json.dumps(metrics, sort_keys=True))
        exported[cell] = {"folder": str(folder), **metrics}
    return exported


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


def _merge(config: TrainConfig, adapter: Path, out: Path) -> bool:
    """Plain timm weights with the method folded in, when the method is linear in its input."""
    if not peft_core.methods()[config.method]["mergeable"]:
        return False
    num_classes = head_classes(adapter)
    model = build_model(config, num_classes)
    load_adapter(model, adapter)
    merged = peft_core.merge(model.eval())
    save_file({k: v.contiguous() for k, v in merged.state_dict().items()}, str(out),
              metadata={"backbone": config.backbone, "method": config.method})
    return True


def head_classes(adapter: Path) -> int:
    """The class count of a saved adapter's head."""
    from safetensors import safe_open
    with safe_open(str(adapter), "pt") as f:
        return f.get_slice("head.weight").get_shape()[0]
