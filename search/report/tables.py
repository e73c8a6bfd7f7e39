"""The report's tables, each a pivot of a study's run records (``records.StudyRecords``); each lists
what it lacks in ``Table.missing``. Scores are test top-1 (percent), mean ± std over the final
runs' seeds.

Domain shift and WiSE follow the convention of ``peft-search evaluate`` / ``wise``: on a
``phase=final`` run, ``eval_<set>_top1`` (percent) and ``wise_<set>_top1`` logged at
``step = round(alpha * 10)``, for the sets in ``DOMAIN_SETS``.
"""
from __future__ import annotations

import statistics

from ..mlflow_layout import PHASE_CELL, PHASE_FINAL, PHASE_TUNE
from .datasets import GROUPS, VTAB_TASKS, size_order
from .records import RunRecord, StudyRecords, pivot, select, values
from .tabular import Column, Table, mean_score, score

DOMAIN_SETS = {"imagenet": "IN", "imagenet_v2": "V2", "imagenet_sketch": "Sketch", "imagenet_r": "R",
               "imagenet_a": "A"}
OOD_SETS = [s for s in DOMAIN_SETS if s != "imagenet"]
GROUP_TITLES = {"natural": "Natural", "specialized": "Specialized", "structured": "Structured"}


def _scores(finals: list[RunRecord], metric: str, row: str = "method", column: str = "dataset") -> dict:
    """{(row, column): the score of ``metric`` over the final runs sharing both}."""
    return pivot(finals, row, column, lambda runs: score(values(runs, metric)))


def _noted(table: Table, value, what: str, why: str | None = None):
    """``value``; when it is missing, noted so (and why, when a run said) in the table's missing list."""
    if value is None:
        table.missing.append(f"{table.name}: {what}" + (f" ({why})" if why else ""))
    return value


def _notes(finals: list[RunRecord], row: str = "method", column: str = "dataset") -> dict:
    """{(row, column): the first note of the final runs sharing both}."""
    return pivot(finals, row, column, lambda runs: next((r.note for r in runs if r.note), None))


def _mean_params(finals: list[RunRecord], datasets: list[str]) -> dict[str, int]:
    """{method: its inserted parameters (first seed), averaged over ``datasets``}: the best rank
    differs per task."""
    first = pivot([r for r in finals if r.dataset in datasets], "method", "dataset",
                  lambda runs: values(runs, "inserted_params")[:1])
    found: dict[str, list[float]] = {}
    for (method, _), params in first.items():
        found.setdefault(method, []).extend(params)
    return {method: round(statistics.mean(params)) for method, params in found.items() if params}


def _method_rows(study: StudyRecords, table: Table, datasets: list[str]) -> list[dict]:
    """A row per method run on ``datasets``: test top-1 on each and the mean inserted parameters."""
    finals = study.finished_finals()
    top1, params, notes = _scores(finals, "test_top1"), _mean_params(finals, datasets), _notes(finals)
    rows = []
    for method in sorted({r.method for r in study.records if r.dataset in datasets}):
        row: dict = {"method": method, "params": params.get(method)}
        row.update({d: _noted(table, top1.get((method, d)), f"{d}/{method}", notes.get((method, d)))
                    for d in datasets})
        rows.append(row)
    return rows


def _rank(rows: list[dict], by: str) -> None:
    ranked = sorted((r for r in rows if r.get(by) is not None), key=lambda r: -r[by].mean)
    for rank, row in enumerate(ranked, start=1):
        row["rank"] = rank


def vtab_table(study: StudyRecords) -> Table | None:
    """A row per method, a column per VTAB-1K task present, the group means (``*``: over only the
    tasks present), both overall conventions, mean inserted parameters and rank."""
    present = {r.dataset for r in study.records if r.vtab_group is not None}
    tasks = [t for t in VTAB_TASKS if t in present]
    if not tasks:
        return None
    table = Table("vtab1k", [Column("method", "method", "text")] + [Column(t, t) for t in tasks]
                  + [Column(g, title) for g, title in GROUP_TITLES.items()]
                  + [Column("mean_of_groups", "mean of 3 groups"), Column("mean_of_tasks", "mean of tasks"),
                     Column("params", "params", "int"), Column("rank", "rank", "int")],
                  note="`mean of 3 groups` averages the Natural, Specialized and Structured means; "
                       "`mean of tasks` averages the tasks directly; `params` is the mean over tasks of "
                       "the inserted parameters. * marks a mean over only part of what it covers.")
    for row in _method_rows(study, table, tasks):
        for group, members in GROUPS.items():
            row[group] = mean_score({t: row.get(t) for t in members}, len(members))
        row["mean_of_groups"] = mean_score({g: row[g] for g in GROUPS}, len(GROUPS))
        row["mean_of_tasks"] = mean_score({t: row.get(t) for t in VTAB_TASKS}, len(VTAB_TASKS))
        table.rows.append(row)
    _rank(table.rows, "mean_of_groups")
    return table


def datasets_table(study: StudyRecords) -> Table | None:
    """Datasets outside VTAB-1K and the many-shot sets (mini-VTAB, ImageNet, your own)."""
    datasets = sorted({r.dataset for r in study.records if r.vtab_group is None and r.manyshot_base is None})
    if not datasets:
        return None
    table = Table("datasets", [Column("method", "method", "text")] + [Column(d, d) for d in datasets]
                  + [Column("mean", "mean"), Column("params", "params", "int")],
                  note="Test top-1; `mean` over the datasets present (* when some are missing).")
    for row in _method_rows(study, table, datasets):
        row["mean"] = mean_score({d: row[d] for d in datasets}, len(datasets))
        table.rows.append(row)
    return table


