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

from ..space import Dimension, grid_points

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
    """How many transferred points a cell tries before its own sampler takes over: one, two on
    grids of 16 points or more (a poor guess costs a larger share of a small grid)."""
    return 2 if space_size >= 16 else 1


def warm_start_points(candidates: list[dict], histories: list[list[tuple[dict, float]]],
                      limit: int) -> list[dict]:
    """The ``limit`` candidate points that did best in other cells' finished trials.

    Each history is ``[(params, value), ...]`` of one other cell: the same method on another
    dataset, or another method on the same dataset. A candidate is compared with a history on
    the keys they share (every key within a method; lr, wd, drop_path_rate across methods) and
    scored by its mean percentile there (0.5 where the history never tried it); candidates are
    ranked by their mean over histories.
    """
    scores: dict[str, list[float]] = {}
    for history in histories:
        shared = sorted(set(candidates[0]) & set(history[0][0])) if candidates and history else []
        if not shared:
            continue
        seen: dict[str, list[float]] = {}
        for position, (params, _) in enumerate(sorted(history, key=lambda pv: pv[1]), start=1):
            seen.setdefault(_key({k: params[k] for k in shared}), []).append(position / len(history))
        for point in candidates:  # a point this history never tried counts as its middle
            found = seen.get(_key({k: point[k] for k in shared}), [0.5])
            scores.setdefault(_key(point), []).append(sum(found) / len(found))
    scored = [p for p in candidates if _key(p) in scores]
    scored.sort(key=lambda p: -sum(scores[_key(p)]) / len(scores[_key(p)]))
    return scored[:limit]


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
