"""The study folder: its file names, its small JSON files (written atomically), and loading a
study back from it. Shared by the tuning service, the report, export and the cluster commands.

``search_state.db`` (the searcher: every trial, its cell, phase, params, status, value; a
summary row per cell; each cell's ASHA rung records; the MLflow run ids) is the resume and
status source of truth; ``study.yaml`` is the study as it started (includes merged, paths
absolute: frozen), ``source.txt`` the file it came from, ``tracking_uri.txt`` where its MLflow
runs are.

The search state is SQLite, one row per trial upserted on each event (one transaction with its
cell's row), so an event costs O(1) and a killed driver leaves the last committed event. Only
the driver writes it; everything else reads it through ``read_trials``, ``read_cells`` and
``trial_finished`` below.
"""
from __future__ import annotations

import json
import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

SEARCH_STATE = "search_state.db"
STUDY_COPY = "study.yaml"
SOURCE = "source.txt"
TRACKING_URI = "tracking_uri.txt"
# A trial's status in SEARCH_STATE: running, then its outcome (search/tune/outcome.py decides it).
RUNNING, COMPLETED, EARLY_STOPPED, PRUNED, FAILED = "running", "completed", "early_stopped", "pruned", "failed"
DONE = (COMPLETED, EARLY_STOPPED, PRUNED, FAILED)
# Trained to the end of their own schedule (patience included): a tuning trial a cell may select,
# a final run that is scored, exported and evaluated.
TRAINED = (COMPLETED, EARLY_STOPPED)
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


# -- the search state (SQLite) ---------------------------------------------------------------
STATE_SCHEMA = """
CREATE TABLE IF NOT EXISTS trials (
    trial_id TEXT PRIMARY KEY, cell TEXT NOT NULL, phase TEXT NOT NULL, status TEXT NOT NULL,
    record TEXT NOT NULL  -- the whole record as JSON (search/tune/records.py TrialRecord)
);
CREATE INDEX IF NOT EXISTS trials_by_cell ON trials (cell);
CREATE TABLE IF NOT EXISTS cells (
    cell TEXT PRIMARY KEY,
    summary TEXT NOT NULL  -- JSON: counts, status, best, budget, the cell's grid position and re-queue
);
CREATE TABLE IF NOT EXISTS asha_rungs (  -- a trial's value when it reached a rung of its cell
    cell TEXT NOT NULL, milestone INTEGER NOT NULL, trial_id TEXT NOT NULL,
    value REAL,  -- NULL: NaN
    stopped INTEGER NOT NULL,  -- 1: ASHA stopped the trial here
    PRIMARY KEY (cell, milestone, trial_id)
);
CREATE TABLE IF NOT EXISTS mlflow_runs (  -- where the tracker logs: the experiment, each cell and trial
    kind TEXT NOT NULL, name TEXT NOT NULL, run_id TEXT NOT NULL,  -- experiment | cell | trial
    PRIMARY KEY (kind, name)
);
CREATE TABLE IF NOT EXISTS mlflow_outbox (  -- MLflow writes the server has not taken yet, in order
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    op TEXT NOT NULL  -- JSON (search/tune/outbox.py); its file, if any, in OUTBOX_FILES
);
"""
OUTBOX_FILES = "mlflow_outbox"  # artifacts of the MLflow writes still to send


def count_outbox(study_dir: str | Path) -> int:
    """MLflow writes kept while the tracking server was away (sent when it is back)."""
    rows = _query(study_dir, "SELECT COUNT(*) FROM mlflow_outbox")
    return rows[0][0] if rows else 0


def connect_state(study_dir: str | Path, write: bool = False) -> sqlite3.Connection | None:
    """A connection to the search state; None when a reader finds none (nothing is created).

    Rollback journal, not WAL: trials on other nodes read this file over NFS-like shared storage,
    where WAL's shared-memory index does not work; a commit syncs (crash-safe, a few ms).
    """
    path = Path(study_dir) / SEARCH_STATE
    if not write and not path.is_file():
        return None
    # A reader never creates or changes the file; the timeout waits out a commit in progress.
    target, uri = (str(path), False) if write else (f"{path.resolve().as_uri()}?mode=ro", True)
    conn = sqlite3.connect(target, uri=uri, timeout=60)
    if write:
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(STATE_SCHEMA)
    return conn


