"""Tune's controller at a study's scale: two of its walks over every trial made O(unfinished).

``is_finished`` runs on every loop step. Whenever no trial is live -- between two trials at
``max_concurrent: 1``, or whenever the searcher has nothing queued -- it walks every trial of the
experiment: by trial 3,300 of a replayed study it was 7.6 % of the driver's time. The controller
already files each trial in one set per status (it asserts the sets on every change), so "nothing
pending, running or paused" is the same answer without the walk.

The experiment snapshot (every ~10 s, and at each trial checkpoint with ``num_to_keep``) writes
every trial Tune ever ran, ~22 KB of JSON each (config, last result, metric statistics, storage
context): 221 MB at trial 10,000, written whole and then copied to storage each time, so a
snapshot's cost grows with the study and its disk writes slow the SQLite commits around it. A
study's ended trials are in its search state and MLflow, and a resumed study never runs them
again (the searcher keeps their records whether Tune knows them or not), so the snapshot holds
the trials not yet ended, and the last one to end: Tune's restore takes the experiment folder's
timestamp from its first trial, and a study may be snapshot with none left.

A Ray without these attributes keeps its own methods.
"""
from __future__ import annotations

from contextlib import contextmanager

_UNFINISHED = ("_pending_trials", "_running_trials", "_paused_trials")


@contextmanager
def controller_at_study_scale():
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment import Trial
    walk_every_trial = TuneController.is_finished
    every_trial_state = TuneController._get_trial_checkpoints
    last_ended: dict[str, str] = {}

    def is_finished(self) -> bool:
        unfinished = [getattr(self, name, None) for name in _UNFINISHED]
        if any(trials is None for trials in unfinished):
            return walk_every_trial(self)
        return not any(unfinished) and self._search_alg.is_finished()

    def unfinished_trial_states(self) -> dict[str, str]:
        changed = list(getattr(self, "_trials_to_cache", ()))
        states = every_trial_state(self)  # Tune's cache of each trial's JSON, refreshed
        for trial in changed:  # an ending trial is marked changed, so each leaves the cache once
            if trial.status in (Trial.TERMINATED, Trial.ERROR) and trial.trial_id in states:
                last_ended.clear()
                last_ended[trial.trial_id] = states.pop(trial.trial_id)
        return states or dict(last_ended)

    TuneController.is_finished = is_finished
    TuneController._get_trial_checkpoints = unfinished_trial_states
    try:
        yield
    finally:
        TuneController.is_finished = walk_every_trial
        TuneController._get_trial_checkpoints = every_trial_state
