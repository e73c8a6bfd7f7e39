"""The report's tables, built from a study's runs (``results.StudyRuns``); each lists what it lacks
in ``Table.missing``. Scores are test top-1 (percent), mean ± std over the final runs' seeds.

Domain shift and WiSE follow the convention of ``peft-search evaluate`` / ``wise``: on a
``phase=final`` run, ``eval_<set>_top1`` (percent) and ``wise_<set>_top1`` logged at
``step = round(alpha * 10)``, for the sets in ``DOMAIN_SETS``.
"""
from __future__ import annotations

import statistics

from .records import GROUPS, VTAB_TASKS, StudyRuns, manyshot_split, size_order
from .tabular import Column, Score, Table, mean_score, score

DOMAIN_SETS = {"imagenet": "IN", "imagenet_v2": "V2", "imagenet_sketch": "Sketch", "imagenet_r": "R",
               "imagenet_a": "A"}
OOD_SETS = [s for s in DOMAIN_SETS if s != "imagenet"]
GROUP_TITLES = {"natural": "Natural", "specialized": "Specialized", "structured": "Structured"}


def _params(runs: StudyRuns, keys: list) -> int | None:
    """Inserted parameters, averaged over the cells given (the best rank differs per task)."""
    found = [p for key in keys for p in runs.metric(key, "inserted_params")[:1]]
    return round(statistics.mean(found)) if found else None


def _rank(rows: list[dict], by: str) -> None:
    ranked = sorted((r for r in rows if r.get(by) is not None), key=lambda r: -r[by].mean)
    for rank, row in enumerate(ranked, start=1):
        row["rank"] = rank


def _cell_score(runs: StudyRuns, table: Table, cell: tuple[str, str], metric: str, what: str) -> Score | None:
    """A cell's ``metric`` over its final runs; a cell without it is noted in the table's missing list."""
    value = score(runs.metric(cell, metric))
    if value is None:
        table.missing.append(f"{table.name}: {what}")
    return value


def vtab_table(runs: StudyRuns) -> Table | None:
    """A row per method, a column per VTAB-1K task present, the group means (``*``: over only the
    tasks present), both overall conventions, mean inserted parameters and rank."""
    tasks = [t for t in VTAB_TASKS if any(d == t for d, _ in runs.cells)]
    if not tasks:
        return None
    table = Table("vtab1k", [Column("method", "method", "text")] + [Column(t, t) for t in tasks]
                  + [Column(g, title) for g, title in GROUP_TITLES.items()]
                  + [Column("mean_of_groups", "mean of 3 groups"), Column("mean_of_tasks", "mean of tasks"),
                     Column("params", "params", "int"), Column("rank", "rank", "int")],
                  note="`mean of 3 groups` averages the Natural, Specialized and Structured means; "
                       "`mean of tasks` averages the tasks directly; `params` is the mean over tasks of "
                       "the inserted parameters. * marks a mean over only part of what it covers.")
    for method in sorted({m for d, m in runs.cells if d in tasks}):
        row: dict = {"method": method}
        for task in tasks:
            row[task] = _cell_score(runs, table, (task, method), "test_top1", f"{task}/{method}")
        for group, members in GROUPS.items():
            row[group] = mean_score({t: row.get(t) for t in members}, len(members))
        row["mean_of_groups"] = mean_score({g: row[g] for g in GROUPS}, len(GROUPS))
        row["mean_of_tasks"] = mean_score({t: row.get(t) for t in VTAB_TASKS}, len(VTAB_TASKS))
        row["params"] = _params(runs, [(t, method) for t in tasks])
        table.rows.append(row)
    _rank(table.rows, "mean_of_groups")
    return table


def datasets_table(runs: StudyRuns) -> Table | None:
    """Datasets outside VTAB-1K and the many-shot sets (mini-VTAB, ImageNet, your own)."""
    datasets = sorted({d for d, _ in runs.cells if d not in VTAB_TASKS and manyshot_split(d) is None})
    if not datasets:
        return None
    table = Table("datasets", [Column("method", "method", "text")] + [Column(d, d) for d in datasets]
                  + [Column("mean", "mean"), Column("params", "params", "int")],
                  note="Test top-1; `mean` over the datasets present (* when some are missing).")
    for method in sorted({m for d, m in runs.cells if d in datasets}):
        row: dict = {"method": method}
        for d in datasets:
            row[d] = _cell_score(runs, table, (d, method), "test_top1", f"{d}/{method}")
        row["mean"] = mean_score({d: row[d] for d in datasets}, len(datasets))
        row["params"] = _params(runs, [(d, method) for d in datasets])
        table.rows.append(row)
    return table


def manyshot_tables(runs: StudyRuns) -> list[Table]:
    """One table per many-shot dataset: a row per method, a column per training-set size."""
    families: dict[str, dict[str, str]] = {}
    for dataset, _ in runs.cells:
        split = manyshot_split(dataset)
        if split:
            families.setdefault(split[0], {})[split[1]] = dataset
    tables = []
    for base, sizes in sorted(families.items()):
        order = sorted(sizes, key=size_order)
        table = Table(f"manyshot_{base}", [Column("method", "method", "text")]
                      + [Column(s, s) for s in order],
                      note=f"{base}: test top-1 per training-set size (mean ± std over seeds).")
        for method in sorted({m for d, m in runs.cells if d in sizes.values()}):
            row: dict = {"method": method}
            for size in order:
                row[size] = _cell_score(runs, table, (sizes[size], method), "test_top1", f"{sizes[size]}/{method}")
            table.rows.append(row)
        tables.append(table)
    return tables


