"""The study's released results: a PETL_Vision ``tune_output`` tree, read and checked.

``<experiment>/<dataset>/<task>/<method>/`` holds ``tune_summary.csv`` (one row per tuning run:
``param_set`` and the last epoch's metrics), ``final_result.json`` (``best_tune``, ``avg_acc``)
and ``final_summary.csv`` (the final runs; one block per re-run, the last one counts). The
importer writes it into our MLflow layout; ``simulate`` replays a study on it. ``param_set`` is
parsed with ``ast.literal_eval``, never ``eval``.
"""
from __future__ import annotations

import ast
import csv
import json
from dataclasses import dataclass
from pathlib import Path

TUNE_METRICS = ("train_loss", "train_top1", "train_top5", "val_loss", "val_top1", "val_top5")
FINAL_METRICS = ("train_loss", "train_top1", "train_top5", "test_loss", "test_top1", "test_top5")


@dataclass(frozen=True)
class ReleasedCell:
    """One (task, method) of the release."""

    folder: Path
    result: dict  # final_result.json
    tune: tuple[tuple[dict, dict[str, float]], ...]  # (param_set, metrics) per tuning row, file order
    finals: tuple[dict[str, float | str], ...]  # the last block of final_summary.csv; "seed" is its run_idx

    @property
    def best_tune(self) -> dict:
        return self.result.get("best_tune", {})


def point_key(params: dict) -> str:
    """A point's identity across YAML and the release: numbers compared as floats (``8`` is
    ``8.0``, ``1.0e-3`` is ``0.001``), keys sorted."""
    def norm(value):
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    return json.dumps({k: norm(v) for k, v in sorted(params.items())}, default=str)


def task_of(dataset: str) -> str:
    """The release's task folder of a study dataset (``processed_vtab-dtd`` is ``dtd``)."""
    return dataset.split("-", 1)[1] if dataset.startswith("processed_vtab-") else dataset


def _rows(path: Path) -> list[list[tuple[int, dict]]]:
    """CSV rows with their line numbers, in blocks: a repeated header starts a new block (the
    study appends one block per re-run of the final config)."""
    blocks: list[list[tuple[int, dict]]] = []
    with path.open(newline="") as f:
        header = None
        for line, row in enumerate(csv.reader(f), start=1):
            if not row:
                continue
            if header is None or row == header:
                header = row
                blocks.append([])
                continue
            if len(row) != len(header):
                raise ValueError(f"{path}:{line}: expected {len(header)} fields, got {len(row)}")
            blocks[-1].append((line, dict(zip(header, row))))
    return blocks


def _number(path: Path, line: int, row: dict, key: str) -> float:
    try:
        return float(row[key])
    except (KeyError, ValueError):
        raise ValueError(f"{path}:{line}: '{key}' is missing or not a number") from None


def _params(path: Path, line: int, text: str) -> dict:
    try:
        params = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        params = None
    if not isinstance(params, dict):
        raise ValueError(f"{path}:{line}: param_set is not a dict literal: {text[:60]!r}")
    return params


def read_cell(folder: Path) -> ReleasedCell:
    """One released cell; a malformed file is a one-line ValueError naming the file and line."""
    result_path = folder / "final_result.json"
    try:
        result = json.loads(result_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        where = f":{err.lineno}" if isinstance(err, json.JSONDecodeError) else ""
        raise ValueError(f"{result_path}{where}: unreadable final result ({type(err).__name__})") from None
    tune_path, final_path = folder / "tune_summary.csv", folder / "final_summary.csv"
    if not tune_path.is_file():
        raise ValueError(f"{tune_path}: missing")
    tune = tuple((_params(tune_path, line, row.get("param_set", "")),
                  {k: _number(tune_path, line, row, k) for k in TUNE_METRICS})
                 for block in _rows(tune_path) for line, row in block)
    blocks = _rows(final_path) if final_path.is_file() else []
    finals = tuple({k: _number(final_path, line, row, k) for k in FINAL_METRICS} | {"seed": row.get("run_idx", "0")}
                   for line, row in (blocks[-1] if blocks else []))
    return ReleasedCell(folder, result, tune, finals)


def read_release(root: Path) -> dict[tuple[str, str], ReleasedCell]:
    """{(task, method): cell} for every cell under ``root``, all read before anything is used."""
    folders = sorted(p.parent for p in Path(root).rglob("final_result.json"))
    if not folders:
        raise ValueError(f"{root}: no <experiment>/<dataset>/<task>/<method>/final_result.json found")
    return {(f.parent.name, f.name): read_cell(f) for f in folders}
