"""ASHA per cell: trials of different cells never compete; milestones are epochs.

The rung records are kept in memory and written to the search state one row per trial and rung
reached, so a resumed driver keeps them (Tune does not checkpoint its scheduler).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from ..study_folder import read_asha
from ..study import Study
from .store import SearchStore


class CellASHA(FIFOScheduler):
    def __init__(self, study: Study, study_dir: Path) -> None:
        super().__init__()
        self.milestones = study.milestones()
        self.rf = study.search.asha.reduction_factor if study.search.asha else 2
        self.metric_key = study.search.metric
        self.study_dir = Path(study_dir)
        self.rungs: dict[str, dict[str, dict[str, float]]] | None = None  # cell -> rung -> trial -> value
        self.stopped: list[str] = []
        self._store: SearchStore | None = None
        self._unfinished: dict[Trial, None] = {}  # trials added and not yet ended, in order

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("_store", "_unfinished")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._store, self._unfinished = None, {}

    # FIFO over the trials not yet ended, not over every trial of the experiment: Tune's own
    # FIFOScheduler walks them all on each step, which grew the driver's cost per trial with the
    # study (18 % of its time by trial 4,500 of a 5,300-trial replay).
    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        self._unfinished[trial] = None

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        self._unfinished.pop(trial, None)

    def on_trial_error(self, tune_controller, trial: Trial) -> None:
        self._unfinished.pop(trial, None)

    def on_trial_remove(self, tune_controller, trial: Trial) -> None:
        self._unfinished.pop(trial, None)

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        ended = [t for t in self._unfinished if t.status in (Trial.TERMINATED, Trial.ERROR)]
        for trial in ended:  # ended without telling the scheduler (restored from a snapshot)
            del self._unfinished[trial]
        for wanted in (Trial.PENDING, Trial.PAUSED):
            for trial in self._unfinished:
                if trial.status == wanted:
                    return trial
        return None

    def _load(self) -> None:
        if self.rungs is None:
            saved = read_asha(self.study_dir)
            self.rungs, self.stopped = saved["rungs"], saved["stopped"]
            self._store = SearchStore(self.study_dir)

    def decide(self, cell: str, trial_id: str, epoch: int, value: float) -> str:
        """Record ``value`` at every rung ``epoch`` reached; STOP below the top 1/rf of a rung."""
        self._load()
        action = TrialScheduler.CONTINUE
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
                self.stopped.append(trial_id)
            rung[trial_id] = value
            self._store.save_rung(cell, milestone, trial_id, value, action == TrialScheduler.STOP)
            break
        return action

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        config = trial.config
        if config.get("phase") != "tune" or self.metric_key not in result:
            return TrialScheduler.CONTINUE  # final runs are never stopped
        return self.decide(config["cell"], trial.trial_id, int(result["epoch"]), float(result[self.metric_key]))
