"""What ``peft-search status`` and the progress line show, from the study folder alone."""
from __future__ import annotations

import time
from pathlib import Path

from ..study import Cell, StudyError
from ..study_folder import DONE, SEARCH_STATE, load_study_dir, read_json, trial_folder_name, tune_dir
from .searcher import StudySearcher


def first_error(study_dir: Path, record: dict) -> str:
    """A failed trial's error in one line: its own (a diverged loss), else the last line of the
    traceback Ray Tune kept in the trial's folder."""
    if record.get("error"):
        return record["error"]
    error_file = tune_dir(study_dir) / trial_folder_name(record["trial_id"]) / "error.txt"
    if error_file.is_file():
        lines = [line.strip() for line in error_file.read_text().splitlines() if line.strip()]
        if lines:
            return lines[-1]
    return "failed (no error recorded)"


def failed_cells(summary: dict) -> dict[str, str]:
    """Cells that did not end with their final runs, with their first error (or why)."""
    return {cell: info["error"] or f"ended {info['status']}" for cell, info in summary["cells"].items()
            if info["status"] != "done"}


def summarize(study_dir: Path) -> dict:
    """Everything ``peft-search status`` shows, from the study folder alone."""
    study_dir = Path(study_dir)
    state = read_json(study_dir / SEARCH_STATE, {"trials": {}})
    trials = list(state["trials"].values())
    cells = sorted({t["cell"] for t in trials})
    try:
        study, _ = load_study_dir(study_dir)
        cells = [c.id for c in study.cells()]
        searcher = StudySearcher(study, study_dir)  # reads the state file; opens nothing
    except (StudyError, OSError, ValueError):
        study = None
    per_cell = {}
    for cell in cells:
        mine = [t for t in trials if t["cell"] == cell]
        tuned = [t for t in mine if t["phase"] == "tune"]
        finals = [t for t in mine if t["phase"] == "final"]
        best = max((t for t in tuned if t["status"] == "completed" and t["value"] is not None),
                   key=lambda t: t["value"], default=None)
        budget = study.budget(Cell.parse(cell)) if study else len(tuned)
        finals_done = [t for t in finals if t["status"] == "completed"]
        status = searcher.cell_status(Cell.parse(cell)) if study else None
        done = status in ("done", "failed") if study else all(t["status"] in DONE for t in mine)
        failed = [t for t in mine if t["status"] == "failed"]
        per_cell[cell] = {
            "done": done, "status": status, "trials": len(tuned), "budget": budget,
            "error": first_error(study_dir, failed[0]) if failed else None,
            "best_val": best["value"] if best else None, "best_params": best["params"] if best else None,
            "test_top1": [t["metrics"].get("test_top1") for t in finals_done],
            "epochs": sum(t["epochs"] for t in mine), "tune_epochs": sum(t["epochs"] for t in tuned),
            "seconds": sum(t["seconds"] for t in mine)}
    seen: dict[str, int] = {}
    for t in trials:
        if t["phase"] == "tune":
            key = f"{t['cell']}|{sorted(t['params'].items())}"
            seen[key] = seen.get(key, 0) + 1
    grid = study is not None and (study.search.sampler == "grid" or study.search.num_samples == "grid")
    return {
        "cells": per_cell, "cells_done": sum(c["done"] for c in per_cell.values()),
        "trials_finished": sum(t["status"] in DONE for t in trials),
        "trials_running": sum(t["status"] not in DONE for t in trials),
        "trials_completed": sum(t["status"] == "completed" for t in trials),
        "trials_pruned": sum(t["status"] == "pruned" for t in trials),
        "trials_failed": sum(t["status"] == "failed" for t in trials),
        "duplicate_trials": sum(n - 1 for n in seen.values()) if grid else 0,
        "best": {c: v["best_val"] for c, v in per_cell.items()},
        "budget": {"epochs": sum(t["epochs"] for t in trials),
                   "seconds": round(sum(t["seconds"] for t in trials), 2), "trials": len(trials)},
        "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
