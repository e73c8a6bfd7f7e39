"""MLflow layout of a study (SPEC section 7), written by a Ray Tune callback in the driver.

One experiment per study; one parent run per cell (``phase=cell``); one child run per trial
(``phase=tune`` or ``phase=final``) with per-epoch metrics, the resolved config and, for final
runs, the adapter. Run ids are kept in the study folder so a resumed driver continues the same
runs instead of opening new ones.
"""
from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from peft_core.checkpoint import adapter_from_checkpoint

from ..mlflow_layout import get_experiment_id
from ..study_folder import FAILED, MLFLOW_RUNS, read_json, write_json
from ..study import Cell, Study
from .outcome import MLFLOW_STATUS, decide

EPOCH_METRICS = ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "test_loss",
                 "test_top1", "test_top5", "lr")


class StudyTracker(Callback):
    def __init__(self, study: Study, study_dir: Path, tracking_uri: str) -> None:
        self.study, self.study_dir, self.uri = study, Path(study_dir), tracking_uri
        self._client: MlflowClient | None = None

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_client"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._client = None

    # -- run bookkeeping ---------------------------------------------------------------------
    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.uri)
        return self._client

    def _runs(self) -> dict:
        return read_json(self.study_dir / MLFLOW_RUNS, {"experiment_id": None, "cells": {}, "trials": {}})

    def _save_runs(self, runs: dict) -> None:
        write_json(self.study_dir / MLFLOW_RUNS, runs)

    def setup(self, **info) -> None:
        runs = self._runs()
        local_artifacts = None if self.uri.startswith(("http", "databricks")) else self.study_dir / "mlartifacts"
        runs["experiment_id"] = get_experiment_id(self.client, self.study.experiment, local_artifacts)
        for cell in self.study.cells():
            if cell.id in runs["cells"]:
                continue
            run = self.client.create_run(runs["experiment_id"], run_name=cell.id, tags={
                "study": self.study.name, "dataset": cell.dataset, "method": cell.method,
                "backbone": self.study.backbone, "phase": "cell", "cell": cell.id})
            runs["cells"][cell.id] = run.info.run_id
        self._save_runs(runs)

    # -- Tune callback hooks -----------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        runs = self._runs()
        config = trial.config
        if trial.trial_id in runs["trials"]:  # resumed: continue the same run
            self.client.update_run(runs["trials"][trial.trial_id], status="RUNNING")
            return
        cell = config["cell"]
        parsed = Cell.parse(cell)
        dataset, method = parsed.dataset, parsed.method
        tags = {"mlflow.parentRunId": runs["cells"][cell], "study": self.study.name, "cell": cell,
                "dataset": dataset, "method": method, "backbone": self.study.backbone,
                "phase": config["phase"], "trial_id": trial.trial_id}
        run = self.client.create_run(runs["experiment_id"], run_name=f"{cell} {trial.trial_id}", tags=tags)
        run_id = run.info.run_id
        # Every training setting and hyper-parameter, not only the searched ones, so MLflow's
        # compare view and parallel-coordinates plot line a cell's trials up on all of them.
        settings = {k: v for k, v in config["train"].items() if k != "hp"}
        params = {**settings, **config["train"]["hp"], "method": method, **config["params"]}
        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.yaml"
            path.write_text(yaml.safe_dump(config["train"], sort_keys=True))
            self.client.log_artifact(run_id, str(path))
        runs["trials"][trial.trial_id] = run_id
        self._save_runs(runs)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        run_id = self._runs()["trials"].get(trial.trial_id)
        if run_id is None:
            return
        now, step = int(time.time() * 1000), int(result.get("epoch", 0))
        metrics = [Metric(k, float(result[k]), now, step) for k in EPOCH_METRICS if k in result]
        self.client.log_batch(run_id, metrics=metrics)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._finish(trial, error=False)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._finish(trial, error=True)

    def _finish(self, trial, error: bool) -> None:
        runs = self._runs()
        run_id = runs["trials"].get(trial.trial_id)
        if run_id is None or self.client.get_run(run_id).info.status in ("FINISHED", "FAILED", "KILLED"):
            return  # finished before a resume: nothing to add
        result = trial.last_result or {}
        config = trial.config
        epochs = int(result.get("epoch", 0))
        state = decide(error=error or bool(result.get("diverged")), epochs=epochs,
                       planned_epochs=config["train"]["epoch"], early_stopped=bool(result.get("early_stopped")))
        final_metrics = {"inserted_params": result.get("inserted_params"), "epochs_run": epochs,
                         "trial_seconds": result.get("trial_seconds")}
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, epochs)
                                               for k, v in final_metrics.items() if v is not None])
        self.client.set_tag(run_id, "state", state)
        if config["phase"] == "final" and state != FAILED and trial.checkpoint is not None:
            with tempfile.TemporaryDirectory() as tmp, trial.checkpoint.as_directory() as folder:
                meta = {"method": config["train"]["method"], "hp": config["train"]["hp"],
                        "backbone": config["train"]["backbone"]}
                adapter = adapter_from_checkpoint(Path(folder), Path(tmp) / "adapter.safetensors", meta)
                self.client.log_artifact(run_id, str(adapter))
                if (Path(folder) / "predictions_test.npz").is_file():  # train: {save_predictions: true}
                    kept = shutil.copy(Path(folder) / "predictions_test.npz", Path(tmp) / "test.npz")
                    self.client.log_artifact(run_id, str(kept), "predictions")
        self.client.set_terminated(run_id, MLFLOW_STATUS[state])
        if config["phase"] == "final":
            self._maybe_close_cell(config["cell"], runs)

    def _maybe_close_cell(self, cell: str, runs: dict) -> None:
        """When every final run of a cell is in, summarise it on the cell's parent run."""
        finals = self.client.search_runs(
            [runs["experiment_id"]], filter_string=f"tags.cell = '{cell}' and tags.phase = 'final'")
        done = [r for r in finals if r.info.status == "FINISHED"]
        if len(done) < len(self.study.final.seeds):
            return
        scores = [r.data.metrics["test_top1"] for r in done if "test_top1" in r.data.metrics]
        parent = runs["cells"][cell]
        metrics = {"test_top1_mean": statistics.mean(scores)} if scores else {}
        if len(scores) > 1:
            metrics["test_top1_std"] = statistics.stdev(scores)
        now = int(time.time() * 1000)
        self.client.log_batch(parent, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                              params=[Param(f"best.{k}", str(v)) for k, v in done[0].data.params.items()
                                      if k != "seed"],
                              tags=[RunTag("selected_trial", done[0].data.tags.get("trial_id", ""))])
        self.client.set_terminated(parent, "FINISHED")
