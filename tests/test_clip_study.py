"""A CLIP study end to end on the tiny CLIP backbone: the real CLI, Ray and MLflow (no faked
run). The LoRA final run selects on validation and stops early (patience); it is a completed
run that is reported, exported and evaluated on the domain-shift sets; the zero_shot cell, a
trial with nothing to train, gets its final run and its row in the report."""
import csv
import json

import yaml
from mlflow.tracking import MlflowClient

from search.cli import main
from search.study_folder import read_trials, tracking_source
from search.tune.status import summarize

from .studies import run_study
from .test_clip import domain_folders, peaked_run


def test_clip_study_with_an_early_stopped_final_run_and_a_zero_shot_cell(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    run = peaked_run(tmp_path)  # lists under tmp_path/data, labelled so that seed 0's val peaks at epoch 1
    train = {key: getattr(run, key) for key in ("pretrained", "class_names", "templates", "epoch", "warmup_epoch",
                                                "lr", "batch_size", "eval_freq", "drop_path_rate", "final_acc_hp")}
    out = run_study({
        "name": "clip", "backbone": "tiny_clip", "data_root": str(tmp_path / "data"),
        "datasets": {"imagenet": {"format": "lists"}},
        "methods": ["zero_shot", "lora"], "train": {**train, "early_patience": 1},
        "spaces": {"lora": {"lr": {"grid": [run.lr]}}},
        "search": {"sampler": "grid", "max_concurrent": 1}, "final": {"seeds": [run.seed]}}, tmp_path)

    finals = {r["cell"]: r for r in read_trials(out).values() if r["phase"] == "final"}
    assert set(finals) == {"imagenet/zero_shot", "imagenet/lora"}
    assert (finals["imagenet/zero_shot"]["status"], finals["imagenet/zero_shot"]["epochs"]) == ("completed", 0)
    # stopped by its patience at epoch 3 of 4 (not pruned): tested on epoch 1's weights, its best on val
    assert (finals["imagenet/lora"]["status"], finals["imagenet/lora"]["epochs"]) == ("early_stopped", 3)
    assert summarize(out)["cells"]["imagenet/lora"]["test_top1"] == [100.0]
    uri, experiment = tracking_source(out)
    client = MlflowClient(uri)
    runs = {r.data.tags["cell"]: r for r in client.search_runs(
        [client.get_experiment_by_name(experiment).experiment_id], "tags.phase = 'final'")}
    lora = runs["imagenet/lora"]
    assert lora.info.status == "FINISHED" and lora.data.tags["state"] == "early_stopped"
    assert lora.data.metrics["selected_epoch"] == 1 and lora.data.metrics["test_top1"] == 100.0

    # exported: the merged timm weights and the normalised text head, for both cells
    assert main(["export", str(out), "--out", str(tmp_path / "export")]) == 0
    for cell in ("imagenet__lora", "imagenet__zero_shot"):
        assert (tmp_path / "export" / cell / "classifier.safetensors").is_file(), cell
    # evaluated on the domain-shift sets, under each final run
    roots = domain_folders(tmp_path / "ood")
    data = [arg for name, folder in roots.items() for arg in ("--data", f"{name}={folder}")]
    for cell, final in runs.items():
        assert main(["evaluate", "--run", final.info.run_id, "--tracking-uri", uri, *data]) == 0, cell
    logged = client.get_run(lora.info.run_id).data.metrics
    assert {f"eval_{name}_top1" for name in roots} <= set(logged)

    # reported: both cells in the domain-shift table, zero_shot among them
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    rows = {r["method"]: r for r in csv.DictReader(open(tmp_path / "report" / "domain_shift.csv"))}
    assert set(rows) == {"zero_shot", "lora"}
    for method, final in (("lora", lora), ("zero_shot", runs["imagenet/zero_shot"])):
        metrics = client.get_run(final.info.run_id).data.metrics
        assert abs(float(rows[method]["imagenet"]) - metrics["eval_imagenet_top1"]) < 0.01
    summary = json.loads((tmp_path / "export" / "imagenet__lora" / "metrics.json").read_text())
    assert summary["run_id"] == lora.info.run_id and yaml.safe_load(
        (tmp_path / "export" / "imagenet__lora" / "config.yaml").read_text())["method"] == "lora"
