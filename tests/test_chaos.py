"""Chaos: the driver SIGKILLed again and again, and the MLflow tracking server going away.

The driver is killed at moments drawn from a seeded generator and resumed after each: the study
ends as an uninterrupted one does. The MLflow server (a real ``mlflow server`` process) away
briefly: the tracker keeps what it cannot send and sends it when the server is back; away past
``mlflow.outage_limit``, the driver stops as on Ctrl-C (exit 1, one line) and the study resumes
when the server is back. At the end every trial has its one run with all its metrics.
"""
import os
import random
import signal
import time

import pytest
import yaml

from search.cluster.local import free_port
from search.mlflow_server import start_mlflow_server, wait_until_serving
from search.study_folder import DONE, OUTBOX_FILES, count_outbox, read_trials
from search.tune.status import summarize
from tests.processes import cli, kill_group, run_to_end

EPOCHS = 3


class Server:
    """One MLflow server on a fixed port and store, killed and started again at will."""

    def __init__(self, root):
        self.root, self.port = root, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self):
        self.proc = start_mlflow_server(f"sqlite:///{self.root / 'mlflow.db'}", self.port,
                                        self.root / "artifacts", self.root / "server.log")
        wait_until_serving(self.uri, 120, self.proc, self.root / "server.log")

    def kill(self):
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def server(tmp_path):
    server = Server(tmp_path)
    server.start()
    yield server
    if server.proc.poll() is None:
        server.kill()


def wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def finished_trials(study_dir) -> int:
    return sum(r["status"] in DONE for r in read_trials(study_dir).values())


def test_mlflow_away_briefly_then_too_long_loses_nothing(server, minivtab, tmp_path):
    study_dir = tmp_path / "study"
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump({
        "name": "outage", "backbone": "tiny_vit_b16_in21k", "data_root": str(minivtab),
        "datasets": ["digits"], "methods": ["linear", "lora"],
        "train": {"epoch": EPOCHS, "warmup_epoch": 0, "pretrained": False, "eval_freq": 1},
        "spaces": {"linear": {"lr": {"grid": [0.01, 0.001, 0.003]}},
                   "lora": {"lr": {"grid": [0.01, 0.001, 0.003]}, "lora_bottleneck": {"grid": [2]}}},
        "search": {"sampler": "grid", "num_samples": "grid", "max_concurrent": 1},
        "mlflow": {"tracking_uri": server.uri, "outage_limit": 12}}))
    log = open(tmp_path / "driver.log", "w+")
    driver = cli("run", str(study_file), "--out", str(study_dir), stdout=log, stderr=log)
    try:
        # 1. away for a few seconds, well within the limit: the study goes on, nothing is lost
        wait_for(lambda: finished_trials(study_dir) >= 1, 300, "a first finished trial")
        server.kill()
        wait_for(lambda: "is not answering" in open(log.name).read(), 120, "the tracker to notice")
        server.start()
        wait_for(lambda: "is back" in open(log.name).read(), 120, "the tracker to send what it kept")
        # 2. away for good: past the limit the driver stops by itself, exit 1 and one line
        done = finished_trials(study_dir)
        wait_for(lambda: finished_trials(study_dir) > done, 300, "one more finished trial")
        server.kill()
        assert driver.wait(timeout=180) == 1, open(log.name).read()[-3000:]
    finally:
        kill_group(driver)
    output = open(log.name).read()
    assert "did not answer for" in output and "peft-search resume" in output, output[-3000:]
    assert count_outbox(study_dir) > 0  # what the server missed is kept in the study folder

    # 3. the server is back: resume sends what was kept and finishes the study
    server.start()
    log = open(tmp_path / "resume.log", "w+")
    resume = cli("resume", str(study_dir), stdout=log, stderr=log)
    try:
        assert resume.wait(timeout=600) == 0, open(log.name).read()[-3000:]
    finally:
        kill_group(resume)
    assert count_outbox(study_dir) == 0 and not any((study_dir / OUTBOX_FILES).glob("*"))

    from mlflow.tracking import MlflowClient
    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("outage")
    runs = client.search_runs([experiment.experiment_id], "tags.phase != 'cell'", max_results=1000)
    records = read_trials(study_dir)
    by_trial = {}
    for run in runs:
        by_trial.setdefault(run.data.tags["trial_id"], []).append(run)
    assert set(by_trial) == set(records) and all(len(v) == 1 for v in by_trial.values())  # one run per trial
    for trial_id, (run,) in by_trial.items():
        assert run.info.status == "FINISHED", (trial_id, run.info.status)
        assert run.data.metrics["epochs_run"] == EPOCHS and "inserted_params" in run.data.metrics
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
        assert sorted(set(steps)) == list(range(1, EPOCHS + 1)), (trial_id, steps)  # every epoch's
        if run.data.tags["phase"] == "tune":
            assert sorted({m.step for m in client.get_metric_history(run.info.run_id, "val_top1")}) == \
                list(range(1, EPOCHS + 1))
        else:
            assert "test_top1" in run.data.metrics
            assert "adapter.safetensors" in {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"config.yaml"}


