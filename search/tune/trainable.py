"""The trial: ``peft_core.train`` wrapped as a Ray Tune function trainable.

It reports every evaluation (with a checkpoint) through ``tune.report`` and resumes from
``tune.get_checkpoint()``; the driver owns scheduling and logging.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import ray
import torch
from ray import tune

from peft_core.train import TrainConfig, TrainingDiverged, train

from ..study_folder import trial_finished

def run_trial(config: dict) -> None:
    trial_id = tune.get_context().get_trial_id()
    if trial_finished(config["study_dir"], trial_id):
        return  # finished before the driver died: a resumed study never reruns it
    torch.set_num_threads(max(1, int(tune.get_context().get_trial_resources().required_resources.get("CPU", 1))))
    train_config = TrainConfig(**config["train"])
    start = time.time()
    resume_dir = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        resume_dir = Path(tempfile.mkdtemp(prefix="peft-resume-"))
        with checkpoint.as_directory() as folder:
            shutil.copytree(folder, resume_dir, dirs_exist_ok=True)

    node_id = ray.get_runtime_context().get_node_id()

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
    except TrainingDiverged as err:
        # Reported, not raised: Tune retries raised errors (lost nodes), and a diverged run
        # would only diverge again. The searcher and tracker mark it failed.
        tune.report({"diverged": str(err), "trial_seconds": time.time() - start, "node_id": node_id})
    finally:
        if resume_dir is not None:
            shutil.rmtree(resume_dir, ignore_errors=True)
