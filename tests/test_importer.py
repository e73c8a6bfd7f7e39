"""Importing the study's released results (the shared fixture) into our MLflow layout."""
import json
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from search.cli import main

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "petl_tune_output"
pytestmark = pytest.mark.skipif(not FIXTURE.is_dir(), reason="../shared/fixtures not present")


def test_import_petl_writes_the_same_tree_as_our_studies(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sample = tmp_path / "tune_output" / "default_vtab" / "processed_vtab"
    for task in ("dtd", "eurosat"):  # two tasks x two methods keep the test short
        for method in ("lora", "vpt_deep"):
            shutil.copytree(FIXTURE / "default_vtab" / "processed_vtab" / task / method, sample / task / method)
    assert main(["import-petl", str(tmp_path / "tune_output"), "--tracking-uri", uri,
                 "--experiment", "petl"]) == 0
    assert "imported 4 cells" in capsys.readouterr().out
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("petl").experiment_id
    for task in ("dtd", "eurosat"):
        for method in ("lora", "vpt_deep"):
            folder = sample / task / method
            expected = json.loads((folder / "final_result.json").read_text())
            cell = f"{task}/{method}"
            runs = client.search_runs([experiment], filter_string=f"tags.cell = '{cell}'", max_results=500)
            finals = [r for r in runs if r.data.tags["phase"] == "final"]
            tune = [r for r in runs if r.data.tags["phase"] == "tune"]
            parent = [r for r in runs if r.data.tags["phase"] == "cell"][0]
            rows = len((folder / "tune_summary.csv").read_text().strip().splitlines()) - 1
            assert len(tune) == rows and all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in runs
                                             if r.data.tags["phase"] != "cell")
            mean = sum(r.data.metrics["test_top1"] for r in finals) / len(finals)
            assert mean == pytest.approx(expected["avg_acc"])
            assert parent.data.metrics["test_top1_mean"] == pytest.approx(expected["avg_acc"])
            assert finals[0].data.metrics["inserted_params"] == expected["inserted_parameters"]


@pytest.mark.parametrize("target,content,needle", [
    ("tune_summary.csv", 'param_set,train_loss,train_top1,train_top5,val_loss,val_top1,val_top5\n'
                         '"{\'lr\': 0.1}",0.1,90,99,0.5,80,95\n"__import__(\'os\')",0.1,90,99,0.5,80,95\n',
     "tune_summary.csv:3: param_set is not a dict literal"),
    ("tune_summary.csv", 'param_set,train_loss,train_top1,train_top5,val_loss,val_top1,val_top5\n'
                         '"{\'lr\': 0.1}",0.1,90,99,0.5,eighty,95\n', "tune_summary.csv:2: 'val_top1'"),
    ("final_result.json", '{"avg_acc": 70.1,', "final_result.json:1:"),
])
def test_malformed_files_name_file_and_line(tmp_path, capsys, target, content, needle):
    folder = tmp_path / "out" / "exp" / "vtab" / "dtd" / "lora"
    shutil.copytree(FIXTURE / "default_vtab" / "processed_vtab" / "dtd" / "lora", folder)
    (folder / target).write_text(content)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["import-petl", str(tmp_path / "out"), "--tracking-uri", uri, "--experiment", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
    assert MlflowClient(uri).get_experiment_by_name("x") is None  # nothing written
