"""A real two-node Ray cluster on this machine (``ray start`` head + worker, token auth on):
submit a study through ``peft-search submit``, lose the worker node mid-trial, and check that
the study completes with the lost trials continued from their checkpoints."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from search.tune.status import summarize
from search.cluster.local import LocalCluster, free_port, wait_for
from search.study_folder import read_trials

EPOCHS = 10
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster():
    """A head with one trial slot and a worker node with two, token auth on."""
    with LocalCluster(workers=1, cpus=2, head_cpus=1) as local:
        yield local


def _cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def write_study(path: Path, minivtab: Path, storage: Path, tracking_uri: str) -> Path:
    study = {
        "name": "cluster-it", "backbone": "tiny_vit_b16_in21k", "data_root": str(minivtab),
        "datasets": ["digits"], "methods": ["lora", "adaptformer"],
        "train": {"epoch": EPOCHS, "warmup_epoch": 1, "pretrained": False, "eval_freq": 1},
        "spaces": {"lora": {"lr": {"loguniform": [1e-3, 1e-2]}},
                   "adaptformer": {"lr": {"loguniform": [1e-3, 1e-2]}}},
        "search": {"sampler": "random", "num_samples": 3, "max_concurrent": 3, "max_failures": 2,
                   # Fresh actors: with reuse, Tune hands every trial to the head's idle actor
                   # before a worker actor on this busy 2-core machine has even imported torch.
                   "reuse_actors": False},
        "resources": {"cpu": 1}, "mlflow": {"tracking_uri": tracking_uri}, "storage_path": str(storage),
    }
    path.write_text(yaml.safe_dump(study))
    return path


def test_cluster_submit_survives_losing_a_worker_node(cluster, tmp_path, minivtab, mlflow_server):
    env, address = cluster.env, cluster.address
    study_dir = tmp_path / "shared" / "cluster-it"
    study_file = write_study(tmp_path / "study.yaml", minivtab, study_dir, mlflow_server)
    submitted = _cli(env, "submit", str(study_file), "--address", address, "--requirements", "none")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split()[1]

    def job() -> dict:
        answer = _cli(env, "jobs", "status", job_id, "--address", address, "--json")
        assert answer.returncode == 0, answer.stderr
        return json.loads(answer.stdout)

    def records() -> dict:
        return read_trials(study_dir)

    # Wait until a trial on the worker node has a checkpoint past epoch 1, then lose the node.
    wait_for(lambda: job()["driver_node_id"], 120, "the job's driver", cluster.head.log)
    head_node = job()["driver_node_id"]

    lost: dict[str, int] = {}

    def worker_trials() -> dict:
        lost.update({t["trial_id"]: t["epochs"] for t in records().values() if t["status"] == "running"
                     and t["epochs"] >= 2 and t.get("nodes") and t["nodes"][-1] != head_node})
        return lost
    wait_for(worker_trials, 300, "a trial on the worker node past epoch 1", cluster.head.log, poll_s=0.2)
    cluster.workers[0].kill()

    wait_for(lambda: job()["status"] in ("SUCCEEDED", "FAILED", "STOPPED"), 400, "the job to end", cluster.head.log)
    logs = _cli(env, "jobs", "logs", job_id, "--address", address).stdout
    assert job()["status"] == "SUCCEEDED", logs[-3000:]

    summary = summarize(study_dir)
    assert summary["cells_done"] == 2 and summary["trials_running"] == 0 and summary["trials_failed"] == 0
    trials = records()
    assert len(trials) == 2 * 3 + 2
    assert any(n != head_node for t in trials.values() for n in t["nodes"]), "nothing ran on the worker"
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("cluster-it")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.phase != 'cell'", max_results=100)
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(trials), "each trial once in MLflow"
    for trial_id, epochs_at_loss in lost.items():
        record = trials[trial_id]
        assert record["status"] == "completed" and record["epochs"] == EPOCHS
        assert record["nodes"][-1] == head_node, "the lost trial finished on the surviving node"
        run = next(r for r in runs if r.data.tags["trial_id"] == trial_id)
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_top1")]
        # continued from its checkpoint: no epoch before the loss was trained (or logged) twice
        assert steps.count(1) == 1 and sorted(set(steps)) == list(range(1, EPOCHS + 1)), steps


def test_submit_without_shared_storage_path_is_refused_before_anything_runs(tmp_path, minivtab):
    study_file = tmp_path / "study.yaml"
    write_study(study_file, minivtab, tmp_path / "unused", "file:" + str(tmp_path / "mlruns"))
    study = yaml.safe_load(study_file.read_text())
    del study["storage_path"]
    study_file.write_text(yaml.safe_dump(study))
    answer = _cli({**os.environ, "RAY_ADDRESS": "http://127.0.0.1:9"}, "submit", str(study_file))
    assert answer.returncode == 2 and "storage_path: not set" in answer.stderr
    assert len(answer.stderr.strip().splitlines()) == 1 and not (tmp_path / "unused").exists()


def test_submit_to_an_unreachable_cluster_is_one_line(tmp_path, minivtab):
    study_file = write_study(tmp_path / "study.yaml", minivtab, tmp_path / "shared", "file:" + str(tmp_path / "m"))
    answer = _cli(dict(os.environ), "submit", str(study_file), "--address", f"http://127.0.0.1:{free_port()}")
    assert answer.returncode == 2 and "cannot reach the Ray dashboard" in answer.stderr
    assert len(answer.stderr.strip().splitlines()) == 1


def test_cluster_storage_path_a_node_cannot_see_stops_the_job_naming_the_node(tmp_path, minivtab):
    """The worker node runs in a mount namespace of its own where the study's storage is an
    empty tmpfs: the job must stop before any trial, say which node, and leave nothing."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a private mount namespace needs root and util-linux unshare")
    shared = tmp_path / "shared"
    shared.mkdir()
    hide = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'mount -t tmpfs none "{shared}" && exec "$@"', "hide-storage"]
    with LocalCluster(workers=1, cpus=1, head_cpus=1, worker_wrapper=hide) as local:
        study_file = write_study(tmp_path / "study.yaml", minivtab, shared / "cluster-it",
                                 "file:" + str(tmp_path / "mlruns"))
        answer = _cli(local.env, "submit", str(study_file), "--address", local.address,
                      "--requirements", "none", "--follow")
    assert answer.returncode == 1 and "ended FAILED" in answer.stderr
    assert "not shared by every node; node(s)" in answer.stdout, answer.stdout[-2000:]
    assert list(shared.iterdir()) == [], "nothing written where the study would have been"


