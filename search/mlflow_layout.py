"""The MLflow layout of a study (SPEC section 7), shared by the tuning service that writes it and
the report that reads it: tag names, phase values, experiment lookup, tracking-URI checks.

One experiment per study; a parent run per cell (``phase=cell``); a child run per trial
(``phase=tune``) and per final run (``phase=final``).
"""
from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

# Tags every run of a study carries. METHOD names the cell's method, a registered one or a
# variant (lora_8); BASE_METHOD the registered method it runs (absent in imported runs).
STUDY, CELL, DATASET, METHOD, BASE_METHOD, BACKBONE, PHASE, TRIAL_ID = (
    "study", "cell", "dataset", "method", "base_method", "backbone", "phase", "trial_id")
STATE = "state"  # completed | pruned | failed, set when a trial ends
NOTE = "note"  # why a finished run lacks a metric (a replayed final run of an unreleased point)
PARENT = "mlflow.parentRunId"
# Values of the ``phase`` tag.
PHASE_CELL, PHASE_TUNE, PHASE_FINAL = "cell", "tune", "final"
PHASES = (PHASE_CELL, PHASE_TUNE, PHASE_FINAL)
# MLflow 3 keeps an experiment's kind in this tag; model training makes the UI open on its runs
# (not on the GenAI traces overview).
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


def experiment_page(experiment_id: str) -> str:
    """The UI path of a study's runs. MLflow 3.17's UI picks GenAI or model training per browser
    (its own setting, GenAI by default), not from the experiment's kind; the URL names it."""
    return f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def default_tracking_uri(study_dir: Path) -> str:
    return f"sqlite:///{Path(study_dir).resolve() / 'mlflow.db'}"


def check_tracking_server(uri: str, timeout: float = 5.0) -> None:
    """An http(s) tracking server must answer before any trial starts."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            if response.status != 200:
                raise ValueError(f"MLflow tracking server {uri} answered HTTP {response.status} on /health")
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ValueError(f"MLflow tracking server {uri} is unreachable: {reason}") from None


def get_experiment_id(client, name: str, artifact_root: Path | None) -> str:
    """The id of experiment ``name`` on ``client`` (an ``MlflowClient``), created when absent."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if EXPERIMENT_KIND not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
        return experiment.experiment_id
    location = artifact_root.resolve().as_uri() if artifact_root else None
    return client.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND: MODEL_TRAINING})
