"""SIGKILL the driver mid-study, resume, and check by trial id that nothing was rerun or lost."""
import json
import shutil
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient

from peft_core.train import TrainConfig, train
from search.tune.status import summarize
from search.study_folder import read_trials

from .processes import cli, kill_group, run_to_end

EPOCHS = 6


def test_sigkill_then_resume_reruns_nothing_and_loses_nothing(tmp_path, minivtab, mlflow_server):
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump({
        "name": "kill-resume", "backbone": "tiny_vit_b16_in21k", "data_root": str(minivtab),
        "datasets": ["digits"], "methods": ["lora"],
        "train": {"epoch": EPOCHS, "warmup_epoch": 1, "pretrained": False, "eval_freq": 1},
        "spaces": {"lora": {"lr": {"grid": [0.001, 0.01]}, "lora_bottleneck": {"grid": [1, 8]}}},
        "search": {"sampler": "grid", "num_samples": "grid", "max_concurrent": 2, "asha": None},
        "resources": {"cpu": 1}, "mlflow": {"tracking_uri": mlflow_server}}))
    study_dir = tmp_path / "out"
    log = open(tmp_path / "driver.log", "w")
    driver = cli("run", str(study_file), "--out", str(study_dir), stdout=log, stderr=log)
    deadline = time.time() + 300
    try:
        while True:  # kill once a trial is done and another is part-way with a checkpoint
            trials = read_trials(study_dir).values()
            done = [t for t in trials if t["status"] == "completed"]
            midway = [t for t in trials if t["status"] == "running" and 2 <= t["epochs"] < EPOCHS - 1]
            if done and midway:
                break
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            assert time.time() < deadline, "study never reached the kill point"
            time.sleep(0.1)
    finally:
        kill_group(driver)
    # Ray's workers outlive the driver for a moment and may still write a checkpoint: let them go
    listing, deadline = None, time.time() + 30
    while time.time() < deadline:
        now = sorted(str(p) for p in (study_dir / "ray" / "tune").glob("trial_*/checkpoint_*"))
        if now == listing:
            break
        listing = now
        time.sleep(2)
    before = json.loads(json.dumps(read_trials(study_dir)))
    finished_before = {k: v for k, v in before.items() if v["status"] == "completed"}
    interrupted = {k: v for k, v in before.items() if v["status"] == "running" and v["epochs"] >= 2}
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("kill-resume").experiment_id

    def run_of(trial_id):
        runs = client.search_runs([experiment], filter_string=f"tags.trial_id = '{trial_id}'")
        assert len(runs) == 1, f"{len(runs)} MLflow runs for trial {trial_id}"
        return runs[0]

    history_before = {k: len(client.get_metric_history(run_of(k).info.run_id, "val_top1"))
                      for k in finished_before}
    # What a kill between Tune deleting a checkpoint and its next snapshot leaves: the snapshot
    # names a folder that is gone, a later one is there (Tune alone fails such a trial 3 times).
    on_disk = {}
    for trial_id in interrupted:
        # (Checkpoint i holds epoch i + 1; the last recorded epoch's is there, later ones may be.)
        trial_dir = study_dir / "ray" / "tune" / f"trial_{trial_id}"
        recorded = trial_dir / f"checkpoint_{interrupted[trial_id]['epochs'] - 1:06d}"
        on_disk[trial_id] = sorted(f.name for f in trial_dir.glob("checkpoint_*"))
        for folder in trial_dir.glob("checkpoint_*"):
            if folder != recorded:
                shutil.rmtree(folder)
        recorded.rename(trial_dir / f"checkpoint_{interrupted[trial_id]['epochs']:06d}")

    run_to_end(cli("resume", str(study_dir), stdout=log, stderr=log), 400, log)
    after = read_trials(study_dir)
    summary = summarize(study_dir)
    assert summary["cells_done"] == 1 and summary["trials_running"] == 0
    assert summary["duplicate_trials"] == 0
    grid = {(lr, r) for lr in (0.001, 0.01) for r in (1, 8)}
    tuned = [(t["params"]["lr"], t["params"]["lora_bottleneck"]) for t in after.values() if t["phase"] == "tune"]
    assert sorted(tuned) == sorted(grid)  # nothing lost, nothing twice
    for trial_id, record in finished_before.items():  # finished trials were not rerun
        assert after[trial_id]["value"] == record["value"] and after[trial_id]["epochs"] == record["epochs"]
        history = client.get_metric_history(run_of(trial_id).info.run_id, "val_top1")
        assert len(history) == history_before[trial_id]
    for trial_id, record in interrupted.items():  # continued from its checkpoint, not from scratch
        assert (after[trial_id]["status"], after[trial_id]["epochs"]) == ("completed", EPOCHS), \
            after[trial_id]["error"]
        results = [json.loads(line) for line in
                   (study_dir / "ray" / "tune" / f"trial_{trial_id}" / "result.json").read_text().splitlines()]
        restarts = [r["epoch"] for r in results if r["iterations_since_restore"] == 1]
        assert len(restarts) == 2 and restarts[1] > 1, restarts  # the second start began past epoch 1
        steps = {m.step for m in client.get_metric_history(run_of(trial_id).info.run_id, "val_top1")}
        assert steps == set(range(1, EPOCHS + 1)), (record["epochs"], on_disk[trial_id], restarts, steps)
        # same result as the uninterrupted run (fixed seed, CPU)
        params = json.loads((study_dir / "ray" / "tune" / f"trial_{trial_id}" / "params.json").read_text())
        uninterrupted = train(TrainConfig(**params["train"]))
        assert after[trial_id]["value"] == pytest.approx(uninterrupted.metrics["val_top1"], abs=1e-9)