def chaos_study(path, minivtab):
    """Demo-shaped (tasks x methods, a final run per cell), CPU-sized; max_concurrent 1 and grids,
    so that the order of events, and so every result, is fixed."""
    path.write_text(yaml.safe_dump({
        "name": "chaos", "backbone": "tiny_vit_b16_in21k", "data_root": str(minivtab),
        "datasets": ["digits", "digits_rot"], "methods": ["linear", "lora", "ssf"],
        "train": {"epoch": 3, "warmup_epoch": 0, "pretrained": False, "eval_freq": 1},
        "spaces": {m: {"lr": {"grid": [0.01, 0.003]}} for m in ("linear", "lora", "ssf")},
        "search": {"sampler": "grid", "num_samples": "grid", "max_concurrent": 1}}))
    return path


def final_table(study_dir) -> dict:
    return {r["cell"]: (r["params"], r["metrics"]["test_top1"]) for r in read_trials(study_dir).values()
            if r["phase"] == "final"}


KINDS = ("between trials", "mid-trial", "during a final run", "during MLflow logging")


def at_moment(kind: str, study_dir, done_before: int) -> bool:
    """Whether the study is at a moment of ``kind``, read from its search state."""
    records = list(read_trials(study_dir).values())
    running = [r for r in records if r["status"] == "running"]
    if kind == "between trials":  # the next trial handed out, nothing of it trained yet
        return bool(running) and all(r["epochs"] == 0 for r in running)
    if kind == "mid-trial":
        return any(r["phase"] == "tune" and 1 <= r["epochs"] < EPOCHS for r in running)
    if kind == "during a final run":
        return any(r["phase"] == "final" for r in running)
    # A trial has just ended: the searcher records it first, then the tracker logs it to MLflow.
    return sum(r["status"] in DONE for r in records) > done_before


def test_driver_killed_at_five_drawn_moments_ends_as_an_uninterrupted_study(minivtab, tmp_path):
    study_file = chaos_study(tmp_path / "study.yaml", minivtab)
    log = open(tmp_path / "driver.log", "w+")
    run_to_end(cli("run", str(study_file), "--out", str(tmp_path / "calm"), stdout=log, stderr=log), 600, log)
    expected = final_table(tmp_path / "calm")

    study_dir = tmp_path / "chaos"
    draw = random.Random(20261203)
    # Every kind, in a drawn order; final runs come last (cells are tuned in turn), so does their kill.
    anytime = [kind for kind in KINDS if kind != "during a final run"]
    kinds = draw.sample(anytime, len(anytime)) + [draw.choice(anytime), "during a final run"]
    command, killed_at = ["run", str(study_file), "--out", str(study_dir)], []
    for kind in kinds:
        driver = cli(*command, stdout=log, stderr=log)
        try:
            done = finished_trials(study_dir)  # each driver makes progress before its kill
            wait_for(lambda: finished_trials(study_dir) > done, 600, f"progress before a kill {kind}")
            done = finished_trials(study_dir)
            deadline = time.time() + 300
            while not at_moment(kind, study_dir, done):
                assert driver.poll() is None, f"the study ended before a kill {kind}: {killed_at}"
                assert time.time() < deadline, f"no moment {kind}"
                time.sleep(0.02)
            assert driver.poll() is None
            killed_at.append((kind, finished_trials(study_dir)))
        finally:
            kill_group(driver)  # SIGKILL, then whatever it started
        command = ["resume", str(study_dir)]
    run_to_end(cli(*command, stdout=log, stderr=log), 600, log)
    assert len(killed_at) == 5 and {kind for kind, _ in killed_at} == set(KINDS), killed_at

    summary = summarize(study_dir)
    assert summary["cells_done"] == 6 and summary["trials_running"] == 0 and summary["duplicate_trials"] == 0
    assert final_table(study_dir) == expected  # every cell, its selected point, its test top-1
    from mlflow.tracking import MlflowClient
    client = MlflowClient((study_dir / "tracking_uri.txt").read_text().strip())
    experiment = client.get_experiment_by_name("chaos")
    runs = client.search_runs([experiment.experiment_id], "tags.phase != 'cell'", max_results=1000)
    trial_ids = [r.data.tags["trial_id"] for r in runs]
    assert sorted(trial_ids) == sorted(read_trials(study_dir))  # one run per trial id, none lost
    assert all(r.info.status == "FINISHED" for r in runs)