def _query(study_dir: str | Path, sql: str, args: tuple = ()) -> list[tuple]:
    conn = connect_state(study_dir)
    if conn is None:
        return []
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError as err:
        if "no such table" in str(err):  # created, schema not yet committed
            return []
        raise
    finally:
        conn.close()


def read_trials(study_dir: str | Path) -> dict[str, dict]:
    """Every trial record of a study folder, by trial id, in the order they were suggested."""
    return {trial_id: json.loads(record) for trial_id, record in
            _query(study_dir, "SELECT trial_id, record FROM trials ORDER BY rowid")}


def read_cell_trials(study_dir: str | Path, cell: str) -> list[dict]:
    """One cell's trial records, in the order they were suggested (an index: O(the cell's trials))."""
    return [json.loads(record) for (record,) in
            _query(study_dir, "SELECT record FROM trials WHERE cell = ? ORDER BY rowid", (cell,))]


def read_cells(study_dir: str | Path) -> dict[str, dict]:
    """Each started cell's summary row (what status shows), by cell id."""
    return {cell: json.loads(summary) for cell, summary in _query(study_dir, "SELECT cell, summary FROM cells")}


def read_asha(study_dir: str | Path) -> dict:
    """{"rungs": {cell: {milestone (str): {trial id: value}}}, "stopped": [trial ids]}."""
    rungs: dict = {}
    stopped = []
    for cell, milestone, trial_id, value, was_stopped in _query(
            study_dir, "SELECT cell, milestone, trial_id, value, stopped FROM asha_rungs ORDER BY rowid"):
        rungs.setdefault(cell, {}).setdefault(str(milestone), {})[trial_id] = float("nan") if value is None else value
        if was_stopped:
            stopped.append(trial_id)
    return {"rungs": rungs, "stopped": stopped}


def read_mlflow_runs(study_dir: str | Path) -> dict:
    """{"experiment_id": id or None, "cells": {cell: run id}, "trials": {trial id: run id}}."""
    runs: dict = {"experiment_id": None, "cells": {}, "trials": {}}
    for kind, name, run_id in _query(study_dir, "SELECT kind, name, run_id FROM mlflow_runs"):
        if kind == "experiment":
            runs["experiment_id"] = run_id
        else:
            runs[f"{kind}s"][name] = run_id
    return runs


def trial_finished(study_dir: str | Path, trial_id: str) -> bool:
    """Whether the searcher recorded ``trial_id`` as finished (a resumed driver must not rerun it)."""
    rows = _query(study_dir, "SELECT status FROM trials WHERE trial_id = ?", (trial_id,))
    return bool(rows) and rows[0][0] in DONE


def check_writable(folder: Path, what: str) -> None:
    """Refuse, before any work and without creating anything, a folder that could not be
    written: the nearest part of its path that exists must be a writable folder."""
    folder = Path(folder).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"{what} {folder}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {folder}: {existing} is not writable")


def load_study_dir(study_dir: Path, check_data: bool = False):
    """(Study, tracking URI) of a study folder; a clear error when it is not one. Its data and
    weights are checked only for what trains again (``check_data``: resume), not to read it."""
    from .study import StudyError, load_study
    study_dir = Path(study_dir)
    missing = [name for name in (STUDY_COPY, TRACKING_URI) if not (study_dir / name).is_file()]
    if missing:  # the two files it reads, written before any trial starts
        raise StudyError(f"{study_dir}: not a study folder (no {' or '.join(missing)})")
    # As it started: never the (editable) source, and under the rules it started under.
    study = load_study(study_dir / STUDY_COPY, check_data, starting=False)
    return study, (study_dir / TRACKING_URI).read_text().strip()


def tracking_source(study_dir: Path) -> tuple[str, str]:
    """(tracking URI, experiment) of a study folder."""
    study, uri = load_study_dir(Path(study_dir))
    return uri, study.experiment
