"""``peft-search evaluate`` / ``wise`` on a CLIP final run logged in MLflow, then ``report``:
the domain-shift (OOD) table, WiSE curve and prediction overlap come from what they logged."""
import csv

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from peft_core.checkpoint import save_adapter
from peft_core.evaluation import evaluate_domains
from peft_core.train import build_model, train, transforms_for
from search.cli import main
from search.report.build import report

from .test_clip import domain_folders, peaked_run


@pytest.fixture()
def clip_final_run(tmp_path, monkeypatch):
    """A tiny-CLIP LoRA final run, logged the way the study's tracker logs one."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    config = peaked_run(tmp_path)
    result = train(config)
    adapter = save_adapter(result.model, tmp_path / "adapter.safetensors")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config.to_dict()))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("clip-ood", artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(experiment, tags={"phase": "final", "cell": "imagenet/lora", "dataset": "imagenet",
                                              "method": "lora", "trial_id": "t1"})
    client.log_artifact(run.info.run_id, str(tmp_path / "config.yaml"))
    client.log_artifact(run.info.run_id, str(adapter))
    client.log_metric(run.info.run_id, "test_top1", result.metrics["test_top1"])
    client.set_terminated(run.info.run_id, "FINISHED")
    return {"config": config, "model": result.model, "uri": uri, "run_id": run.info.run_id,
            "client": client, "roots": domain_folders(tmp_path / "ood")}


def data_args(roots):
    return [arg for name, folder in roots.items() for arg in ("--data", f"{name}={folder}")]


def test_ood_evaluate_logs_every_set_and_predictions_under_the_final_run(clip_final_run, capsys):
    run = clip_final_run
    code = main(["evaluate", "--run", run["run_id"], "--tracking-uri", run["uri"], "--predictions",
                 *data_args(run["roots"])])
    assert code == 0, capsys.readouterr().err
    expected = evaluate_domains(run["model"].eval(), run["roots"], transforms_for(run["config"])[1])
    logged = run["client"].get_run(run["run_id"]).data.metrics
    for name, result in expected.items():
        assert logged[f"eval_{name}_top1"] == pytest.approx(result["top1"])
        assert logged[f"eval_{name}_top5"] == pytest.approx(result["top5"])
    folder = run["client"].download_artifacts(run["run_id"], "predictions")
    saved = np.load(f"{folder}/imagenet_r.npz")
    assert saved["logits"].shape == (8, 1000) and np.isinf(saved["logits"]).any()  # masked to R's classes


def test_wise_at_0_is_the_zero_shot_model_and_at_1_the_fine_tuned_one(clip_final_run, capsys):
    run = clip_final_run
    roots = {"imagenet": run["roots"]["imagenet"], "imagenet_a": run["roots"]["imagenet_a"]}
    code = main(["wise", "--run", run["run_id"], "--tracking-uri", run["uri"], "--alphas", "0,0.5,1",
                 *data_args(roots)])
    assert code == 0, capsys.readouterr().err
    config, transform = run["config"], transforms_for(run["config"])[1]
    torch.manual_seed(config.seed)
    zero_shot = evaluate_domains(build_model(config, 1000).eval(), roots, transform)
    fine_tuned = evaluate_domains(run["model"].eval(), roots, transform)
    for name in roots:
        history = {m.step: m.value for m in run["client"].get_metric_history(run["run_id"], f"wise_{name}_top1")}
        assert sorted(history) == [0, 5, 10]
        assert history[0] == pytest.approx(zero_shot[name]["top1"])
        assert history[10] == pytest.approx(fine_tuned[name]["top1"])


def test_ood_report_builds_the_domain_shift_table_from_evaluate(clip_final_run, tmp_path):
    run = clip_final_run
    assert main(["evaluate", "--run", run["run_id"], "--tracking-uri", run["uri"], *data_args(run["roots"])]) == 0
    result = report(run["uri"], "clip-ood", tmp_path / "report")
    assert "domain_shift" in result["tables"]
    rows = list(csv.DictReader(open(tmp_path / "report" / "domain_shift.csv")))
    metrics = run["client"].get_run(run["run_id"]).data.metrics
    assert len(rows) == 1 and rows[0]["method"] == "lora"
    ood = ["imagenet_v2", "imagenet_sketch", "imagenet_r", "imagenet_a"]
    for name in ["imagenet", *ood]:
        assert float(rows[0][name]) == pytest.approx(metrics[f"eval_{name}_top1"], abs=0.01)
    assert float(rows[0]["ood_mean"]) == pytest.approx(np.mean([metrics[f"eval_{s}_top1"] for s in ood]), abs=0.01)


def test_ood_evaluate_refuses_a_run_that_is_not_a_final_run(clip_final_run, capsys):
    run = clip_final_run
    experiment = run["client"].get_experiment_by_name("clip-ood").experiment_id
    tune = run["client"].create_run(experiment, tags={"phase": "tune"})
    code = main(["evaluate", "--run", tune.info.run_id, "--tracking-uri", run["uri"],
                 "--data", f"imagenet={run['roots']['imagenet']}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "not a finished final run" in err and len(err.splitlines()) == 1
    assert main(["evaluate", "--run", run["run_id"], "--tracking-uri", run["uri"], "--data", "imagenet_x=/"]) == 2
    assert "NAME one of imagenet" in capsys.readouterr().err


def test_ood_evaluate_an_export_logs_under_the_run_it_names(clip_final_run, tmp_path, capsys):
    import json
    import shutil
    run = clip_final_run
    export = tmp_path / "export" / "imagenet__lora"
    export.mkdir(parents=True)
    for name in ("config.yaml", "adapter.safetensors"):
        shutil.copy(tmp_path / name, export / name)
    (export / "metrics.json").write_text(json.dumps({"run_id": run["run_id"], "tracking_uri": run["uri"]}))
    roots = {"imagenet_sketch": run["roots"]["imagenet_sketch"]}
    assert main(["evaluate", "--export", str(export), "--json", *data_args(roots)]) == 0
    printed = json.loads(capsys.readouterr().out.splitlines()[0])
    logged = run["client"].get_run(run["run_id"]).data.metrics
    assert logged["eval_imagenet_sketch_top1"] == pytest.approx(printed["imagenet_sketch"]["top1"])
