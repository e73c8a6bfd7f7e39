"""MLflow layout of a study (SPEC section 7), written by a Ray Tune callback in the driver.

One experiment per study; one parent run per cell (``phase=cell``); one child run per trial
(``phase=tune`` or ``phase=final``) with per-epoch metrics, the resolved config and, for final
runs, the adapter. Run ids are kept in the search state so a resumed driver continues the same
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
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from peft_core.checkpoint import adapter_from_checkpoint

from ..mlflow_layout import STATE, get_experiment_id
from ..study_folder import DONE, FAILED, STUDY_COPY, read_cell_trials, read_mlflow_runs, read_trials, trial_finished
from ..study import Cell, Study
from .cell_summary import draw_search, write_trials_csv
from .outcome import MLFLOW_STATUS, TRIAL_ERROR, decide
from .store import SearchStore

EPOCH_METRICS = ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "test_loss",
                 "test_top1", "test_top5", "lr")


class StudyTracker(Callback):
    def __init__(self, study: Study, study_dir: Path, tracking_uri: str) -> None:
        self.study, self.study_dir, self.uri = study, Path(study_dir), tracking_uri
        self._client: MlflowClient | None = None
        self._store: SearchStore | None = None
        self.runs: dict = {"experiment_id": None, "cells": {}, "trials": {}}  # read at setup
        self.open_runs: set[str] = set()

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("_client", "_store")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._client, self._store = None, None

    # -- run bookkeeping ---------------------------------------------------------------------
    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.uri)
        return self._client

    @property
    def store(self) -> SearchStore:
        if self._store is None:
            self._store = SearchStore(self.study_dir)
        return self._store

    def _remember(self, kind: str, name: str, run_id: str) -> None:
        """Keep a run id in memory and in the search state (a resumed driver continues the run)."""
        if kind == "experiment":
            self.runs["experiment_id"] = run_id
        else:
            self.runs[f"{kind}s"][name] = run_id
        self.store.save_mlflow_run(kind, name, run_id)

    def setup(self, **info) -> None:
        self.runs = read_mlflow_runs(self.study_dir)
        local_artifacts = None if self.uri.startswith(("http", "databricks")) else self.study_dir / "mlartifacts"
        self._remember("experiment", "", get_experiment_id(self.client, self.study.experiment, local_artifacts))
        # The study as it started, as the experiment's description (the UI shows it above the runs).
        frozen = self.study_dir / STUDY_COPY
        if frozen.is_file():
            self.client.set_experiment_tag(self.runs["experiment_id"], "mlflow.note.content",
                                           f"Study `{self.study.name}` ({self.study_dir})\n\n```yaml\n{frozen.read_text()}```")
        # Runs a trial may still finish: after a crash, those left running (one query, not one per trial).
        running = self.client.search_runs([self.runs["experiment_id"]], "attributes.status = 'RUNNING'",
                                          max_results=50000)
        self.open_runs = {run.info.run_id for run in running}
        self._settle_runs_left_open(running)
        for cell in self.study.cells():
            if cell.id in self.runs["cells"]:
                continue
            run = self.client.create_run(self.runs["experiment_id"], run_name=cell.id, tags={
                "study": self.study.name, "dataset": cell.dataset, "method": cell.method,
                "backbone": self.study.backbone, "phase": "cell", "cell": cell.id})
            self._remember("cell", cell.id, run.info.run_id)

    def _settle_runs_left_open(self, running: list) -> None:
        """Trial runs a crash left running. Deleted: runs of trials the searcher forgot on restore
        (started after Tune's last snapshot; their points went out again as new trials) and runs
        opened just before the crash whose id was never recorded (Tune runs the trial again
        under a new one). Finished from the record: runs of trials the searcher saw end.
        Tune restores the searcher before it sets callbacks up, so the search state is final."""
        records = read_trials(self.study_dir)
        for run in running:
            trial_id, run_id = run.data.tags.get("trial_id"), run.info.run_id
            if trial_id is None:
                continue  # a cell's run
            record = records.get(trial_id)
            if record is None or self.runs["trials"].get(trial_id) != run_id:
                self.client.set_terminated(run_id, "KILLED")
                self.client.delete_run(run_id)
            elif record["status"] in DONE:
                now = int(time.time() * 1000)
                # Its per-epoch metrics went in as they came; only the end is missing.
                metrics = {"epochs_run": record["epochs"], "trial_seconds": record["seconds"]}
                self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, record["epochs"])
                                                       for k, v in metrics.items() if v is not None],
                                      tags=[RunTag(STATE, record["status"])])
                self.client.set_terminated(run_id, MLFLOW_STATUS[record["status"]])
            else:
                continue
            self.open_runs.discard(run_id)

    # -- Tune callback hooks -----------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        runs = self.runs
        config = trial.config
        if trial.trial_id in runs["trials"]:  # resumed or retried: continue the same run
            run_id = runs["trials"][trial.trial_id]
            # A trial that ended before a crash is started again by Tune only to return at once.
            if run_id not in self.open_runs and not trial_finished(self.study_dir, trial.trial_id):
                self.client.update_run(run_id, status="RUNNING")
                self.open_runs.add(run_id)
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
            # The store of the run just created, without asking the tracking server for it again.
            get_artifact_repository(run.info.artifact_uri, tracking_uri=self.uri).log_artifact(str(path))
        self._remember("trial", trial.trial_id, run_id)
        self.open_runs.add(run_id)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        run_id = self.runs["trials"].get(trial.trial_id)
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
        runs = self.runs
        run_id = runs["trials"].get(trial.trial_id)
        if run_id not in self.open_runs:
            return  # finished before a resume: nothing to add
        result = trial.last_result or {}
        config = trial.config
        epochs = int(result.get("epoch", 0))
        state = decide(error=error or bool(result.get(TRIAL_ERROR)), epochs=epochs,
                       planned_epochs=config["train"]["epoch"], early_stopped=bool(result.get("early_stopped")))
        final_metrics = {"inserted_params": result.get("inserted_params"), "epochs_run": epochs,
                         "trial_seconds": result.get("trial_seconds")}
        now = int(time.time() * 1000)
        tags = [RunTag("state", state)] + [RunTag(key, str(result[key])[:5000]) for key in ("note", TRIAL_ERROR)
                                           if result.get(key)]
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, epochs)
                                               for k, v in final_metrics.items() if v is not None], tags=tags)
        if result.get("traceback"):
            self.client.log_text(run_id, result["traceback"], "error.txt")
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
        self.open_runs.discard(run_id)
        if config["phase"] == "final":
            self._maybe_close_cell(config["cell"], runs)

    def _maybe_close_cell(self, cell: str, runs: dict) -> None:
        """When every final run of a cell is in, summarise it on the cell's parent run: the test
        score over seeds, the selected tuning trial's metrics and parameters (so the runs table
        lines the cell up with its trials), its trials as a CSV and its search as a PNG."""
        finals = self.client.search_runs(
            [runs["experiment_id"]], filter_string=f"tags.cell = '{cell}' and tags.phase = 'final'")
        done = [r for r in finals if r.info.status == "FINISHED"]
        if len(done) < len(self.study.final.seeds):
            return
        scores = [r.data.metrics["test_top1"] for r in done if "test_top1" in r.data.metrics]
        parent = runs["cells"][cell]
        records = read_cell_trials(self.study_dir, cell)
        chosen = {r["selected_from"] for r in records if r["phase"] == "final"}
        selected = next((r for r in records if r["trial_id"] in chosen), None)
        metrics = dict(selected["metrics"]) if selected else {}
        if scores:
            metrics["test_top1_mean"] = statistics.mean(scores)
        if len(scores) > 1:
            metrics["test_top1_std"] = statistics.stdev(scores)
        now = int(time.time() * 1000)
        self.client.log_batch(parent, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                              params=[Param(k, str(v)) for k, v in done[0].data.params.items() if k != "seed"],
                              tags=[RunTag("selected_trial", selected["trial_id"] if selected else "")])
        with tempfile.TemporaryDirectory() as tmp:
            self.client.log_artifact(parent, str(write_trials_csv(records, Path(tmp) / "trials.csv")))
            self.client.log_artifact(parent, str(draw_search(
                records, self.study.search.metric, selected["trial_id"] if selected else None,
                f"{cell}: {self.study.search.metric} per tuning trial", Path(tmp) / "search.png")))
        self.client.set_terminated(parent, "FINISHED")
