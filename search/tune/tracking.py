"""MLflow layout of a study (SPEC section 7), written by a Ray Tune callback in the driver.

One experiment per study; one parent run per cell (``phase=cell``); one child run per trial
(``phase=tune`` or ``phase=final``) with per-epoch metrics, the resolved config and, for final
runs, the adapter. Run ids are kept in the search state so a resumed driver continues the same
runs instead of opening new ones. Every write goes through ``outbox``: what the tracking server
cannot take while it is away is kept and sent when it is back; away longer than the study's
``mlflow.outage_limit``, the driver stops as on Ctrl-C (the study resumes later).
"""
from __future__ import annotations

import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from peft_core.checkpoint import adapter_from_checkpoint

from ..mlflow_layout import (BACKBONE, BASE_METHOD, CELL, DATASET, METHOD, NOTE, PARENT, PHASE, PHASE_CELL, PHASE_FINAL,
                             STATE, STUDY, TRIAL_ID, get_experiment_id)
from ..study_folder import (DONE, FAILED, STUDY_COPY, count_outbox, read_cell_trials, read_mlflow_runs, read_trials,
                            trial_finished)
from ..study import Cell, Study
from .cell_summary import draw_search, write_trials_csv
from .outbox import Outbox, server_away
from .outcome import MLFLOW_STATUS, TRIAL_ERROR, decide
from .store import SearchStore

OUTAGE_STOP = "mlflow_outage.txt"  # written when the tracker stopped the driver: why, for the CLI
RETRY_SECONDS = 5.0  # while the server is away, how often the outbox tries again
# selected_epoch: whose weights a final run that selects on validation tested (CLIP's recipe)
EPOCH_METRICS = ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "test_loss",
                 "test_top1", "test_top5", "lr", "selected_epoch")


def run_params(cell: str, train: dict, params: dict) -> dict[str, str]:
    """A trial run's parameters: every training setting and hyper-parameter, not only the
    searched ones, so MLflow's compare view and parallel-coordinates plot line a cell's trials
    up on all of them."""
    settings = {k: v for k, v in train.items() if k != "hp"}
    return {k: str(v) for k, v in {**settings, **train["hp"], "method": Cell.parse(cell).method, **params}.items()}