def _domain_columns() -> list[Column]:
    return ([Column("dataset", "dataset", "text"), Column("method", "method", "text")]
            + [Column(s, title) for s, title in DOMAIN_SETS.items()] + [Column("ood_mean", "OOD mean")])


def domain_shift_table(runs: StudyRuns) -> Table | None:
    """IN, V2, Sketch, R, A and the OOD mean (of the four OOD sets present; * when some are not),
    for the cells of every dataset where some final run logged ``eval_<set>_top1``."""
    names = [f"eval_{s}_top1" for s in DOMAIN_SETS]
    datasets = {d for (d, m), finals in runs.finals.items() if any(n in r.data.metrics for r in finals for n in names)}
    if not datasets:
        return None
    table = Table("domain_shift", _domain_columns(),
                  note="Top-1 on ImageNet (IN) and its shifted sets; `OOD mean` averages V2, Sketch, R and A "
                       "(* when some are missing).")
    for dataset, method in sorted(k for k in runs.cells if k[0] in datasets):
        row: dict = {"dataset": dataset, "method": method}
        for s in DOMAIN_SETS:
            row[s] = _cell_score(runs, table, (dataset, method), f"eval_{s}_top1",
                                 f"{dataset}/{method} {DOMAIN_SETS[s]}")
        row["ood_mean"] = mean_score({s: row[s] for s in OOD_SETS}, len(OOD_SETS))
        table.rows.append(row)
    return table


def wise_table(runs: StudyRuns) -> Table | None:
    """Per cell and α: ``wise_<set>_top1`` at step round(α·10), averaged over the final runs."""
    table = Table("wise", _domain_columns()[:2] + [Column("alpha", "α", "text")] + _domain_columns()[2:],
                  note="WiSE: α = 0 is zero-shot, α = 1 the fine-tuned model; `OOD mean` averages "
                       "V2, Sketch, R and A (* when some are missing).")
    for (dataset, method), finals in sorted(runs.finals.items()):
        curves: dict[int, dict[str, list[float]]] = {}
        for run in finals:
            for s in DOMAIN_SETS:
                if f"wise_{s}_top1" in run.data.metrics:
                    for m in runs.client.get_metric_history(run.info.run_id, f"wise_{s}_top1"):
                        curves.setdefault(m.step, {}).setdefault(s, []).append(m.value)
        for step, values in sorted(curves.items()):
            row: dict = {"dataset": dataset, "method": method, "alpha": f"{step / 10:.1f}"}
            row.update({s: score(values.get(s, [])) for s in DOMAIN_SETS})
            row["ood_mean"] = mean_score({s: row[s] for s in OOD_SETS}, len(OOD_SETS))
            table.rows.append(row)
    return table if table.rows else None


def _total(runs: list, name: str, kind: type = float):
    values = [kind(r.data.metrics[name]) for r in runs if name in r.data.metrics]
    return sum(values) if values else None


def budget_table(runs: StudyRuns) -> Table | None:
    """Per cell: tuning trials (pruned, failed, running), epochs and seconds of tuning and of the
    final runs, from each trial's ``epochs_run`` and ``trial_seconds``; a last row sums them."""
    if not runs.tune and not runs.final_all:
        return None
    kinds = {"trials": "int", "pruned": "int", "failed": "int", "running": "int", "tune_epochs": "int",
             "tune_seconds": "float", "final_runs": "int", "final_epochs": "int", "final_seconds": "float",
             "total_seconds": "float"}
    table = Table("budget", [Column("dataset", "dataset", "text"), Column("method", "method", "text")]
                  + [Column(k, k.replace("_", " "), kind) for k, kind in kinds.items()],
                  note="Budget: trials are tuning runs (any state); epochs and seconds are the sums of "
                       "`epochs_run` and `trial_seconds` over the runs that logged them.")
    for key in sorted(runs.cells):
        tune, finals = runs.tune.get(key, []), runs.final_all.get(key, [])
        state = [r.data.tags.get("state") or r.info.status for r in tune]
        row = {"dataset": key[0], "method": key[1], "trials": len(tune),
               "pruned": sum(s in ("pruned", "KILLED") for s in state),
               "failed": sum(s in ("failed", "FAILED") for s in state),
               "running": sum(r.info.status == "RUNNING" for r in tune),
               "tune_epochs": _total(tune, "epochs_run", int), "tune_seconds": _total(tune, "trial_seconds"),
               "final_runs": len(finals), "final_epochs": _total(finals, "epochs_run", int),
               "final_seconds": _total(finals, "trial_seconds")}
        parts = [row["tune_seconds"], row["final_seconds"]]
        row["total_seconds"] = None if parts == [None, None] else sum(p for p in parts if p is not None)
        table.rows.append(row)
    total: dict = {"dataset": "all", "method": "all"}
    for column in table.columns[2:]:
        present = [r[column.key] for r in table.rows if r[column.key] is not None]
        total[column.key] = sum(present) if present else None
    table.rows.append(total)
    return table

