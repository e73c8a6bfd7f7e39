"""The report's figures (PNG). Drawn on ``matplotlib.figure.Figure`` with the Agg canvas: no pyplot,
no global backend switch, no window. Every figure has a fixed pixel size (inches × 100 dpi).
"""
from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .datasets import GROUPS
from .tabular import Table

DPI = 100


def _figure(width: float, height: float):
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _once(ax, label: str) -> str | None:
    """``label`` the first time it is drawn, so the legend lists it once."""
    return None if label in ax.get_legend_handles_labels()[1] else label


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    return path


def _finish(fig: Figure, ax, path: Path, title: str, ylabel: str, categories: list[str] | None = None,
            grid: str | None = "both") -> Path:
    """The common end of every plot: category ticks, labels, grid, legend (if any), saved PNG."""
    if categories is not None:
        ax.set_xticks(range(len(categories)), categories, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if grid:
        ax.grid(axis=grid, alpha=0.3)
    _legend(ax)
    return _save(fig, path)


def plot_variant_curves(curves: dict[str, list[tuple[str, float, float]]], title: str, path: Path) -> Path:
    """Test top-1 against inserted parameters (log) of a method's cells on one dataset, one line
    per method: the study's rank curves (lora_1 ... lora_256). ``curves``: {method: [(cell's
    method, parameters, top-1), ...]}."""
    fig, ax = _figure(8, 5)
    for method, points in sorted(curves.items()):
        points = sorted(points, key=lambda p: p[1])
        ax.plot([p[1] for p in points], [p[2] for p in points], marker="o", label=method)
        for name, params, top1 in points:
            ax.annotate(name, (params, top1), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("inserted parameters (log)")
    return _finish(fig, ax, path, title, "test top-1 (mean over seeds)")


def plot_accuracy_vs_params(vtab: Table, path: Path) -> Path:
    """Mean of the three group means against inserted parameters (log scale), one point a method."""
    fig, ax = _figure(8, 5)
    for r in vtab.rows:
        if r["mean_of_groups"] is not None and r["params"]:
            ax.scatter(r["params"], r["mean_of_groups"].mean)
            ax.annotate(r["method"], (r["params"], r["mean_of_groups"].mean), fontsize=8,
                        xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("inserted parameters (log, mean over tasks)")
    return _finish(fig, ax, path, "Accuracy vs inserted parameters", "VTAB-1K test top-1, mean of 3 groups")


def _with_role(methods: dict[str, float], roles: dict[str, str], role: str) -> list[float]:
    """The scores of the methods whose role (``peft_core.registry.role_of``) is ``role``."""
    return [score for method, score in methods.items() if roles.get(method) == role]


def plot_gain_over_linear(scores: dict[str, dict[str, float]], roles: dict[str, str], path: Path) -> Path | None:
    """Per task, accuracy minus linear probing (the method whose role is ``linear_probe``): the range
    over PEFT methods (min–max bar, a dot per method, a tick at their mean) and full fine-tuning (a
    diamond) — the paper's Figure 1a. ``scores``: {task: {method: top-1}}, ``roles``: {method: role};
    tasks without linear probing are left out. None when no task has linear probing and another method."""
    bases = {t: probe[0] for t, s in scores.items() if (probe := _with_role(s, roles, "linear_probe"))}
    if not any(len(scores[t]) > 1 for t in bases):
        return None
    fig, ax = _figure(10, 5)
    tasks = list(bases)
    for x, task in enumerate(tasks):
        base = bases[task]
        gains = [v - base for v in _with_role(scores[task], roles, "peft")]
        if gains:
            ax.bar(x, max(gains) - min(gains), 0.5, bottom=min(gains), color="tab:blue", alpha=0.4,
                   label=_once(ax, "PEFT range (min–max)"))
            ax.scatter([x] * len(gains), gains, s=10, color="tab:blue", label=_once(ax, "PEFT methods"))
            ax.scatter(x, sum(gains) / len(gains), marker="_", s=500, color="tab:blue", label=_once(ax, "PEFT mean"))
        for full in _with_role(scores[task], roles, "full_finetune"):
            ax.scatter(x, full - base, marker="D", color="tab:red", zorder=3, label=_once(ax, "full fine-tuning"))
    ax.axhline(0, color="black", linewidth=0.8)
    ax.use_sticky_edges = False  # zero-height ranges must not pin the limits
    ax.margins(y=0.1)
    return _finish(fig, ax, path, "Gain over linear probing per task", "test top-1 gain over linear probing",
                   categories=tasks, grid="y")


def plot_group_means(vtab: Table, path: Path) -> Path:
    """Natural / Specialized / Structured means per method; hatched where the mean is partial."""
    fig, ax = _figure(10, 5)
    width = 0.8 / len(GROUPS)
    for i, group in enumerate(GROUPS):
        for x, r in enumerate(vtab.rows):
            if r[group] is not None:
                ax.bar(x + (i - 1) * width, r[group].mean, width, color=f"C{i}",
                       hatch="//" if r[group].partial else None, label=_once(ax, group.capitalize()))
    return _finish(fig, ax, path, "Group means per method", "VTAB-1K test top-1 (hatched: over part of the group)",
                   categories=[r["method"] for r in vtab.rows], grid="y")


def plot_wise(wise: Table, path: Path) -> Path:
    """ImageNet top-1 against the OOD mean along α, one line per method (the paper's Figure 1c);
    the α = 0 end (zero-shot) is a circle, the α = 1 end (fine-tuned) a square."""
    fig, ax = _figure(8, 6)
    one_dataset = len({r["dataset"] for r in wise.rows}) == 1
    lines: dict[str, list[dict]] = {}
    for r in wise.rows:
        if r["imagenet"] is not None and r["ood_mean"] is not None:
            lines.setdefault(r["method"] if one_dataset else f"{r['dataset']}/{r['method']}", []).append(r)
    for i, (label, points) in enumerate(sorted(lines.items())):
        xs, ys = [p["imagenet"].mean for p in points], [p["ood_mean"].mean for p in points]
        ax.plot(xs, ys, "-", color=f"C{i}", label=label, marker=".")
        for p, x, y in zip(points, xs, ys):
            if p["alpha"] in ("0.0", "1.0"):
                ax.plot(x, y, "o" if p["alpha"] == "0.0" else "s", color=f"C{i}")
    ax.set_xlabel("ImageNet top-1")
    return _finish(fig, ax, path, "WiSE: zero-shot (○, α=0) to fine-tuned (□, α=1)",
                   "OOD mean top-1 (V2, Sketch, R, A)")


def plot_overlap(counts: dict[str, dict], title: str, path: Path) -> Path:
    """Stacked bars per method: of its K most confident correct predictions, how many are shared
    with every other method, with some, or unique to it."""
    fig, ax = _figure(8, 5)
    methods = list(counts)
    bottom = [0] * len(methods)
    for i, part in enumerate(("shared_with_all", "shared_with_some", "unique")):
        values = [counts[m][part] for m in methods]
        ax.bar(methods, values, bottom=bottom, color=f"C{i}", label=part.replace("_", " "))
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    return _finish(fig, ax, path, title, f"of the K = {counts[methods[0]]['k'] if methods else 0} most confident "
                   "correct", grid=None)
