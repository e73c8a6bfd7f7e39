"""The study folder's small JSON state files, written atomically.

``search_state.json`` (the searcher: every trial, its cell, phase, params, status, value) and
``asha_state.json`` (each cell's rung records) are the resume and status source of truth.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

SEARCH_STATE = "search_state.json"
ASHA_STATE = "asha_state.json"
STUDY_COPY = "study.yaml"
MLFLOW_RUNS = "mlflow_runs.json"  # MLflow run id of every cell and trial


def write_json(path: Path, obj: Any) -> None:
    """Write-then-rename, so a killed driver never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, sort_keys=True)
    os.replace(tmp, path)


def read_json(path: Path, default: Any = None) -> Any:
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ValueError(f"{path}: corrupt state file (not valid JSON)") from None


def trial_finished(study_dir: str | Path, trial_id: str) -> bool:
    """Whether the searcher recorded ``trial_id`` as finished (a resumed driver must not rerun it)."""
    state = read_json(Path(study_dir) / SEARCH_STATE, {})
    return state.get("trials", {}).get(trial_id, {}).get("status") in ("completed", "pruned", "failed")