def test_a_checkpoint_deleted_before_tunes_snapshot_is_brought_back_from_the_next(tmp_path):
    """Killed between Tune deleting checkpoint 2 (registering 3) and its next snapshot: the
    snapshot names checkpoint 2; 3 (not 4: its result is not recorded) moves back to its name."""
    from ray import tune
    from search.tune.trainable import bring_back
    for index in (3, 4):
        (tmp_path / f"checkpoint_{index:06d}").mkdir()
        (tmp_path / f"checkpoint_{index:06d}" / "epoch").write_text(str(index))
    bring_back(tune.Checkpoint(str(tmp_path / "checkpoint_000003")))  # present: left alone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_000003", "checkpoint_000004"]
    bring_back(tune.Checkpoint(str(tmp_path / "checkpoint_000002")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_000002", "checkpoint_000004"]
    assert (tmp_path / "checkpoint_000002" / "epoch").read_text() == "3"
    with pytest.raises(FileNotFoundError, match="checkpoint_000005 is gone"):
        bring_back(tune.Checkpoint(str(tmp_path / "checkpoint_000005")))


def test_a_resumed_study_goes_on_as_it_started_whatever_its_files_became(tmp_path, minivtab):
    """The source study and the file its space names are edited while the study is down: the
    resumed study keeps its own grid and epochs (the study folder holds the study as it started)."""
    (tmp_path / "lr_wd.yml").write_text("lr: [0.001, 0.002]\n")  # the study's own format: a listed grid
    study_file = tmp_path / "study.yaml"
    study = {"name": "frozen", "backbone": "tiny_vit_b16_in21k", "data_root": str(minivtab),
             "datasets": ["digits"], "methods": ["lora"],
             "train": {"epoch": 2, "warmup_epoch": 0, "pretrained": False},
             "spaces": {"lora": {"files": "lr_wd.yml", "lora_bottleneck": {"grid": [1, 8]}}},
             "search": {"sampler": "grid", "num_samples": "grid", "max_concurrent": 1, "asha": None}}
    study_file.write_text(yaml.safe_dump(study))
    study_dir, log = tmp_path / "out", open(tmp_path / "driver.log", "w")
    driver = cli("run", str(study_file), "--out", str(study_dir), stdout=log, stderr=log)
    deadline = time.time() + 300
    try:
        while not any(t["status"] == "completed" for t in read_trials(study_dir).values()):
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            assert time.time() < deadline, "no trial finished"
            time.sleep(0.1)
    finally:
        kill_group(driver)
    (tmp_path / "lr_wd.yml").write_text("lr: [0.5]\n")
    study["train"]["epoch"] = 3
    study["spaces"]["lora"]["lora_bottleneck"] = {"grid": [2]}
    study_file.write_text(yaml.safe_dump(study))

    run_to_end(cli("resume", str(study_dir), stdout=log, stderr=log), 400, log)
    trials = read_trials(study_dir).values()
    tuned = sorted((t["params"]["lr"], t["params"]["lora_bottleneck"]) for t in trials if t["phase"] == "tune")
    assert tuned == [(0.001, 1), (0.001, 8), (0.002, 1), (0.002, 8)]
    assert {t["epochs"] for t in trials} == {2}
    assert summarize(study_dir)["cells_done"] == 1
