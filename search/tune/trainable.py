"""The trial: ``peft_core.train`` wrapped as a Ray Tune function trainable.

It reports every evaluation (with a checkpoint) through ``tune.report`` and resumes from
``tune.get_checkpoint()``; the driver owns scheduling and logging.
"""
from __future__ import annotations

import posixpath
import shutil
import tempfile
import time
import traceback
from pathlib import Path

import pyarrow.fs
import ray
import torch
from ray import tune
from ray.tune.trainable.function_trainable import wrap_function

from peft_core.train import TrainConfig, train

from ..study_folder import trial_finished
from .outcome import TRIAL_ERROR

# Errors that say nothing about the trial itself: a storage or network hiccup, Ray losing an
# object or a worker. Only these are retried; Ray reports a lost node or actor in the driver.
TRANSIENT = (ConnectionError, TimeoutError, ray.exceptions.RayError)


def one_line(err: Exception) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"[:1000]


def bring_back(checkpoint: tune.Checkpoint) -> None:
    """Put a trial's checkpoint back under the name Tune's snapshot gives it.

    With ``num_to_keep=1`` Tune deletes a trial's previous checkpoint as it registers the next,
    and records the new one only at its next experiment snapshot. A driver killed in between
    leaves a snapshot naming a deleted folder, and Tune's restore refuses it. The searcher and
    the tracker record a result before Tune registers its checkpoint, so the oldest checkpoint
    after the named one is the newest whose result is already recorded: it moves to the named
    place, where Tune restores it and, at the trial's next checkpoint, deletes it as usual.
    """
    fs = checkpoint.filesystem
    if fs.get_file_info(checkpoint.path).type != pyarrow.fs.FileType.NotFound:
        return
    parent, name = posixpath.split(checkpoint.path)
    later = sorted(info.base_name for info in fs.get_file_info(pyarrow.fs.FileSelector(parent))
                   if info.base_name.startswith("checkpoint_") and info.base_name > name)
    if not later:
        raise FileNotFoundError(f"checkpoint {checkpoint.path} is gone and no later one exists")
    fs.move(posixpath.join(parent, later[0]), checkpoint.path)


def run_trial(config: dict) -> None:
    """One trial. Its own errors are reported, not raised: Tune retries raised errors as if the
    node had died, and a bad value, a missing file, a shape error or a diverged loss would only
    fail again the same way. Only ``TRANSIENT`` errors are raised (and retried)."""
    if trial_finished(config["study_dir"], tune.get_context().get_trial_id()):
        return  # finished before the driver died: a resumed study never reruns it
    start = time.time()
    node_id = ray.get_runtime_context().get_node_id()
    try:
        _train(config, start, node_id)
    except TRANSIENT:
        raise
    except Exception as err:  # noqa: BLE001 - every other error is the trial's own
        tune.report({TRIAL_ERROR: one_line(err), "traceback": traceback.format_exc(),
                     "trial_seconds": time.time() - start, "node_id": node_id})


def _train(config: dict, start: float, node_id: str) -> None:
    torch.set_num_threads(max(1, int(tune.get_context().get_trial_resources().required_resources.get("CPU", 1))))
    train_config = TrainConfig(**config["train"])
    resume_dir = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        resume_dir = Path(tempfile.mkdtemp(prefix="peft-resume-"))
        with checkpoint.as_directory() as folder:
            shutil.copytree(folder, resume_dir, dirs_exist_ok=True)

    def report(metrics: dict, folder: Path | None) -> None:
        ckpt = tune.Checkpoint.from_directory(str(folder)) if folder is not None else None
        tune.report({**metrics, "trial_seconds": time.time() - start, "started_at": start, "node_id": node_id},
                    checkpoint=ckpt)

    try:
        result = train(train_config, report, resume_from=resume_dir)
        if result.status == "early_stopped":
            # Training decides to stop after its last report: say so, or the searcher and the
            # tracker would take the short run for one the scheduler stopped (pruned).
            tune.report({"early_stopped": True, "epoch": result.metrics["epoch"],
                         "inserted_params": result.inserted_params, "trial_seconds": time.time() - start,
                         "node_id": node_id})
    finally:
        if resume_dir is not None:
            shutil.rmtree(resume_dir, ignore_errors=True)


class RunTrial(wrap_function(run_trial)):
    """``run_trial`` as Tune's function trainable, whose restore first brings back a checkpoint
    that a killed driver's snapshot names but Tune had already deleted (see ``bring_back``)."""

    def restore(self, checkpoint_path):
        checkpoint = getattr(checkpoint_path, "checkpoint", None)  # Tune passes a _TrainingResult
        if checkpoint is not None:
            bring_back(checkpoint)
        return super().restore(checkpoint_path)