class StudyTracker(Callback):
    def __init__(self, study: Study, study_dir: Path, tracking_uri: str) -> None:
        self.study, self.study_dir, self.uri = study, Path(study_dir), tracking_uri
        self._client: MlflowClient | None = None
        self._store: SearchStore | None = None
        self.runs: dict = {"experiment_id": None, "cells": {}, "trials": {}}  # read at setup
        self.open_trials: set[str] = set()  # trials whose run may still get writes
        self.queued = 0  # writes in the outbox
        self.away_since: float | None = None  # the server stopped answering then
        self.last_try = 0.0

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

    @property
    def outbox(self) -> Outbox:
        return Outbox(self.store.conn, self.study_dir)

    def setup(self, **info) -> None:
        # A write waits at most a few retries: while the server is away, the outbox keeps it.
        for name, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"), ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                            ("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")):
            os.environ.setdefault(name, value)
        self.runs = read_mlflow_runs(self.study_dir)
        local_artifacts = None if self.uri.startswith(("http", "databricks")) else self.study_dir / "mlartifacts"
        self._remember("experiment", "", get_experiment_id(self.client, self.study.experiment, local_artifacts))
        self.queued = count_outbox(self.study_dir)
        self.flush()  # what a stopped or killed driver could not send
        # The study as it started, as the experiment's description (the UI shows it above the runs).
        frozen = self.study_dir / STUDY_COPY
        if frozen.is_file():
            self.client.set_experiment_tag(self.runs["experiment_id"], "mlflow.note.content",
                                           f"Study `{self.study.name}` ({self.study_dir})\n\n```yaml\n{frozen.read_text()}```")
        # Runs a trial may still finish: after a crash, those left running (one query, not one per trial).
        running = self.client.search_runs([self.runs["experiment_id"]], "attributes.status = 'RUNNING'",
                                          max_results=50000)
        self.open_trials = {run.data.tags[TRIAL_ID] for run in running
                            if self.runs["trials"].get(run.data.tags.get(TRIAL_ID)) == run.info.run_id}
        self._settle_runs_left_open(running)
        for run in running:  # a cell whose last final run ended just before the crash
            if run.data.tags.get(PHASE) == PHASE_CELL and self.runs["cells"].get(run.data.tags.get(CELL)) == run.info.run_id:
                self._maybe_close_cell(run.data.tags[CELL], self.runs)
        for cell in self.study.cells():
            if cell.id in self.runs["cells"]:
                continue
            run = self.client.create_run(self.runs["experiment_id"], run_name=cell.id, tags={
                STUDY: self.study.name, DATASET: cell.dataset, METHOD: cell.method,
                BASE_METHOD: self.study.base_method(cell.method), BACKBONE: self.study.backbone,
                PHASE: PHASE_CELL, CELL: cell.id})
            self._remember("cell", cell.id, run.info.run_id)

    # -- sending, or keeping what the server cannot take -----------------------------------
    def send(self, op: dict) -> None:
        """Write ``op`` now; while the server is away (or older writes wait), keep it in order."""
        if not self.queued and self._try(op):
            return
        self.outbox.put(op)
        self.queued += 1
        if time.monotonic() - self.last_try >= RETRY_SECONDS:
            self.flush()

    def flush(self) -> None:
        outbox = self.outbox
        for seq, op in outbox.pending():
            if not self._try(op):
                return
            outbox.sent(seq, op)
            self.queued -= 1

    def _try(self, op: dict) -> bool:
        """Whether ``op`` is done with: written, or refused by the server (said, then dropped)."""
        self.last_try = time.monotonic()
        try:
            getattr(self, f"_do_{op['do']}")(**{k: v for k, v in op.items() if k != "do"})
        except Exception as err:  # noqa: BLE001 -- the server's, the network's or the store's
            if not server_away(err):
                print(f"[peft-search] MLflow refused a write ({op['do']} {op.get('trial_id', op.get('cell', ''))}): "
                      f"{str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr, flush=True)
                return True
            self._away(err)
            return False
        if self.away_since is not None:
            print(f"[peft-search] MLflow at {self.uri} is back after {time.time() - self.away_since:.0f} s; "
                  f"sending {self.queued} kept writes", file=sys.stderr, flush=True)
            self.away_since = None
        return True

    def _away(self, err: Exception) -> None:
        now = time.time()
        if self.away_since is None:
            self.away_since = now
            print(f"[peft-search] MLflow at {self.uri} is not answering ({type(err).__name__}); its writes are "
                  f"kept in the study folder and sent when it is back", file=sys.stderr, flush=True)
        elif now - self.away_since > self.study.mlflow.outage_limit and not (self.study_dir / OUTAGE_STOP).exists():
            (self.study_dir / OUTAGE_STOP).write_text(
                f"MLflow at {self.uri} did not answer for {now - self.away_since:.0f} s (mlflow.outage_limit "
                f"{self.study.mlflow.outage_limit:g} s); the driver stopped with {self.queued} writes kept: "
                f"`peft-search resume {self.study_dir}` when it is back")
            if not callable(signal.getsignal(signal.SIGUSR1)):  # Tune's handler is not there (not the main thread)
                raise RuntimeError((self.study_dir / OUTAGE_STOP).read_text())
            os.kill(os.getpid(), signal.SIGUSR1)  # Tune's own graceful stop, as Ctrl-C: resumable

    def on_step_end(self, iteration, trials, **info) -> None:
        if self.queued and time.monotonic() - self.last_try >= RETRY_SECONDS:
            self.flush()

    def on_experiment_end(self, trials, **info) -> None:
        """The last trial is done: wait for the server to take what is kept, up to the limit."""
        while self.queued and not (self.study_dir / OUTAGE_STOP).exists():
            time.sleep(max(0.0, RETRY_SECONDS - (time.monotonic() - self.last_try)))
            self.flush()

    def _settle_runs_left_open(self, running: list) -> None:
        """Trial runs a crash left running. Deleted: runs of trials the searcher forgot on restore
        (started after Tune's last snapshot; their points went out again as new trials) and runs
        opened just before the crash whose id was never recorded (Tune runs the trial again
        under a new one). Finished from the record: runs of trials the searcher saw end.
        Tune restores the searcher before it sets callbacks up, so the search state is final."""
        records = read_trials(self.study_dir)
        for run in running:
            trial_id, run_id = run.data.tags.get(TRIAL_ID), run.info.run_id
            if trial_id is None:
                continue  # a cell's run
            record = records.get(trial_id)
            if record is None or self.runs["trials"].get(trial_id) != run_id:
                self.client.set_terminated(run_id, "KILLED")
                self.client.delete_run(run_id)
                if record is None:
                    self.open_trials.discard(trial_id)
                continue  # (else a stray run of a trial whose own run stays as it is)
            self._log_last_recorded_epoch(run_id, record)
            if record["status"] in DONE:
                now = int(time.time() * 1000)
                # Its per-epoch metrics went in as they came; only the end is missing.
                metrics = {"epochs_run": record["epochs"], "trial_seconds": record["seconds"]}
                self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, record["epochs"])
                                                       for k, v in metrics.items() if v is not None],
                                      tags=[RunTag(STATE, record["status"])])
                self.client.set_terminated(run_id, MLFLOW_STATUS[record["status"]])
            else:
                continue
            self.open_trials.discard(trial_id)

    def _log_last_recorded_epoch(self, run_id: str, record: dict) -> None:
        """A driver killed between the searcher recording an epoch and this tracker logging it
        leaves MLflow without that epoch, and the trial resumes after it: log it from the record."""
        epoch, now = record["epochs"], int(time.time() * 1000)
        missing = [Metric(key, float(value), now, epoch) for key, value in record["metrics"].items()
                   if epoch and key in EPOCH_METRICS and value is not None
                   and epoch not in {m.step for m in self.client.get_metric_history(run_id, key)}]
        if missing:
            self.client.log_batch(run_id, metrics=missing)

    # -- Tune callback hooks: each one's writes, as operations --------------------------------
    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        if trial.trial_id in self.runs["trials"] or trial.trial_id in self.open_trials:  # resumed or retried
            # A trial that ended before a crash is started again by Tune only to return at once.
            if trial.trial_id not in self.open_trials and not trial_finished(self.study_dir, trial.trial_id):
                self.open_trials.add(trial.trial_id)
                self.send({"do": "reopen", "trial_id": trial.trial_id})
            return
        config = trial.config
        self.open_trials.add(trial.trial_id)
        self.send({"do": "trial_run", "trial_id": trial.trial_id, "cell": config["cell"], "phase": config["phase"],
                   "params": run_params(config["cell"], config["train"], config["params"]),
                   "config_yaml": yaml.safe_dump(config["train"], sort_keys=True)})

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if trial.trial_id not in self.open_trials:
            return
        now, step = int(time.time() * 1000), int(result.get("epoch", 0))
        self.send({"do": "log", "trial_id": trial.trial_id,
                   "metrics": [[k, float(result[k]), now, step] for k in EPOCH_METRICS if k in result]})

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._finish(trial, error=False)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._finish(trial, error=True)

    def _finish(self, trial, error: bool) -> None:
        if trial.trial_id not in self.open_trials:
            return  # finished before a resume: nothing to add
        trial_id, result, config = trial.trial_id, trial.last_result or {}, trial.config
        epochs = int(result.get("epoch", 0))
        state = decide(error=error or bool(result.get(TRIAL_ERROR)), epochs=epochs,
                       planned_epochs=config["train"]["epoch"], early_stopped=bool(result.get("early_stopped")))
        final_metrics = {"inserted_params": result.get("inserted_params"), "epochs_run": epochs,
                         "train_examples": result.get("train_examples"),
                         "trial_seconds": result.get("trial_seconds")}
        now = int(time.time() * 1000)
        tags = {STATE: state, **{key: str(result[key])[:5000] for key in (NOTE, TRIAL_ERROR) if result.get(key)}}
        self.send({"do": "log", "trial_id": trial_id, "tags": tags,
                   "metrics": [[k, float(v), now, epochs] for k, v in final_metrics.items() if v is not None]})
        if result.get("traceback"):
            self.send({"do": "text", "trial_id": trial_id, "text": result["traceback"], "name": "error.txt"})
        if config["phase"] == "final" and state != FAILED and trial.checkpoint is not None:
            with tempfile.TemporaryDirectory() as tmp, trial.checkpoint.as_directory() as folder:
                meta = {"method": config["train"]["method"], "hp": config["train"]["hp"],
                        "backbone": config["train"]["backbone"]}
                adapter = adapter_from_checkpoint(Path(folder), Path(tmp) / "adapter.safetensors", meta)
                self.send({"do": "file", "trial_id": trial_id, "file": str(adapter), "folder": None})
                if (Path(folder) / "predictions_test.npz").is_file():  # train: {save_predictions: true}
                    kept = shutil.copy(Path(folder) / "predictions_test.npz", Path(tmp) / "test.npz")
                    self.send({"do": "file", "trial_id": trial_id, "file": str(kept), "folder": "predictions"})
        self.send({"do": "end", "trial_id": trial_id, "status": MLFLOW_STATUS[state]})
        self.open_trials.discard(trial_id)
        if config["phase"] == "final":
            self.send({"do": "close_cell", "cell": config["cell"]})

    # -- the operations ----------------------------------------------------------------------
    def _do_trial_run(self, trial_id: str, cell: str, phase: str, params: dict, config_yaml: str) -> None:
        run_id, artifact_uri = self.runs["trials"].get(trial_id), None
        if run_id is None:  # (a retried write may have created it already)
            parsed = Cell.parse(cell)
            tags = {PARENT: self.runs["cells"][cell], STUDY: self.study.name, CELL: cell,
                    DATASET: parsed.dataset, METHOD: parsed.method, BACKBONE: self.study.backbone,
                    BASE_METHOD: self.study.base_method(parsed.method), PHASE: phase, TRIAL_ID: trial_id}
            run = self.client.create_run(self.runs["experiment_id"], run_name=f"{cell} {trial_id}", tags=tags)
            run_id, artifact_uri = run.info.run_id, run.info.artifact_uri
            self._remember("trial", trial_id, run_id)
        self.client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.yaml"
            path.write_text(config_yaml)
            if artifact_uri is None:
                self.client.log_artifact(run_id, str(path))
            else:  # the store of the run just created, without asking the server for it again
                get_artifact_repository(artifact_uri, tracking_uri=self.uri).log_artifact(str(path))

    def _do_reopen(self, trial_id: str) -> None:
        self.client.update_run(self.runs["trials"][trial_id], status="RUNNING")

    def _do_log(self, trial_id: str, metrics: list = (), tags: dict | None = None) -> None:
        self.client.log_batch(self.runs["trials"][trial_id], metrics=[Metric(*m) for m in metrics],
                              tags=[RunTag(k, v) for k, v in (tags or {}).items()])

    def _do_text(self, trial_id: str, text: str, name: str) -> None:
        self.client.log_text(self.runs["trials"][trial_id], text, name)

    def _do_file(self, trial_id: str, file: str, folder: str | None) -> None:
        self.client.log_artifact(self.runs["trials"][trial_id], file, folder)

    def _do_end(self, trial_id: str, status: str) -> None:
        self.client.set_terminated(self.runs["trials"][trial_id], status)

    def _do_close_cell(self, cell: str) -> None:
        self._maybe_close_cell(cell, self.runs)

    def _maybe_close_cell(self, cell: str, runs: dict) -> None:
        """When every final run of a cell is in, summarise it on the cell's parent run: the test
        score over seeds, the selected tuning trial's metrics and parameters (so the runs table
        lines the cell up with its trials), its trials as a CSV, its search as a PNG and the study
        as it started (the YAML the folder keeps), a click away in the UI. The search state's
        records say which final runs are in (the searcher records an end before this callback
        hears of it), without asking MLflow to search its runs by tag."""
        records = read_cell_trials(self.study_dir, cell)
        done = [r for r in records if r["phase"] == PHASE_FINAL and MLFLOW_STATUS.get(r["status"]) == "FINISHED"]
        if len(done) < len(self.study.final.seeds):
            return
        scores = [r["metrics"]["test_top1"] for r in done if "test_top1" in r["metrics"]]
        parent = runs["cells"][cell]
        chosen = {r["selected_from"] for r in records if r["phase"] == PHASE_FINAL}
        selected = next((r for r in records if r["trial_id"] in chosen), None)
        metrics = dict(selected["metrics"]) if selected else {}
        if scores:
            metrics["test_top1_mean"] = statistics.mean(scores)
        if len(scores) > 1:
            metrics["test_top1_std"] = statistics.stdev(scores)
        now = int(time.time() * 1000)
        final = done[0]  # its settings rebuilt as the searcher built its config (also after a resume)
        train = self.study.trial_config(Cell.parse(cell), final["params"], PHASE_FINAL, final["seed"])
        self.client.log_batch(parent, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                              params=[Param(k, v) for k, v in run_params(cell, train, final["params"]).items()
                                      if k != "seed"],
                              tags=[RunTag("selected_trial", selected["trial_id"] if selected else "")])
        with tempfile.TemporaryDirectory() as tmp:
            self.client.log_artifact(parent, str(write_trials_csv(records, Path(tmp) / "trials.csv")))
            self.client.log_artifact(parent, str(draw_search(
                records, self.study.search.metric, selected["trial_id"] if selected else None,
                f"{cell}: {self.study.search.metric} per tuning trial", Path(tmp) / "search.png")))
        self.client.log_artifact(parent, str(self.study_dir / STUDY_COPY))
        self.client.set_terminated(parent, "FINISHED")
