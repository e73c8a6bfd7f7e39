"""What ``peft-search status`` and the progress line show, from the study folder alone.

Both read the cells' summary rows the searcher keeps in the search state (one per cell), never
every trial, and build no searcher: status costs O(cells) however many trials ran.
"""
from __future__ import annotations

import time
from pathlib import Path

from ..study import StudyError
from ..study_folder import (COMPLETED, DONE, EARLY_STOPPED, FAILED, PRUNED, load_study_dir, read_cells,
                            trial_folder_name, tune_dir)
from .records import CellBook


def first_error(study_dir: Path, failed: dict) -> str:
    """A failed trial's error in one line: the one it reported (a bad value, a missing file, a
    diverged loss), else the last line of the traceback Ray Tune kept in the trial's folder."""
    if failed.get("error"):
        return failed["error"]
    error_file = tune_dir(study_dir) / trial_folder_name(failed["trial_id"]) / "error.txt"
    if error_file.is_file():
        lines = [line.strip() for line in error_file.read_text().splitlines() if line.strip()]
        if lines:
            return lines[-1]
    return "failed (no error recorded)"


def failed_cells(summary: dict) -> dict[str, str]:
    """Cells that did not end with their final runs, with their first error (or why)."""
    return {cell: info["error"] or f"ended {info['status']}" for cell, info in summary["cells"].items()
            if info["status"] != "done"}


def totals(cells: dict[str, dict]) -> dict[str, int]:
    """Study-wide counts from the cells' rows."""
    rows = cells.values()
    return {"cells_done": sum(row["status"] in ("done", "failed") for row in rows),
            "trials_finished": sum(row[outcome] for row in rows for outcome in DONE),
            "trials_running": sum(row["running"] for row in rows),
            "trials_completed": sum(row[COMPLETED] for row in rows),
            "trials_early_stopped": sum(row[EARLY_STOPPED] for row in rows),
            "trials_pruned": sum(row[PRUNED] for row in rows),
            "trials_failed": sum(row[FAILED] for row in rows)}


def summarize(study_dir: Path) -> dict:
    """Everything ``peft-search status`` shows, from the study folder alone."""
    study_dir = Path(study_dir)
    rows = read_cells(study_dir)
    try:  # every cell of the study, in its order, those not started yet included
        study, _ = load_study_dir(study_dir)
        rows = {cell.id: rows.get(cell.id) or CellBook(cell.id, study.budget(cell), len(study.final.seeds),
                                                       None).summary() for cell in study.cells()}
    except (StudyError, OSError, ValueError):
        rows = dict(sorted(rows.items()))
    per_cell = {cell: {
        "done": row["status"] in ("done", "failed"), "status": row["status"], "trials": row["trials"],
        "budget": row["budget"], "error": first_error(study_dir, row["first_failed"]) if row["first_failed"] else None,
        "best_val": row["best_val"], "best_params": row["best_params"], "test_top1": row["test_top1"],
        "epochs": row["epochs"], "tune_epochs": row["tune_epochs"], "seconds": row["seconds"]}
        for cell, row in rows.items()}
    return {
        "cells": per_cell, **totals(rows),
        "duplicate_trials": sum(row["duplicates"] for row in rows.values()),
        "best": {c: v["best_val"] for c, v in per_cell.items()},
        "budget": {"epochs": sum(row["epochs"] for row in rows.values()),
                   "seconds": round(sum(row["seconds"] for row in rows.values()), 2),
                   "trials": sum(row["trials"] + row["finals"] for row in rows.values())},
        "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
