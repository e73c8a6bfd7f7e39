"""The search service end to end: real in-process Ray, real MLflow server over HTTP, real Optuna."""
import json

import pytest
import yaml
from mlflow.tracking import MlflowClient

from peft_core.train import TrainConfig
from search.tune.driver import run_study
from search.tune.status import summarize
from search.models.export import export_study
from search.space import grid_points
from search.study_folder import read_asha, read_trials
from search.study import load_study

EPOCHS = 3


def write_study(path, minivtab, **overrides):
    study = {
        "name": "it-study", "backbone": "tiny_vit_b16_in21k", "data_root": str(minivtab),
        "datasets": ["digits"], "methods": ["linear", "lora", "full"],
        "train": {"epoch": EPOCHS, "warmup_epoch": 0, "pretrained": False, "eval_freq": 1,
                  "save_predictions": True},
        "spaces": {"linear": {"lr": {"grid": [0.001, 0.01]}},
                   "lora": {"lr": {"grid": [0.001, 0.01]}, "lora_bottleneck": {"grid": [1, 8]}},
                   # 1e30 diverges: that trial must fail and its cell still complete
                   "full": {"lr": {"grid": [0.0001, 1.0e30]}}},
        "search": {"sampler": "grid", "num_samples": "grid", "max_concurrent": 2,
                   "asha": {"grace_period": 1, "reduction_factor": 2, "max_t": EPOCHS}},
        "resources": {"cpu": 1},
    }
    study.update(overrides)
    path.write_text(yaml.safe_dump(study))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory, minivtab, mlflow_server):
    import ray
    root = tmp_path_factory.mktemp("study")
    study_file = write_study(root / "study.yaml", minivtab, mlflow={"tracking_uri": mlflow_server})
    study_dir = run_study(study_file, root / "out")
    yield load_study(study_file), study_dir, MlflowClient(mlflow_server)
    ray.shutdown()


def trials(study_dir):
    return read_trials(study_dir).values()


def test_every_cell_completes_with_a_final_run(finished):
    study, study_dir, _ = finished
    summary = summarize(study_dir)
    assert summary["cells_done"] == 3 and summary["trials_running"] == 0
    for cell in ("digits/linear", "digits/lora", "digits/full"):
        assert len(summary["cells"][cell]["test_top1"]) == 1
    assert summary["budget"]["epochs"] > 0 and summary["budget"]["trials"] == 2 + 4 + 2 + 3


def test_grid_runs_each_point_exactly_once(finished):
    study, study_dir, _ = finished
    assert summarize(study_dir)["duplicate_trials"] == 0
    for cell in study.cells():
        got = sorted(json.dumps(t["params"], sort_keys=True) for t in trials(study_dir)
                     if t["cell"] == cell.id and t["phase"] == "tune")
        want = sorted(json.dumps(p, sort_keys=True) for p in grid_points(study.space(cell.method)))
        assert got == want, cell.id


def test_asha_stops_weak_trials_within_their_cell(finished):
    study, study_dir, _ = finished
    rungs = read_asha(study_dir)
    pruned = [t for t in trials(study_dir) if t["status"] == "pruned"]
    assert pruned, "ASHA stopped nothing"
    assert set(rungs["stopped"]) == {t["trial_id"] for t in pruned}
    for t in pruned:
        assert t["epochs"] < EPOCHS
        # its cell's rung holds it, and only trials of that cell
        rung = rungs["rungs"][t["cell"]][str(t["epochs"])]
        cell_ids = {x["trial_id"] for x in trials(study_dir) if x["cell"] == t["cell"]}
        assert t["trial_id"] in rung and set(rung) <= cell_ids


def test_nan_trial_fails_and_its_cell_completes(finished):
    _, study_dir, client = finished
    diverged = [t for t in trials(study_dir) if t["params"].get("lr") == 1.0e30]
    assert len(diverged) == 1 and diverged[0]["status"] == "failed"
    final = [t for t in trials(study_dir) if t["cell"] == "digits/full" and t["phase"] == "final"]
    assert final and final[0]["params"]["lr"] == 0.0001 and final[0]["status"] == "completed"
    runs = client.search_runs([client.get_experiment_by_name("it-study").experiment_id],
                              filter_string=f"tags.trial_id = '{diverged[0]['trial_id']}'")
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert diverged[0]["error"].startswith("TrainingDiverged")  # reported once, never retried
    assert runs[0].data.tags["trial_error"] == diverged[0]["error"]


