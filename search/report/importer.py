"""Import the study's released results (PETL_Vision ``tune_output``) into our MLflow layout.

``<experiment>/<dataset>/<task>/<method>/{tune_summary.csv, final_result.json, final_summary.csv}``
becomes one parent run per (task, method), one ``phase=tune`` child per tuning row and one
``phase=final`` child per final run, so reports and comparisons read the paper's numbers the
way they read our own studies. ``param_set`` is parsed with ``ast.literal_eval``, never ``eval``.
"""
from __future__ import annotations

import time
from pathlib import Path

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from ..mlflow_layout import (BACKBONE, CELL, DATASET, METHOD, PARENT, PHASE, PHASE_CELL, PHASE_FINAL, PHASE_TUNE,
                             STUDY, get_experiment_id)
from ..petl_release import read_release


def import_petl(root: Path, tracking_uri: str, experiment: str, backbone: str = "vit_b16_in21k") -> dict:
    """Import every cell under ``root``; returns {cell: number of runs written}."""
    cells = {f"{task}/{method}": cell for (task, method), cell in read_release(root).items()}  # all read before writing
    client = MlflowClient(tracking_uri)
    experiment_id = get_experiment_id(client, experiment, None)
    written = {}
    now = int(time.time() * 1000)
    for cell, data in cells.items():
        task, method = cell.split("/")
        base = {STUDY: experiment, DATASET: task, METHOD: method, BACKBONE: backbone, CELL: cell,
                "source": "petl_vision"}
        parent = client.create_run(experiment_id, run_name=cell, tags={**base, PHASE: PHASE_CELL}).info.run_id
        for params, metrics in data.tune:
            run = client.create_run(experiment_id, tags={**base, PHASE: PHASE_TUNE, PARENT: parent})
            client.log_batch(run.info.run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                             params=[Param("method", method)] + [Param(k, str(v)) for k, v in params.items()])
            client.set_terminated(run.info.run_id)
        for final in map(dict, data.finals):
            run = client.create_run(experiment_id, tags={**base, PHASE: PHASE_FINAL, PARENT: parent})
            client.log_batch(run.info.run_id, params=[Param("method", method), Param("seed", final.pop("seed"))]
                             + [Param(k, str(v)) for k, v in data.result.get("best_tune", {}).items()],
                             metrics=[Metric(k, v, now, 0) for k, v in final.items()]
                             + [Metric("inserted_params", float(data.result.get("inserted_parameters", 0)), now, 0)])
            client.set_terminated(run.info.run_id)
        summary = [Metric("test_top1_mean", float(data.result["avg_acc"]), now, 0)] if "avg_acc" in data.result else []
        client.log_batch(parent, metrics=summary)
        client.set_terminated(parent)
        written[cell] = 1 + len(data.tune) + len(data.finals)
    return written
