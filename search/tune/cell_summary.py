"""What a cell's parent run shows when the cell ends: its trials as a CSV and its search as a
PNG (the selection metric of each tuning trial in the order they started, the best marked), from
the search state's records of that cell alone."""
from __future__ import annotations

import csv
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..study_folder import COMPLETED, EARLY_STOPPED, FAILED, PRUNED

COLUMNS = ("trial_id", "phase", "status", "value", "epochs", "seconds", "seed", "error")
COLORS = {COMPLETED: "tab:blue", EARLY_STOPPED: "tab:cyan", PRUNED: "tab:gray", FAILED: "tab:red"}


def write_trials_csv(records: list[dict], path: Path) -> Path:
    """One row per trial (tuning trials, then final runs, each in the order they started); a
    column per hyper-parameter and per metric the trials logged."""
    params = sorted({k for r in records for k in r["params"]})
    metrics = sorted({k for r in records for k in r["metrics"]})
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*COLUMNS, *params, *metrics])
        for r in sorted(records, key=lambda r: r["phase"] != "tune"):
            writer.writerow([r.get(c) for c in COLUMNS] + [r["params"].get(k) for k in params]
                            + [r["metrics"].get(k) for k in metrics])
    return path


def draw_search(records: list[dict], metric: str, best_trial: str | None, title: str, path: Path) -> Path:
    """The selection metric per tuning trial in the order they started, coloured by outcome."""
    tuning = [r for r in records if r["phase"] == "tune"]
    figure = Figure(figsize=(7, 3.5), dpi=100)
    FigureCanvasAgg(figure)
    # Fixed margins, not tight_layout (which draws the figure once more to measure it): a
    # study's cells end together near its end, where each one's plot would hold the driver up.
    axes = figure.add_axes((0.09, 0.14, 0.89, 0.77))
    for status, color in COLORS.items():
        shown = [(i, r["value"]) for i, r in enumerate(tuning, start=1) if r["status"] == status and r["value"] is not None]
        if shown:
            axes.scatter(*zip(*shown), s=14, color=color, label=status.replace("_", " "))
    best = [(i, r["value"]) for i, r in enumerate(tuning, start=1) if r["trial_id"] == best_trial]
    if best:
        axes.scatter(*zip(*best), s=90, facecolors="none", edgecolors="black", label="selected")
    axes.set(xlabel="tuning trial (order started)", ylabel=metric, title=title)
    axes.legend(loc="lower right", fontsize=8)
    figure.savefig(path)
    return path
