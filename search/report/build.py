"""``peft-search report``: the study's comparison tables and figures, read from MLflow.

Tables (CSV, Markdown, LaTeX; ``tables``): VTAB-1K, other datasets, many-shot (one per dataset,
a column per training-set size), domain shift (IN, V2, Sketch, R, A, OOD mean), WiSE points,
budget per cell, and prediction overlap (``overlap``). Figures (PNG; ``figures``): accuracy vs
inserted parameters, group means per method, gain over linear probing per task, WiSE curves,
prediction overlap. ``compare_to`` adds ours − theirs columns; ``missing.txt`` lists every cell
without a result. Missing cells show as missing, never as zero; an empty or running study is fine.
"""
from __future__ import annotations

from pathlib import Path

from ..study_folder import tracking_source
from . import figures, tables
from .datasets import VTAB_TASKS
from .overlap import overlap_table
from .records import RunRecord, StudyRecords, load_records
from .tabular import Table, with_deltas, write_table

Source = tuple[str, str] | Path | str  # (tracking URI, experiment) or a study folder
COMPARED = ("vtab1k", "datasets", "domain_shift")  # plus every manyshot_* table


def resolve(source: Source) -> tuple[str, str]:
    """(tracking URI, experiment) of a study folder or of a (URI, experiment) pair."""
    if isinstance(source, tuple):
        return source
    return tracking_source(Path(source))


def build_tables(study: StudyRecords) -> dict[str, Table]:
    """Every result table the runs allow, by file stem (overlap and budget aside)."""
    built = [tables.vtab_table(study), tables.datasets_table(study), *tables.manyshot_tables(study),
             tables.domain_shift_table(study), tables.wise_table(study)]
    return {t.name: t for t in built if t is not None}


def _task_scores(built: dict[str, Table]) -> dict[str, dict[str, float]]:
    """{task: {method: mean top-1}} over the VTAB-1K and other-datasets tables (gain figure)."""
    scores: dict[str, dict[str, float]] = {}
    for table in (built.get("vtab1k"), built.get("datasets")):
        for column in table.columns if table else []:
            if column.kind == "score" and (column.key in VTAB_TASKS or table.name == "datasets" and column.key != "mean"):
                for r in table.rows:
                    if r[column.key] is not None:
                        scores.setdefault(column.key, {})[r["method"]] = r[column.key].mean
    return scores


def _variant_curves(study: StudyRecords) -> dict[str, dict[str, list[tuple[str, float, float]]]]:
    """{dataset: {base method: [(cell's method, inserted parameters, mean test top-1)]}} for every
    method with two cells or more on a dataset (its variants: one per fixed rank)."""
    runs: dict[tuple[str, str, str], list[RunRecord]] = {}
    for r in study.finished_finals():
        if "test_top1" in r.metrics and "inserted_params" in r.metrics:
            runs.setdefault((r.dataset, r.base_method, r.method), []).append(r)
    curves: dict[str, dict[str, list]] = {}
    for (dataset, base, method), group in sorted(runs.items()):
        point = (method, group[0].metrics["inserted_params"],
                 sum(r.metrics["test_top1"] for r in group) / len(group))
        curves.setdefault(dataset, {}).setdefault(base, []).append(point)
    return {d: {b: p for b, p in by.items() if len(p) > 1} for d, by in curves.items()
            if any(len(p) > 1 for p in by.values())}


def _figures(built: dict[str, Table], overlaps: dict, roles: dict[str, str], out: Path,
             curves: dict[str, dict[str, list]]) -> list[Path]:
    made = [figures.plot_variant_curves(by_method, f"{dataset}: accuracy of each method's variants",
                                        out / f"variants_{dataset}.png") for dataset, by_method in curves.items()]
    if "vtab1k" in built:
        made += [figures.plot_accuracy_vs_params(built["vtab1k"], out / "accuracy_vs_params.png"),
                 figures.plot_group_means(built["vtab1k"], out / "group_means.png")]
    gain = figures.plot_gain_over_linear(_task_scores(built), roles, out / "gain_over_linear.png")
    made += [gain] if gain else []
    if "wise" in built:
        made.append(figures.plot_wise(built["wise"], out / "wise.png"))
    for (dataset, name), counts in overlaps.items():
        made.append(figures.plot_overlap(counts, f"{dataset} / {name}: prediction overlap",
                                         out / f"overlap_{dataset}_{name}.png"))
    return made


def report(tracking_uri: str, experiment: str, out: Path, compare_to: Source | None = None,
           top_k: int = 1000) -> dict:
    """Write every table and figure of ``experiment`` under ``out``; returns a summary with
    ``rows`` (VTAB-1K methods), ``datasets`` (others), ``tables``, ``figures``, ``missing``.

    ``compare_to``: another study folder or (tracking URI, experiment); its VTAB-1K, datasets,
    many-shot and domain-shift tables give Δ (ours − theirs) columns. ``top_k``: K of the
    prediction-overlap analysis."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    study = load_records(tracking_uri, experiment)
    finished = bool(study.finished_finals())
    theirs = None
    if compare_to is not None:
        other_uri, other_experiment = resolve(compare_to)
        theirs = (build_tables(load_records(other_uri, other_experiment)), f"'{other_experiment}'")
    built = build_tables(study) if finished else {}
    if theirs:
        built = {name: with_deltas(t, theirs[0].get(name, Table(name, [])), theirs[1])
                 if name in COMPARED or name.startswith("manyshot_") else t for name, t in built.items()}
    overlap, overlaps = overlap_table(study, top_k) if finished else (None, {})
    budget = tables.budget_table(study)
    written = [t for t in [*built.values(), overlap, budget] if t is not None]
    for table in written:
        write_table(table, out)
    made = _figures(built, overlaps, {r.method: r.role for r in study.records}, out, _variant_curves(study))
    missing = [] if finished else ["every cell: no finished final runs yet"]
    missing += [line for table in written for line in table.missing]
    running = study.running()
    if running:
        missing.append(f"still running: {running} runs (not in the tables)")
    (out / "missing.txt").write_text("".join(f"{line}\n" for line in missing))
    vtab = built.get("vtab1k")
    return {"rows": len(vtab.rows) if vtab else 0, "missing": missing,
            "datasets": sorted({r.dataset for r in study.records if r.vtab_group is None}),
            "tables": [t.name for t in written], "figures": [p.name for p in made]}