def manyshot_tables(study: StudyRecords) -> list[Table]:
    """One table per many-shot dataset: a row per method, a column per training-set size."""
    tables = []
    for base in sorted({r.manyshot_base for r in study.records if r.manyshot_base is not None}):
        runs = select(study.records, manyshot_base=base)
        datasets = {r.manyshot_size: r.dataset for r in runs}
        sizes = sorted(datasets, key=size_order)
        top1 = _scores([r for r in runs if r.finished_final], "test_top1", column="manyshot_size")
        table = Table(f"manyshot_{base}", [Column("method", "method", "text")] + [Column(s, s) for s in sizes],
                      note=f"{base}: test top-1 per training-set size (mean ± std over seeds).")
        for method in sorted({r.method for r in runs}):
            row: dict = {"method": method}
            row.update({s: _noted(table, top1.get((method, s)), f"{datasets[s]}/{method}") for s in sizes})
            table.rows.append(row)
        tables.append(table)
    return tables


def _domain_columns() -> list[Column]:
    return ([Column("dataset", "dataset", "text"), Column("method", "method", "text")]
            + [Column(s, title) for s, title in DOMAIN_SETS.items()] + [Column("ood_mean", "OOD mean")])


def domain_shift_table(study: StudyRecords) -> Table | None:
    """IN, V2, Sketch, R, A and the OOD mean (of the four OOD sets present; * when some are not),
    for the cells of every dataset where some final run logged ``eval_<set>_top1``."""
    finals = study.finished_finals()
    top1 = {s: _scores(finals, f"eval_{s}_top1", row="dataset", column="method") for s in DOMAIN_SETS}
    datasets = {dataset for scores in top1.values() for (dataset, _), found in scores.items()
                if found is not None}
    if not datasets:
        return None
    table = Table("domain_shift", _domain_columns(),
                  note="Top-1 on ImageNet (IN) and its shifted sets; `OOD mean` averages V2, Sketch, R and A "
                       "(* when some are missing).")
    for dataset, method in (cell for cell in study.cells() if cell[0] in datasets):
        row: dict = {"dataset": dataset, "method": method}
        row.update({s: _noted(table, top1[s].get((dataset, method)), f"{dataset}/{method} {DOMAIN_SETS[s]}")
                    for s in DOMAIN_SETS})
        row["ood_mean"] = mean_score({s: row[s] for s in OOD_SETS}, len(OOD_SETS))
        table.rows.append(row)
    return table


def wise_table(study: StudyRecords) -> Table | None:
    """Per cell and α: ``wise_<set>_top1`` at step round(α·10), averaged over the final runs."""
    table = Table("wise", _domain_columns()[:2] + [Column("alpha", "α", "text")] + _domain_columns()[2:],
                  note="WiSE: α = 0 is zero-shot, α = 1 the fine-tuned model; `OOD mean` averages "
                       "V2, Sketch, R and A (* when some are missing).")
    for (dataset, method), finals in sorted(pivot(study.finished_finals(), "dataset", "method", list).items()):
        curves: dict[int, dict[str, list[float]]] = {}  # {step: {set: a value per final run}}
        for run in finals:
            for s in DOMAIN_SETS:
                for step, value in run.histories.get(f"wise_{s}_top1", ()):
                    curves.setdefault(step, {}).setdefault(s, []).append(value)
        for step, points in sorted(curves.items()):
            row: dict = {"dataset": dataset, "method": method, "alpha": f"{step / 10:.1f}"}
            row.update({s: score(points.get(s, [])) for s in DOMAIN_SETS})
            row["ood_mean"] = mean_score({s: row[s] for s in OOD_SETS}, len(OOD_SETS))
            table.rows.append(row)
    return table if table.rows else None


def _total(runs: list[RunRecord], metric: str, kind: type = float):
    found = [kind(v) for v in values(runs, metric)]
    return sum(found) if found else None


def budget_table(study: StudyRecords) -> Table | None:
    """Per cell: tuning trials (pruned, failed, running), epochs and seconds of tuning and of the
    final runs, from each trial's ``epochs_run`` and ``trial_seconds``; a last row sums them."""
    if all(r.phase == PHASE_CELL for r in study.records):
        return None
    kinds = {"trials": "int", "pruned": "int", "failed": "int", "running": "int", "tune_epochs": "int",
             "tune_seconds": "float", "final_runs": "int", "final_epochs": "int", "final_seconds": "float",
             "total_seconds": "float"}
    table = Table("budget", [Column("dataset", "dataset", "text"), Column("method", "method", "text")]
                  + [Column(k, k.replace("_", " "), kind) for k, kind in kinds.items()],
                  note="Budget: trials are tuning runs (any state); epochs and seconds are the sums of "
                       "`epochs_run` and `trial_seconds` over the runs that logged them.")
    by_phase = pivot(study.records, "cell", "phase", list)
    for cell in study.cells():
        tune, finals = by_phase.get((cell, PHASE_TUNE), []), by_phase.get((cell, PHASE_FINAL), [])
        row = {"dataset": cell[0], "method": cell[1], "trials": len(tune),
               "pruned": sum(r.state == "pruned" for r in tune), "failed": sum(r.state == "failed" for r in tune),
               "running": sum(r.status == "RUNNING" for r in tune),
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
