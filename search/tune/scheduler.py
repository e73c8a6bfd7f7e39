"""ASHA per cell: trials of different cells never compete; milestones are epochs.

The rung records are a small JSON structure saved in the study folder on every change, so a
resumed driver keeps them (Tune does not checkpoint its scheduler).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from ..study_folder import ASHA_STATE, read_json, write_json
from ..study import Study


class CellASHA(FIFOScheduler):
    def __init__(self, study: Study, study_dir: Path) -> None:
        super().__init__()
        self.milestones = study.milestones()
        self.rf = study.search.asha.reduction_factor if study.search.asha else 2
        self.metric_key = study.search.metric
        self.path = Path(study_dir) / ASHA_STATE
        self.rungs: dict[str, dict[str, dict[str, float]]] | None = None  # cell -> rung -> trial -> value
        self.stopped: list[str] = []

    def _load(self) -> None:
        if self.rungs is None:
            saved = read_json(self.path, {})
            self.rungs, self.stopped = saved.get("rungs", {}), saved.get("stopped", [])

    def decide(self, cell: str, trial_id: str, epoch: int, value: float) -> str:
        """Record ``value`` at every rung ``epoch`` reached; STOP below the top 1/rf of a rung."""
        self._load()
        action = TrialScheduler.CONTINUE
        changed = False
        for milestone in sorted(self.milestones, reverse=True):
            if epoch < milestone:
                continue
            rung = self.rungs.setdefault(cell, {}).setdefault(str(milestone), {})
            if trial_id in rung:
                continue
            # Like Ray's ASHA: the cutoff is the top-1/rf quantile of the trials already there.
            values = [v for v in rung.values() if not math.isnan(v)]
            cutoff = np.percentile(values, (1 - 1 / self.rf) * 100) if values else None
            if cutoff is not None and (math.isnan(value) or value < cutoff):
                action = TrialScheduler.STOP
            rung[trial_id] = value
            changed = True
            break
        if action == TrialScheduler.STOP:
            self.stopped.append(trial_id)
        if changed:
            write_json(self.path, {"rungs": self.rungs, "stopped": self.stopped})
        return action

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        config = trial.config
        if config.get("phase") != "tune" or self.metric_key not in result:
            return TrialScheduler.CONTINUE  # final runs are never stopped
        return self.decide(config["cell"], trial.trial_id, int(result["epoch"]), float(result[self.metric_key]))