def test_submit_ships_the_code_the_study_with_absolute_paths_and_the_project_requirements(tmp_path, minivtab):
    from search.cluster.jobs import STUDY_FILE, project_requirements, runtime_env, stage_job
    from search.study import load_study
    study_file = write_study(tmp_path / "study.yaml", minivtab, tmp_path / "shared" / "s", "file:/tmp/m")
    study = yaml.safe_load(study_file.read_text())
    study.update(data_root=os.path.relpath(minivtab, tmp_path), storage_path="shared/s")  # relative to the file
    study_file.write_text(yaml.safe_dump(study))
    job = tmp_path / "job"
    job.mkdir()
    _, study_dir = stage_job(study_file, None, job)
    assert study_dir == str(tmp_path / "shared" / "s")
    assert (job / "search" / "cli.py").is_file() and (job / "peft_core" / "train.py").is_file()
    shipped = yaml.safe_load((job / STUDY_FILE).read_text())
    assert shipped["data_root"] == str(minivtab) and shipped["storage_path"] == study_dir
    assert load_study(job / STUDY_FILE).datasets["digits"].data_path == str(minivtab)
    env = runtime_env(job, project_requirements())
    packages = env["pip"]["packages"]
    assert env["working_dir"] == str(job) and env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert any(p.startswith("torch") for p in packages) and any(p.startswith("ray[") for p in packages)
    assert not any("extra ==" in p for p in packages)  # test and bench extras stay home


def test_submit_to_a_cluster_whose_jobs_lack_the_dependencies_is_refused_with_nothing_uploaded(tmp_path, minivtab):
    """The nodes started by the virtualenv's `ray start` but with a system python first on their
    PATH (the job's `python`): the check job says what is missing, and no study job is submitted."""
    system_python = shutil.which("python3", path="/usr/bin:/bin")
    if system_python is None:
        pytest.skip("no system python3 to stand for a bare job environment")
    bare = tmp_path / "bare-bin"
    bare.mkdir()
    (bare / "python").symlink_to(system_python)
    storage = tmp_path / "shared" / "cluster-it"
    with LocalCluster(workers=0, cpus=1, node_path=f"{bare}:/usr/bin:/bin") as local:
        study_file = write_study(tmp_path / "study.yaml", minivtab, storage, "file:" + str(tmp_path / "mlruns"))
        answer = _cli(local.env, "submit", str(study_file), "--address", local.address, "--requirements", "none")
        listed = _cli(local.env, "jobs", "list", "--address", local.address).stdout
    assert answer.returncode == 2, answer.stdout + answer.stderr
    error = answer.stderr.strip()
    assert len(error.splitlines()) == 1 and "the cluster's job environment lacks" in error, error
    assert "torch (missing)" in error and "ray (missing)" in error and "--requirements project" in error
    assert "search.cli" not in listed and len(listed.strip().splitlines()) == 1  # the check job only
    assert not storage.exists()