def test_mlflow_tree_matches_the_spec(finished):
    study, study_dir, client = finished
    experiment = client.get_experiment_by_name("it-study")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = {r.data.tags["cell"]: r for r in runs if r.data.tags.get("phase") == "cell"}
    assert set(parents) == {c.id for c in study.cells()}
    for cell, parent in parents.items():
        tags = parent.data.tags
        assert (tags["study"], tags["dataset"], tags["method"], tags["backbone"]) == (
            "it-study", "digits", cell.split("/")[1], "tiny_vit_b16_in21k")
        assert parent.info.status == "FINISHED" and "test_top1_mean" in parent.data.metrics
    children = [r for r in runs if r.data.tags.get("phase") in ("tune", "final")]
    assert len(children) == len(list(trials(study_dir)))  # one run per trial, none twice
    for run in children:
        cell = run.data.tags["cell"]
        assert run.data.tags["mlflow.parentRunId"] == parents[cell].info.run_id
        assert run.data.params["method"] == cell.split("/")[1]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert "config.yaml" in artifacts
        if run.data.tags["phase"] == "tune" and run.info.status == "FINISHED":
            history = client.get_metric_history(run.info.run_id, "val_top1")
            assert [m.step for m in history] == list(range(1, EPOCHS + 1))
            for key in ("train_loss", "train_top1", "val_loss", "lr", "inserted_params",
                        "epochs_run", "trial_seconds"):
                assert key in run.data.metrics, key
            # the searched keys, and (#15) every training setting besides them
            assert {"lr", "epoch", "batch_size"} <= set(run.data.params)
            assert set(run.data.params) - {"method"} - set(TrainConfig.keys()) <= {"lora_bottleneck"}
        if run.data.tags["phase"] == "final":
            assert {"test_top1", "test_top5"} <= set(run.data.metrics) and "seed" in run.data.params
            assert "val_top1" not in run.data.metrics  # the final run never touches val for selection
            assert "adapter.safetensors" in artifacts


def test_export_then_train_reproduces_the_final_metric(finished, tmp_path, capsys):
    from search.cli import main
    _, study_dir, _ = finished
    exported = {info["cell"]: info for info in export_study(study_dir, tmp_path / "export")}
    assert set(exported) == {"digits/linear", "digits/lora", "digits/full"}
    assert exported["digits/lora"]["merged"] and (tmp_path / "export" / "digits__lora" / "merged.safetensors").is_file()
    assert main(["train", "--config", str(tmp_path / "export" / "digits__lora" / "config.yaml")]) == 0
    rerun = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rerun["test_top1"] == pytest.approx(exported["digits/lora"]["test_top1"], abs=1e-9)


