"""Tune's controller, asked whether the experiment is over in constant time.

``TuneController.is_finished`` runs on every loop step. Whenever no trial is live -- between two
trials at ``max_concurrent: 1``, or whenever the searcher has nothing queued -- it walks every
trial of the experiment: by trial 3,300 of a replayed study it was 7.6 % of the driver's time,
and it grows with each trial. The controller already files each trial in one set per status (it
asserts the sets on every change), so "nothing pending, running or paused" is the same answer
without the walk. A Ray without those sets keeps its own method.
"""
from __future__ import annotations

from contextlib import contextmanager

_UNFINISHED = ("_pending_trials", "_running_trials", "_paused_trials")


@contextmanager
def constant_time_is_finished():
    from ray.tune.execution.tune_controller import TuneController
    walk_every_trial = TuneController.is_finished

    def is_finished(self) -> bool:
        unfinished = [getattr(self, name, None) for name in _UNFINISHED]
        if any(trials is None for trials in unfinished):
            return walk_every_trial(self)
        return not any(unfinished) and self._search_alg.is_finished()

    TuneController.is_finished = is_finished
    try:
        yield
    finally:
        TuneController.is_finished = walk_every_trial