def test_submit_resume_continues_a_stopped_study_on_the_cluster(cluster, tmp_path, minivtab, mlflow_server):
    """A submitted study's job is stopped mid-study; `submit --resume STUDY_DIR` continues it in
    its storage_path: finished trials keep their records, every cell ends, nothing runs twice."""
    env, address = cluster.env, cluster.address
    study_dir = tmp_path / "shared" / "resume-it"
    study_file = write_study(tmp_path / "study.yaml", minivtab, study_dir, mlflow_server)
    study = yaml.safe_load(study_file.read_text())
    study.update(name="resume-it", search={**study["search"], "max_concurrent": 1})
    study_file.write_text(yaml.safe_dump(study))
    submitted = _cli(env, "submit", str(study_file), "--address", address, "--requirements", "none")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split()[1]
    wait_for(lambda: sum(t["status"] == "completed" for t in read_trials(study_dir).values()) >= 2, 300,
             "two finished trials", cluster.head.log)
    assert _cli(env, "jobs", "stop", job_id, "--address", address).returncode == 0
    wait_for(lambda: json.loads(_cli(env, "jobs", "status", job_id, "--address", address, "--json").stdout)
             ["status"] in ("STOPPED", "FAILED", "SUCCEEDED"), 120, "the job to stop", cluster.head.log)
    before = {k: v for k, v in read_trials(study_dir).items() if v["status"] == "completed"}
    assert 2 <= len(before) < 8

    resumed = _cli(env, "submit", "--resume", str(study_dir), "--address", address, "--requirements", "none")
    assert resumed.returncode == 0, resumed.stderr
    resume_id = resumed.stdout.split()[1]
    wait_for(lambda: json.loads(_cli(env, "jobs", "status", resume_id, "--address", address, "--json").stdout)
             ["status"] in ("STOPPED", "FAILED", "SUCCEEDED"), 400, "the resumed job to end", cluster.head.log)
    logs = _cli(env, "jobs", "logs", resume_id, "--address", address).stdout
    status = json.loads(_cli(env, "jobs", "status", resume_id, "--address", address, "--json").stdout)
    assert "resume" in status["entrypoint"] and status["status"] == "SUCCEEDED", logs[-3000:]
    summary = summarize(study_dir)
    assert summary["cells_done"] == 2 and summary["trials_running"] == 0, logs[-3000:]
    after = read_trials(study_dir)
    assert len(after) == 2 * 3 + 2 and summary["duplicate_trials"] == 0
    assert sorted(r["status"] for r in after.values() if r["phase"] == "final") == ["completed"] * 2
    for trial_id, record in before.items():  # finished before the stop: not run again
        assert after[trial_id]["value"] == record["value"] and after[trial_id]["epochs"] == record["epochs"]
    refused = _cli(env, "submit", "--resume", str(tmp_path), "--address", address)
    assert refused.returncode == 2 and "not a study folder" in refused.stderr


def test_the_environment_check_names_a_python_a_version_and_an_import_that_do_not_fit(tmp_path):
    """The check job's script, run here: the python it runs on, a requirement at a version that
    does not fit, and one installed but failing to import (a distribution made for the test)."""
    import json
    from search.cluster.jobs import _CHECK_SCRIPT
    site = tmp_path / "site"
    (site / "brokenpkg-1.0.dist-info").mkdir(parents=True)
    (site / "brokenpkg-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenpkg\nVersion: 1.0\n")
    (site / "brokenpkg-1.0.dist-info" / "top_level.txt").write_text("brokenpkg\n")
    (site / "brokenpkg.py").write_text("raise ImportError('half installed')\n")
    needed = {"requirements": ["numpy<1", "pyyaml", "brokenpkg>=1"], "python": ">=3.99"}
    done = subprocess.run([sys.executable, "-c", _CHECK_SCRIPT, json.dumps(needed)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(site)})
    line = next(x for x in done.stdout.splitlines() if x.startswith("PEFT_SEARCH_CHECK "))
    wrong = json.loads(line.split(" ", 1)[1])["wrong"]
    assert wrong[0].startswith("python 3.") and wrong[0].endswith("(needs >=3.99)")
    assert any(w.startswith("numpy ") and w.endswith("(needs <1)") for w in wrong)
    assert "brokenpkg 1.0 (import brokenpkg fails: ImportError)" in wrong and len(wrong) == 3, wrong