def test_status_json_has_the_documented_keys(finished, capsys):
    from search.cli import main
    _, study_dir, _ = finished
    assert main(["status", str(study_dir), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    for key in ("cells", "cells_done", "trials_finished", "trials_running", "duplicate_trials", "best", "budget"):
        assert key in status


def test_report_tables_a_finished_study(finished, tmp_path):
    import csv

    from search.cli import main
    _, study_dir, _ = finished
    assert main(["report", str(study_dir), "--out", str(tmp_path)]) == 0
    rows = {r["method"]: r for r in csv.DictReader((tmp_path / "datasets.csv").open())}
    final = [t for t in trials(study_dir) if t["cell"] == "digits/lora" and t["phase"] == "final"][0]
    assert float(rows["lora"]["digits"]) == pytest.approx(final["metrics"]["test_top1"], abs=1e-3)
    assert set(rows) == {"linear", "lora", "full"} and (tmp_path / "datasets.md").is_file()


def test_final_runs_keep_test_predictions_and_report_their_overlap(finished, tmp_path):
    import csv

    import numpy as np

    from search.cli import main
    _, study_dir, client = finished
    experiment = client.get_experiment_by_name("it-study")
    finals = client.search_runs([experiment.experiment_id], "tags.phase = 'final'")
    assert len(finals) == 3
    for run in finals:
        saved = np.load(client.download_artifacts(run.info.run_id, "predictions/test.npz", str(tmp_path)))
        top1 = 100.0 * (saved["logits"].argmax(1) == saved["labels"]).mean()
        assert top1 == pytest.approx(run.data.metrics["test_top1"], abs=1e-6)
    assert main(["report", str(study_dir), "--out", str(tmp_path / "report"), "--top-k", "20"]) == 0
    rows = list(csv.DictReader((tmp_path / "report" / "overlap.csv").open()))
    assert {r["method"] for r in rows} == {"linear", "lora", "full"}


def test_the_study_folder_keeps_the_study_as_it_started(finished, tmp_path):
    from search.study_folder import STUDY_COPY, load_study_dir
    study, study_dir, _ = finished
    frozen = yaml.safe_load((study_dir / STUDY_COPY).read_text())
    assert "include" not in frozen and frozen["data_root"].startswith("/")
    source = study.source
    original = source.read_text()
    try:  # the source is edited (or moved) while the study runs: resume and status never see it
        edited = yaml.safe_load(original)
        edited["methods"], edited["search"]["max_concurrent"] = ["ssf"], 7
        source.write_text(yaml.safe_dump(edited))
        reloaded, _ = load_study_dir(study_dir)
        assert reloaded.methods == study.methods and reloaded.search.max_concurrent == 2
        source.unlink()
        assert load_study_dir(study_dir)[0].cells() == study.cells()
        assert summarize(study_dir)["cells_done"] == 3
    finally:
        source.write_text(original)


def test_every_trial_run_carries_every_setting_as_a_parameter(finished):
    study, _, client = finished
    experiment = client.get_experiment_by_name(study.experiment)
    runs = client.search_runs([experiment.experiment_id], "tags.phase = 'tune' and tags.method = 'lora'")
    assert len(runs) == 4
    for run in runs:
        params = run.data.params
        for key in ("epoch", "warmup_epoch", "batch_size", "drop_path_rate", "lr", "wd", "lora_bottleneck",
                    "backbone", "seed", "method"):
            assert key in params, key
        assert params["epoch"] == str(EPOCHS) and params["method"] == "lora"
    assert {r.data.params["lora_bottleneck"] for r in runs} == {"1", "8"}


def test_each_cells_run_summarises_its_selected_trial_with_a_table_and_a_plot(finished, tmp_path):
    import csv
    study, study_dir, client = finished
    experiment = client.get_experiment_by_name("it-study").experiment_id
    records = read_trials(study_dir)
    for parent in client.search_runs([experiment], "tags.phase = 'cell'"):
        cell = parent.data.tags["cell"]
        final = next(r for r in records.values() if r["cell"] == cell and r["phase"] == "final")
        selected = records[final["selected_from"]]
        assert parent.data.tags["selected_trial"] == selected["trial_id"]
        assert parent.data.metrics["val_top1"] == pytest.approx(selected["value"])
        assert {k: parent.data.params[k] for k in selected["params"]} == {k: str(v) for k, v in selected["params"].items()}
        folder = tmp_path / cell.replace("/", "__")
        table = client.download_artifacts(parent.info.run_id, "trials.csv", str(folder))
        with open(table) as f:
            rows = list(csv.DictReader(f))
        assert [r["trial_id"] for r in rows] == [t for t, r in records.items() if r["cell"] == cell and r["phase"] == "tune"] \
            + [t for t, r in records.items() if r["cell"] == cell and r["phase"] == "final"]
        assert {r["status"] for r in rows} <= {"completed", "pruned", "failed", "early_stopped"}
        png = client.download_artifacts(parent.info.run_id, "search.png", str(folder))
        assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
        frozen = client.download_artifacts(parent.info.run_id, "study.yaml", str(folder))
        assert open(frozen).read() == (study_dir / "study.yaml").read_text()  # the study as it started


def test_the_experiment_describes_the_study_it_holds(finished):
    _, study_dir, client = finished
    note = client.get_experiment_by_name("it-study").tags["mlflow.note.content"]
    assert "Study `it-study`" in note and yaml.safe_load(note.split("```yaml\n")[1].split("```")[0]) == \
        yaml.safe_load((study_dir / "study.yaml").read_text())
