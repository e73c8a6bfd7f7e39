"""The study folder: its file names, its small JSON files (written atomically), and loading a
study back from it. Shared by the tuning service, the report, export and the cluster commands.

``search_state.json`` (the searcher: every trial, its cell, phase, params, status, value) and
``asha_state.json`` (each cell's rung records) are the resume and status source of truth;
``study.yaml`` is the study as it started (includes merged, paths absolute: frozen),
``source.txt`` the file it came from, ``tracking_uri.txt`` where its MLflow runs are.
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
SOURCE = "source.txt"
TRACKING_URI = "tracking_uri.txt"
MLFLOW_RUNS = "mlflow_runs.json"  # MLflow run id of every cell and trial
DONE = ("completed", "pruned", "failed")  # the states of a finished trial in SEARCH_STATE
TUNE_EXPERIMENT = "tune"  # Ray Tune's experiment folder, under ray/


def tune_dir(study_dir: Path) -> Path:
    return Path(study_dir) / "ray" / TUNE_EXPERIMENT


def trial_folder_name(trial_id: str) -> str:
    """Short, stable trial folders (Tune's default name embeds the whole config)."""
    return f"trial_{trial_id}"


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
    return state.get("trials", {}).get(trial_id, {}).get("status") in DONE


def load_study_dir(study_dir: Path):
    """(Study, tracking URI) of a study folder; a clear error when it is not one."""
    from .study import StudyError, load_study
    study_dir = Path(study_dir)
    if not (study_dir / SEARCH_STATE).is_file():
        raise StudyError(f"{study_dir}: not a study folder (no {SEARCH_STATE})")
    study = load_study(study_dir / STUDY_COPY)  # as it started: never the (editable) source file
    return study, (study_dir / TRACKING_URI).read_text().strip()


def tracking_source(study_dir: Path) -> tuple[str, str]:
    """(tracking URI, experiment) of a study folder."""
    study, uri = load_study_dir(Path(study_dir))
    return uri, study.experiment
