"""Import the study's released results (PETL_Vision ``tune_output``) into our MLflow layout.

``<experiment>/<dataset>/<task>/<method>/{tune_summary.csv, final_result.json, final_summary.csv}``
becomes one parent run per (task, method), one ``phase=tune`` child per tuning row and one
``phase=final`` child per final run, so reports and comparisons read the paper's numbers the
way they read our own studies. ``param_set`` is parsed with ``ast.literal_eval``, never ``eval``.
"""
from __future__ import annotations

import ast
import csv
import json
import time
from pathlib import Path

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from ..mlflow_layout import (BACKBONE, CELL, DATASET, METHOD, PARENT, PHASE, PHASE_CELL, PHASE_FINAL, PHASE_TUNE,
                             STUDY, get_experiment_id)

_TUNE_METRICS = ("train_loss", "train_top1", "train_top5", "val_loss", "val_top1", "val_top5")
_FINAL_METRICS = ("train_loss", "train_top1", "train_top5", "test_loss", "test_top1", "test_top5")


def _rows(path: Path) -> list[list[tuple[int, dict]]]:
    """CSV rows with their line numbers, in blocks: a repeated header starts a new block (the
    study appends one block per re-run of the final config)."""
    blocks: list[list[tuple[int, dict]]] = []
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = None
        for line, row in enumerate(reader, start=1):
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
        raise ValueError(f"{path}:{line}: param_set is not a dict literal: {text[:60]!r}") from None
    if not isinstance(params, dict):
        raise ValueError(f"{path}:{line}: param_set is not a dict literal: {text[:60]!r}")
    return params


def _read_cell(folder: Path) -> dict:
    result_path = folder / "final_result.json"
    try:
        result = json.loads(result_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        where = f":{err.lineno}" if isinstance(err, json.JSONDecodeError) else ""
        raise ValueError(f"{result_path}{where}: unreadable final result ({type(err).__name__})") from None
    tune_path, final_path = folder / "tune_summary.csv", folder / "final_summary.csv"
    tune = [(_params(tune_path, line, row.get("param_set", "")),
             {k: _number(tune_path, line, row, k) for k in _TUNE_METRICS})
            for block in _rows(tune_path) for line, row in block]
    blocks = _rows(final_path) if final_path.is_file() else []
    finals = [{k: _number(final_path, line, row, k) for k in _FINAL_METRICS} | {"seed": row.get("run_idx", "0")}
              for line, row in (blocks[-1] if blocks else [])]
    return {"result": result, "tune": tune, "finals": finals}


def import_petl(root: Path, tracking_uri: str, experiment: str, backbone: str = "vit_b16_in21k") -> dict:
    """Import every cell under ``root``; returns {cell: number of runs written}."""
    folders = sorted(p.parent for p in Path(root).rglob("final_result.json"))
    if not folders:
        raise ValueError(f"{root}: no <experiment>/<dataset>/<task>/<method>/final_result.json found")
    cells = {f"{f.parent.name}/{f.name}": _read_cell(f) for f in folders}  # read all before writing
    client = MlflowClient(tracking_uri)
    experiment_id = get_experiment_id(client, experiment, None)
    written = {}
    now = int(time.time() * 1000)
    for cell, data in cells.items():
        task, method = cell.split("/")
        base = {STUDY: experiment, DATASET: task, METHOD: method, BACKBONE: backbone, CELL: cell,
                "source": "petl_vision"}
        parent = client.create_run(experiment_id, run_name=cell, tags={**base, PHASE: PHASE_CELL}).info.run_id
        for params, metrics in data["tune"]:
            run = client.create_run(experiment_id, tags={**base, PHASE: PHASE_TUNE, PARENT: parent})
            client.log_batch(run.info.run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                             params=[Param("method", method)] + [Param(k, str(v)) for k, v in params.items()])
            client.set_terminated(run.info.run_id)
        for final in data["finals"]:
            run = client.create_run(experiment_id, tags={**base, PHASE: PHASE_FINAL, PARENT: parent})
            client.log_batch(run.info.run_id, params=[Param("method", method), Param("seed", final.pop("seed"))]
                             + [Param(k, str(v)) for k, v in data["result"].get("best_tune", {}).items()],
                             metrics=[Metric(k, v, now, 0) for k, v in final.items()]
                             + [Metric("inserted_params", float(data["result"].get("inserted_parameters", 0)), now, 0)])
            client.set_terminated(run.info.run_id)
        summary = [Metric("test_top1_mean", float(data["result"]["avg_acc"]), now, 0)] if "avg_acc" in data["result"] else []
        client.log_batch(parent, metrics=summary)
        client.set_terminated(parent)
        written[cell] = 1 + len(data["tune"]) + len(data["finals"])
    return written
