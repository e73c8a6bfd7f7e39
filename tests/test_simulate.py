"""``simulate``: the paper's study replayed on its released results, killed with SIGKILL after
500+ trials, resumed, and reported: every method's released test top-1 per task comes back."""
import csv
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from search.cli import main
from search.study_folder import read_cells, read_mlflow_runs, read_trials, tracking_source
from search.tune.status import summarize, totals

from .processes import cli, kill_group, run_to_end

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT.parent / "shared" / "fixtures" / "petl_tune_output"
RELEASED = FIXTURE / "default_vtab" / "processed_vtab"
TASKS = ["dtd", "clevr_count", "eurosat"]
pytestmark = pytest.mark.skipif(not FIXTURE.is_dir(), reason="../shared/fixtures not present")


@pytest.fixture
def fast_dir(tmp_path):
    """A tmpfs folder when the machine has one: 1,600 trials commit to SQLite several times each."""
    shm = Path("/dev/shm")
    folder = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() and os.access(shm, os.W_OK) else tmp_path / "fast"
    folder.mkdir(exist_ok=True)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def released(task: str, method: str) -> dict:
    return json.loads((RELEASED / task / method / "final_result.json").read_text())


def test_simulate_killed_and_resumed_reports_the_released_scores(fast_dir, tmp_path):
    study_file = fast_dir / "study.yaml"
    study_file.write_text(yaml.safe_dump({
        "include": [str(ROOT / "spaces" / "vtab1k.yaml")], "name": "replay-fixture", "datasets": TASKS,
        "search": {"max_concurrent": 1}, "mlflow": {"tracking_uri": f"sqlite:///{fast_dir / 'mlflow.db'}"}}))
    study_dir = fast_dir / "study"
    log = open(tmp_path / "driver.log", "w")
    driver = cli("simulate", str(study_file), "--replay", str(FIXTURE), "--out", str(study_dir), stdout=log, stderr=log)
    deadline = time.time() + 600
    try:
        while totals(read_cells(study_dir))["trials_finished"] < 600:
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            assert time.time() < deadline, "the replay never reached 600 trials"
            time.sleep(0.2)
    finally:
        kill_group(driver)
    before = read_trials(study_dir)
    finished_before = {k: v for k, v in before.items() if v["status"] != "running"}
    runs_before = read_mlflow_runs(study_dir)["trials"]

    run_to_end(cli("resume", str(study_dir), stdout=log, stderr=log), 900, log)

    summary = summarize(study_dir)
    grids = {t: 516 for t in TASKS}  # the paper's grids: 516 tuning runs per task, one final per cell
    assert summary["cells_done"] == 48 and summary["trials_running"] == 0 and summary["duplicate_trials"] == 0
    assert summary["trials_finished"] == sum(grids.values()) + 48
    after = read_trials(study_dir)
    for trial_id, record in finished_before.items():  # kept, not rerun
        assert after[trial_id] == record
    uri, experiment_name = tracking_source(study_dir)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(experiment_name).experiment_id
    runs, token = [], None
    while True:
        page = client.search_runs([experiment], "tags.phase != 'cell'", max_results=5000, page_token=token)
        runs, token = runs + list(page), page.token
        if not token:
            break
    by_trial: dict[str, list] = {}
    for run in runs:
        by_trial.setdefault(run.data.tags["trial_id"], []).append(run)
    assert set(by_trial) == set(after)  # one MLflow run per trial, none for a forgotten one
    odd = {t: [r.info.status for r in found] for t, found in by_trial.items()
           if len(found) != 1 or found[0].info.status != "FINISHED"}
    assert not odd, {t: (statuses, after[t]["status"]) for t, statuses in odd.items()}
    assert all(by_trial[t][0].info.run_id == runs_before[t] for t in finished_before)
    cells = client.search_runs([experiment], "tags.phase = 'cell'", max_results=1000)
    assert len(cells) == 48 and {r.info.status for r in cells} == {"FINISHED"}  # every cell closed
    assert all("selected_trial" in r.data.tags and "lr" in r.data.params for r in cells)

    out = tmp_path / "report"
    assert main(["report", str(study_dir), "--out", str(out)]) == 0
    with (out / "vtab1k.csv").open() as f:
        table = {row["method"]: row for row in csv.DictReader(f)}
    methods = yaml.safe_load((ROOT / "spaces" / "vtab1k.yaml").read_text())["methods"]
    assert set(table) == set(methods)
    for method in methods:
        for task in TASKS:
            if (task, method) == ("clevr_count", "linear"):
                assert table[method][task] == ""  # missing, never another point's value
            else:
                assert float(table[method][task]) == pytest.approx(released(task, method)["avg_acc"]), (task, method)
    missing = (out / "missing.txt").read_text()
    assert "clevr_count/linear (test_top1 not released" in missing
    assert "{'lr': 0.01, 'wd': 0.0001}" in missing  # the point the release ran its final on


LORA = {"lr": {"grid": [0.001, 0.01]}, "wd": {"grid": [0.0001, 0.001]}, "lora_bottleneck": {"grid": [1, 8]}}


@pytest.mark.parametrize("change, message", [
    ({"spaces": {"lora": {**LORA, "lr": {"loguniform": [1.0e-4, 1.0e-2]}}}, "search": {"num_samples": 4}},
     "spaces.lora.lr: a loguniform range cannot be replayed"),
    ({"spaces": {"lora": {**LORA, "lr": {"grid": [0.001, 0.003]}}}},
     "cell dtd/lora: the release never ran the point {'lora_bottleneck': 1, 'lr': 0.003"),
    ({"datasets": ["dtd", "cifar"]}, "no released results for cell cifar/lora"),
])
def test_simulate_refuses_what_the_release_cannot_answer(tmp_path, capsys, change, message):
    study = {"name": "replay-bad", "backbone": "vit_b16_in21k", "checkpoint": str(tmp_path / "absent.npz"),
             "data_root": str(tmp_path / "absent"), "datasets": ["dtd"], "methods": ["lora"],
             "spaces": {"lora": LORA}, "search": {"num_samples": 8}, **change}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    code = main(["simulate", str(tmp_path / "study.yaml"), "--replay", str(FIXTURE), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
