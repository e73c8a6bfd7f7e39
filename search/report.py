"""The study's comparison tables and figures, read from MLflow final runs.

VTAB-1K: a row per method, a column per task, the three group means, both overall conventions
(mean of the three group means; mean of the tasks) in separately named columns, inserted
parameters and rank. Group means over a partial row use only the tasks present and are flagged.
Other datasets get a plain per-dataset table. Missing cells show as missing, never as zero.
"""
from __future__ import annotations

import csv
import statistics
from pathlib import Path

from mlflow.tracking import MlflowClient

GROUPS = {
    "natural": ["cifar", "caltech101", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn", "sun397"],
    "specialized": ["patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy"],
    "structured": ["clevr_count", "clevr_dist", "dmlab", "kitti", "dsprites_loc", "dsprites_ori",
                   "smallnorb_azi", "smallnorb_ele"],
}
VTAB_TASKS = [t for tasks in GROUPS.values() for t in tasks]


def _task(name: str) -> str:
    return name.split("-", 1)[1] if name.startswith("processed_vtab-") else name


def final_results(tracking_uri: str, experiment: str) -> dict[tuple[str, str], dict]:
    """{(dataset, method): {"test_top1": [...], "params": n}} from finished phase=final runs."""
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ValueError(f"no MLflow experiment '{experiment}' at {tracking_uri}")
    runs = client.search_runs([found.experiment_id], filter_string="tags.phase = 'final'", max_results=50_000)
    cells: dict[tuple[str, str], dict] = {}
    for run in runs:
        if run.info.status != "FINISHED" or "test_top1" not in run.data.metrics:
            continue
        key = (_task(run.data.tags["dataset"]), run.data.tags["method"])
        cell = cells.setdefault(key, {"test_top1": [], "params": None})
        cell["test_top1"].append(run.data.metrics["test_top1"])
        if "inserted_params" in run.data.metrics:
            cell["params"] = int(run.data.metrics["inserted_params"])
    return cells


def vtab_table(cells: dict) -> list[dict]:
    """Rows of the VTAB-1K table; a group mean over some of its tasks carries ``partial``."""
    methods = sorted({m for (t, m) in cells if t in VTAB_TASKS})
    rows = []
    for method in methods:
        row: dict = {"method": method, "partial": []}
        for task in VTAB_TASKS:
            scores = cells.get((task, method), {}).get("test_top1")
            row[task] = statistics.mean(scores) if scores else None
            row[f"{task}_std"] = statistics.stdev(scores) if scores and len(scores) > 1 else None
        for group, tasks in GROUPS.items():
            present = [row[t] for t in tasks if row[t] is not None]
            row[group] = statistics.mean(present) if present else None
            if present and len(present) < len(tasks):
                row["partial"].append(group)
        groups = [row[g] for g in GROUPS if row[g] is not None]
        tasks = [row[t] for t in VTAB_TASKS if row[t] is not None]
        row["mean_of_groups"] = statistics.mean(groups) if groups else None
        row["mean_of_tasks"] = statistics.mean(tasks) if tasks else None
        row["params"] = next((cells[(t, method)]["params"] for t in VTAB_TASKS
                              if (t, method) in cells and cells[(t, method)]["params"] is not None), None)
        rows.append(row)
    ranked = sorted((r for r in rows if r["mean_of_groups"] is not None), key=lambda r: -r["mean_of_groups"])
    for rank, row in enumerate(ranked, start=1):
        row["rank"] = rank
    return rows


def _fmt(value, std=None) -> str:
    if value is None:
        return "missing"
    return f"{value:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def write_vtab(rows: list[dict], out: Path) -> list[str]:
    """vtab1k.csv / .md / .tex; returns the missing (task, method) cells."""
    tasks = [t for t in VTAB_TASKS if any(r[t] is not None for r in rows)]
    columns = ["method", *tasks, "natural", "specialized", "structured", "mean_of_groups", "mean_of_tasks", "params"]
    with (out / "vtab1k.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in rows:
            writer.writerow([r["method"]] + ["" if r[c] is None else round(r[c], 4) for c in columns[1:-1]]
                            + ["" if r["params"] is None else r["params"]])
    header = ["method", *tasks, "Natural", "Specialized", "Structured", "mean of 3 groups", "mean of tasks",
              "params", "rank"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    tex = [r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", " & ".join(header) + r" \\ \hline"]
    for r in rows:
        groups = [_fmt(r[g]) + ("*" if g in r["partial"] else "") for g in GROUPS]
        cells = ([r["method"]] + [_fmt(r[t], r[f"{t}_std"]) for t in tasks] + groups
                 + [_fmt(r["mean_of_groups"]), _fmt(r["mean_of_tasks"]),
                    f"{r['params']:,}" if r["params"] is not None else "missing", str(r.get("rank", "-"))])
        lines.append("| " + " | ".join(cells) + " |")
        tex.append(" & ".join(c.replace("±", r"$\pm$").replace("_", r"\_") for c in cells) + r" \\")
    tex.append(r"\end{tabular}")
    note = ("\n\n`mean of 3 groups` averages the Natural, Specialized and Structured means; `mean of tasks` "
            "averages the tasks directly. * marks a group mean over only the tasks present.")
    (out / "vtab1k.md").write_text("\n".join(lines) + note + "\n")
    (out / "vtab1k.tex").write_text("\n".join(tex) + "\n")
    return [f"{t}/{r['method']}" for r in rows for t in tasks if r[t] is None]


def write_other(cells: dict, out: Path) -> list[str]:
    """datasets.csv / .md for datasets outside VTAB-1K (mini-VTAB, many-shot): test top-1 per
    dataset and method, their mean; returns the missing (dataset, method) cells."""
    datasets = sorted({d for d, _ in cells if d not in VTAB_TASKS})
    methods = sorted({m for d, m in cells if d in datasets})
    if not datasets:
        return []
    missing, lines = [], ["| method | " + " | ".join(datasets) + " | mean | params |",
                          "|" + "---|" * (len(datasets) + 3)]
    with (out / "datasets.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", *datasets, "mean", "params"])
        for method in methods:
            scores = [cells.get((d, method), {}).get("test_top1") for d in datasets]
            means = [statistics.mean(s) if s else None for s in scores]
            missing += [f"{d}/{method}" for d, m in zip(datasets, means) if m is None]
            present = [m for m in means if m is not None]
            mean = statistics.mean(present) if present else None
            params = next((cells[(d, method)]["params"] for d in datasets if (d, method) in cells), None)
            writer.writerow([method] + ["" if m is None else round(m, 4) for m in means]
                            + ["" if mean is None else round(mean, 4), "" if params is None else params])
            stds = [statistics.stdev(s) if s and len(s) > 1 else None for s in scores]
            lines.append(f"| {method} | " + " | ".join(_fmt(m, sd) for m, sd in zip(means, stds))
                         + f" | {_fmt(mean)} | {params if params is not None else 'missing'} |")
    (out / "datasets.md").write_text("\n".join(lines) + "\n")
    return missing


def plot_accuracy_vs_params(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    for r in rows:
        if r["mean_of_groups"] is not None and r["params"]:
            ax.scatter(r["params"], r["mean_of_groups"])
            ax.annotate(r["method"], (r["params"], r["mean_of_groups"]), fontsize=8,
                        xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("inserted parameters (log)")
    ax.set_ylabel("VTAB-1K test top-1, mean of 3 groups")
    ax.set_title("Accuracy vs inserted parameters")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def report(tracking_uri: str, experiment: str, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    cells = final_results(tracking_uri, experiment)
    if not cells:
        (out / "missing.txt").write_text("no finished final runs yet\n")
        return {"rows": 0, "missing": ["every cell: no finished final runs yet"]}
    rows = vtab_table(cells)
    missing = (write_vtab(rows, out) if rows else []) + write_other(cells, out)
    if rows:
        plot_accuracy_vs_params(rows, out / "accuracy_vs_params.png")
    (out / "missing.txt").write_text("\n".join(missing) + ("\n" if missing else ""))
    others = sorted({d for d, _ in cells if d not in VTAB_TASKS})
    return {"rows": len(rows), "datasets": others, "missing": missing}
