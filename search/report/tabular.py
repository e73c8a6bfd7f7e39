"""One table type and one writer: every report table is a ``Table`` written as CSV, Markdown and
LaTeX by ``write_table``, and ``with_deltas`` adds ours − theirs columns for ``--compare-to``.

A score is a mean over seeds with its std (more than one seed) and a ``partial`` flag (a mean over
only some of what it should cover). ``None`` is missing: CSV leaves the field empty, Markdown and
LaTeX say ``missing``; it is never written as zero.
"""
from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple


class Score(NamedTuple):
    mean: float
    std: float | None = None
    partial: bool = False
    covers: frozenset[str] | None = None  # a mean of other columns: the leaf columns it averages


def score(values: list[float]) -> Score | None:
    """Mean ± std (std only over more than one value); ``None`` when there is nothing."""
    if not values:
        return None
    return Score(statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None)


def mean_score(scores: dict[str, Score | None], expected: int) -> Score | None:
    """The mean of the scores present (by column key), flagged partial when fewer than
    ``expected`` are present or one of them is itself partial."""
    present = {k: s for k, s in scores.items() if s is not None}
    if not present:
        return None
    covers = frozenset().union(*(s.covers or {k} for k, s in present.items()))
    partial = len(present) < expected or any(s.partial for s in present.values())
    return Score(statistics.mean(s.mean for s in present.values()), partial=partial, covers=covers)


@dataclass
class Column:
    key: str
    title: str
    kind: str = "score"  # text (identifies the row) | score | delta | int | float


@dataclass
class Table:
    name: str  # the file stem
    columns: list[Column]
    rows: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""
    missing: list[str] = field(default_factory=list)  # what the table lacks, one line each

    def keys(self, row: dict) -> tuple:
        return tuple(row.get(c.key) for c in self.columns if c.kind == "text")


def _csv_value(kind: str, value: Any) -> Any:
    if value is None:
        return ""
    if kind == "score":
        return round(value.mean, 4)
    return round(value, 4) if kind in ("float", "delta") else value


def _text(kind: str, value: Any) -> str:
    if value is None:
        return "missing"
    if kind == "score":
        return (f"{value.mean:.2f}" + (f" ± {value.std:.2f}" if value.std is not None else "")
                + ("*" if value.partial else ""))
    if kind == "delta":
        return f"{value:+.2f}"
    if kind == "int":
        return f"{value:,}"
    if kind == "float":
        return f"{value:.1f}"
    return str(value)


def _tex(text: str) -> str:
    for plain, escaped in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("#", r"\#"),
                           ("_", r"\_"), ("±", r"$\pm$"), ("Δ", r"$\Delta$"), ("−", "-")):
        text = text.replace(plain, escaped)
    return text


def write_table(table: Table, out: Path) -> list[Path]:
    """``<name>.csv`` (plain numbers; ``<key>_std`` columns and a ``partial`` column when used),
    ``<name>.md`` and ``<name>.tex`` (mean ± std, ``*`` on a partial mean, ``missing``)."""
    scores = [c.key for c in table.columns if c.kind == "score"]
    stds = [k for k in scores if any(r.get(k) is not None and r[k].std is not None for r in table.rows)]
    flagged = any(r.get(k) is not None and r[k].partial for r in table.rows for k in scores)
    paths = [out / f"{table.name}.{ext}" for ext in ("csv", "md", "tex")]
    with paths[0].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([c.key for c in table.columns] + [f"{k}_std" for k in stds] + (["partial"] if flagged else []))
        for r in table.rows:
            partial = ";".join(k for k in scores if r.get(k) is not None and r[k].partial)
            writer.writerow([_csv_value(c.kind, r.get(c.key)) for c in table.columns]
                            + [round(r[k].std, 4) if r.get(k) is not None and r[k].std is not None else ""
                               for k in stds] + ([partial] if flagged else []))
    titles = [c.title for c in table.columns]
    body = [[_text(c.kind, r.get(c.key)) for c in table.columns] for r in table.rows]
    md = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)] + ["| " + " | ".join(b) + " |" for b in body]
    paths[1].write_text("\n".join(md) + (f"\n\n{table.note}" if table.note else "") + "\n")
    align = "".join("l" if c.kind == "text" else "r" for c in table.columns)
    tex = [rf"\begin{{tabular}}{{{align}}}", " & ".join(map(_tex, titles)) + r" \\ \hline"]
    tex += [" & ".join(map(_tex, b)) + r" \\" for b in body] + [r"\end{tabular}"]
    paths[2].write_text("\n".join(tex) + "\n")
    return paths


def with_deltas(ours: Table, theirs: Table, label: str) -> Table:
    """``ours`` with a ``<key>_delta`` column (ours − theirs) after each score column; rows are
    matched on the text columns. A delta is missing where either side is, and for a mean whose
    two sides average different columns (a group mean over other tasks is no comparison)."""
    index = {theirs.keys(r): r for r in theirs.rows}
    columns: list[Column] = []
    for c in ours.columns:
        columns.append(c)
        if c.kind == "score":
            columns.append(Column(f"{c.key}_delta", f"Δ {c.title}", "delta"))
    rows = []
    for r in ours.rows:
        other = index.get(ours.keys(r), {})
        deltas = {f"{c.key}_delta": r[c.key].mean - other[c.key].mean for c in ours.columns
                  if c.kind == "score" and r.get(c.key) is not None and other.get(c.key) is not None
                  and r[c.key].covers == other[c.key].covers}
        rows.append({**r, **deltas})
    note = (ours.note + "\n\n" if ours.note else "") + (f"Δ columns: ours − {label}; a Δ of a mean is given only "
                                                          "where both average the same columns.")
    return replace(ours, columns=columns, rows=rows, note=note)
