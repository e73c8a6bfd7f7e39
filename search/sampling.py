"""A cell's sampler: Optuna underneath, configured for the study's small categorical grids.

Used by the searcher (live trials) and by ``benchmarks/search_replay.py`` (replaying released
results), so what is measured is what runs. On an all-categorical space a point already given
out is never spent again: TPE proposals that repeat one are closed as failed (which TPE ignores)
and, after a few, an unvisited point is drawn at random.
"""
from __future__ import annotations

import json
import random
from typing import Any

import optuna

from .space import Dimension, grid_points

_RETRIES = 8


def make_sampler(name: str, seed: int, space_size: int | None = None) -> optuna.samplers.BaseSampler:
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    # The paper's grids have 4-80 points: TPE's default 10 random start-up trials would be most
    # of the budget, so start modelling after a handful; constant_liar keeps concurrent trials apart.
    startup = 10 if space_size is None else max(3, min(10, space_size // 8))
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=startup,
                                      constant_liar=True)


def warm_limit(space_size: int) -> int:
    """How many transferred points a cell tries before its own sampler takes over."""
    return max(1, space_size // 8)


def warm_start_points(histories: list[list[tuple[dict, float]]], limit: int) -> list[dict]:
    """Points to try first in a cell, from finished cells of the same method elsewhere.

    Each history is ``[(params, value), ...]``; points are ranked by their mean percentile
    across histories (a point that is good on most other datasets first), up to ``limit``.
    """
    percentiles: dict[str, list[float]] = {}
    params_of: dict[str, dict] = {}
    for history in histories:
        ranked = sorted(history, key=lambda pv: pv[1])
        for position, (params, _) in enumerate(ranked, start=1):
            percentiles.setdefault(_key(params), []).append(position / len(ranked))
            params_of[_key(params)] = params
    order = sorted(percentiles, key=lambda k: -sum(percentiles[k]) / len(percentiles[k]))
    return [params_of[k] for k in order[:limit]]


def _key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


class CellSampler:
    def __init__(self, study: optuna.Study, space: dict[str, Dimension], seed: int) -> None:
        self.study, self.space = study, space
        self.distributions = {k: d.distribution() for k, d in space.items()}
        self.points = grid_points(space) if all(d.categorical for d in space.values()) else None
        self.rng = random.Random(seed)

    def seen(self) -> set[str]:
        """Points given out before (running or finished), from the Optuna history."""
        alive = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.COMPLETE,
                 optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.WAITING)
        return {_key(t.params) for t in self.study.get_trials(deepcopy=False, states=alive)}

    def ask(self, fixed: dict[str, Any] | None = None) -> optuna.Trial:
        """The next trial; ``fixed`` (grid order, a re-queued or warm-start point) is asked as is."""
        if fixed is not None:
            self.study.enqueue_trial(fixed)
            return self.study.ask(self.distributions)
        if self.points is None:
            return self.study.ask(self.distributions)
        seen = self.seen()
        for _ in range(_RETRIES):
            trial = self.study.ask(self.distributions)
            if _key(trial.params) not in seen:
                return trial
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        unvisited = [p for p in self.points if _key(p) not in seen] or self.points
        self.study.enqueue_trial(self.rng.choice(unvisited))
        return self.study.ask(self.distributions)
