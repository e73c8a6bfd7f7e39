"""The searcher's trial records and, per cell, the indices kept over them.

Every event (a trial suggested, a result, a trial finished) updates its cell's ``CellBook`` in
O(1), so choosing the next cell, a cell's status and its best trial never scan the trials; the
book's ``summary`` is the cell's row in the store, which status and the progress line read.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from ..study_folder import DONE, FAILED, RUNNING, TRAINED


@dataclass
class TrialRecord:
    trial_id: str
    cell: str
    phase: str  # tune | final
    params: dict[str, Any]
    number: int | None  # the Optuna trial number of a tuning trial
    seed: int | None  # a final run's seed
    planned_epochs: int
    selected_from: str | None = None  # a final run's tuning trial
    status: str = RUNNING  # then its outcome (outcome.decide)
    value: float | None = None  # the selection metric (tuning trials)
    epochs: int = 0
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)  # the latest value of each metric
    error: str | None = None
    early_stopped: bool = False
    started_at: float | None = None  # the first attempt's start
    ended_at: float | None = None
    nodes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def point_key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


class CellBook:
    """One cell's trials counted by phase and outcome, its best tuning trial, its status."""

    def __init__(self, cell: str, budget: int, seeds: int, grid: list[dict] | None) -> None:
        self.cell, self.budget, self.seeds = cell, budget, seeds
        # Ties on the selection metric go to the last point in grid order (as the study's stable
        # sort of its tune summary), else to the last in trial order.
        self.grid_order = {point_key(p): i for i, p in enumerate(grid)} if grid else None
        self.grid_next = 0  # the next grid point to hand out
        self.requeue: list[dict] = []  # points of trials lost in a crash, handed out again first
        self.started = {"tune": 0, "final": 0}
        self.running = {"tune": 0, "final": 0}
        self.outcomes = dict.fromkeys(DONE, 0)
        self.best: TrialRecord | None = None
        self.history: list[tuple[dict, float]] = []  # (params, value) of selectable tuning trials
        self.first_failed: TrialRecord | None = None
        self.test_top1: list[float | None] = []  # of final runs that trained to their end
        self.epochs = self.tune_epochs = 0
        self.seconds = 0.0
        self._counted: dict[str, tuple[int, float]] = {}  # trial -> (epochs, seconds) in the sums
        self._points: dict[str, int] = {}  # grid point -> tuning trials given it
        self.duplicates = 0  # points run more than once (counted for every sampler)

    # -- events --------------------------------------------------------------------------------
    def add(self, record: TrialRecord) -> None:
        """A trial of this cell, new or loaded from the store."""
        self.started[record.phase] += 1
        if record.phase == "tune":  # any sampler: a point run twice is a wasted trial
            key = point_key(record.params)
            self.duplicates += self._points.get(key, 0) > 0  # a forgotten trial leaves its point at 0
            self._points[key] = self._points.get(key, 0) + 1
        self._counted[record.trial_id] = (0, 0.0)
        self.progress(record)
        if record.status == RUNNING:
            self.running[record.phase] += 1
        else:
            self._finished(record)

    def progress(self, record: TrialRecord) -> None:
        """Its epochs and seconds changed: the sums follow by difference."""
        epochs, seconds = self._counted[record.trial_id]
        self.epochs += record.epochs - epochs
        if record.phase == "tune":
            self.tune_epochs += record.epochs - epochs
        self.seconds += record.seconds - seconds
        self._counted[record.trial_id] = (record.epochs, record.seconds)

    def finish(self, record: TrialRecord) -> None:
        """A running trial got its outcome."""
        self.progress(record)
        self.running[record.phase] -= 1
        self._finished(record)

    def forget(self, record: TrialRecord) -> None:
        """A running trial Tune never recorded (suggested just before a crash)."""
        self.started[record.phase] -= 1
        self.running[record.phase] -= 1
        record.epochs, record.seconds = 0, 0.0
        self.progress(record)
        del self._counted[record.trial_id]
        if record.phase == "tune":  # any sampler: a point run twice is a wasted trial
            key = point_key(record.params)
            self._points[key] -= 1
            self.duplicates -= self._points[key] > 0

    def _finished(self, record: TrialRecord) -> None:
        self.outcomes[record.status] += 1
        if record.status == FAILED and self.first_failed is None:
            self.first_failed = record
        if record.phase == "final":
            if record.status in TRAINED:
                self.test_top1.append(record.metrics.get("test_top1"))
        elif record.status in TRAINED and record.value is not None:
            self.history.append((record.params, record.value))
            if self.best is None or self._rank(record) >= self._rank(self.best):
                self.best = record

    def _rank(self, record: TrialRecord) -> tuple[float, int]:
        order = record.number if self.grid_order is None else self.grid_order.get(point_key(record.params), -1)
        return record.value, order

    # -- what the searcher and status ask ----------------------------------------------------
    @property
    def status(self) -> str:
        if self.started["tune"] < self.budget or self.running["tune"]:
            return "tuning"
        if self.best is None:
            return "failed"
        if self.started["final"] < self.seeds or self.running["final"]:
            return "final"
        return "done"

    def summary(self) -> dict[str, Any]:
        """The cell's row in the store: what status shows, and the searcher's grid position."""
        best, failed = self.best, self.first_failed
        return {
            "status": self.status, "trials": self.started["tune"], "budget": self.budget,
            "finals": self.started["final"], "running": sum(self.running.values()), **self.outcomes,
            "best_val": best.value if best else None, "best_params": best.params if best else None,
            "best_trial": best.trial_id if best else None,
            "first_failed": {"trial_id": failed.trial_id, "error": failed.error} if failed else None,
            "test_top1": self.test_top1, "epochs": self.epochs, "tune_epochs": self.tune_epochs,
            "seconds": self.seconds, "duplicates": self.duplicates,
            "grid_next": self.grid_next, "requeue": self.requeue}
