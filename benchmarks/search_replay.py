"""Replay released tuning results through the project's own sampler configuration.

For every cell (task x method) of a ``tune_summary.csv`` tree (the study's released layout), the
cell's grid is searched again by ``search.tune.sampling.CellSampler`` (TPE as the service configures
it), looking results up in the table instead of training. Printed per cell: the fraction of the
grid evaluated before reaching the grid's best val top-1 within 0.5 points, for cold TPE, for TPE
with the searcher's warm start (points ranked by how well they did for the same method on the
other tasks and for the other methods on this task, compared on the keys they share; this cell
left out), and for random order (exact expectation). The last line is JSON:
``median_fraction`` (warm-started TPE, the service's configuration with ``warm_start: true``),
``median_fraction_cold`` and ``median_random``.

    python benchmarks/search_replay.py --tune-output ../shared/fixtures/petl_tune_output [--json]
"""
from __future__ import annotations

import argparse
import ast
import csv
import json
import statistics
from pathlib import Path

import optuna

from search.tune.sampling import CellSampler, _key, make_sampler, warm_limit, warm_start_points
from search.space import Dimension

optuna.logging.set_verbosity(optuna.logging.ERROR)
TOLERANCE = 0.5


def read_table(path: Path) -> dict[str, tuple[dict, float]]:
    table = {}
    with path.open() as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            try:
                params = ast.literal_eval(row["param_set"])
                table[_key(params)] = (params, float(row["val_top1"]))
            except (ValueError, SyntaxError, KeyError) as err:
                raise SystemExit(f"{path}:{line}: malformed row ({type(err).__name__})")
    return table


def space_of(table) -> dict[str, Dimension]:
    keys = sorted({k for params, _ in table.values() for k in params})
    return {k: Dimension("grid", tuple(sorted({p[k] for p, _ in table.values()}, key=str))) for k in keys}


def tpe_fraction(table, seed: int, warm: list[dict] | None = None) -> float:
    """Fraction of the grid evaluated until within TOLERANCE of its best; ``warm``: points asked
    first, as the searcher's warm start does (best configs of the same method elsewhere)."""
    space = space_of(table)
    best = max(v for _, v in table.values())
    study = optuna.create_study(direction="maximize", sampler=make_sampler("tpe", seed, len(table)))
    sampler = CellSampler(study, space, seed)
    sampler.points = [p for p, _ in table.values()]  # only points the study actually ran
    queue = [p for p in (warm or []) if _key(p) in table]
    evaluated = 0
    for _ in range(20 * len(table)):
        trial = sampler.ask(queue.pop(0) if queue else None)
        key = _key(trial.params)
        if key not in table:  # outside the released grid: not a trial, not counted
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        evaluated += 1
        value = table[key][1]
        study.tell(trial, value)
        if value >= best - TOLERANCE:
            return evaluated / len(table)
    return 1.0


def random_fraction(table) -> float:
    """Expected fraction of a random order before the first point within TOLERANCE of the best."""
    best = max(v for _, v in table.values())
    n, k = len(table), sum(v >= best - TOLERANCE for _, v in table.values())
    return (n + 1) / (k + 1) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tune-output", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tables = {f"{p.parent.parent.name}/{p.parent.name}": read_table(p)
              for p in sorted(args.tune_output.rglob("tune_summary.csv"))}
    if not tables:
        raise SystemExit(f"no tune_summary.csv under {args.tune_output}")
    cells = {}
    for cell, table in tables.items():
        task, method = cell.split("/")
        # Warm start as the searcher does: the same method on the other tasks and the other
        # methods on this task (this cell left out), compared on the keys they share.
        others = [list(t.values()) for c, t in tables.items() if c != cell
                  and (c.endswith(f"/{method}") or c.startswith(f"{task}/"))]
        warm = warm_start_points([p for p, _ in table.values()], others, warm_limit(len(table)))
        cold = statistics.mean(tpe_fraction(table, seed) for seed in range(args.seeds))
        warmed = statistics.mean(tpe_fraction(table, seed, warm) for seed in range(args.seeds))
        cells[cell] = {"grid": len(table), "tpe": cold, "tpe_warm": warmed, "random": random_fraction(table)}
        print(f"{cell:32s} grid {len(table):3d}  tpe {cold:.3f}  tpe+warm start {warmed:.3f}  "
              f"random {cells[cell]['random']:.3f}", flush=True)
    result = {"median_fraction": statistics.median(c["tpe_warm"] for c in cells.values()),
              "median_fraction_cold": statistics.median(c["tpe"] for c in cells.values()),
              "median_random": statistics.median(c["random"] for c in cells.values()),
              "cells": len(cells), "seeds": args.seeds, "tolerance": TOLERANCE}
    if args.json:
        result["per_cell"] = cells
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
