"""Report tables and figures from imported released results (the shared fixture)."""
import csv
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from search.cli import main

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "petl_tune_output"
pytestmark = pytest.mark.skipif(not FIXTURE.is_dir(), reason="../shared/fixtures not present")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """The whole fixture (3 tasks x 16 methods) imported, tuning rows cut to two per cell."""
    root = tmp_path_factory.mktemp("petl")
    tree = root / "tune_output"
    shutil.copytree(FIXTURE, tree)
    for summary in tree.rglob("tune_summary.csv"):
        summary.write_text("\n".join(summary.read_text().splitlines()[:3]) + "\n")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    assert main(["import-petl", str(tree), "--tracking-uri", uri, "--experiment", "paper"]) == 0
    return uri, tree


def test_vtab_table_values_equal_the_released_final_results(imported, tmp_path):
    uri, tree = imported
    assert main(["report", "--tracking-uri", uri, "--experiment", "paper", "--out", str(tmp_path)]) == 0
    rows = {r["method"]: r for r in csv.DictReader((tmp_path / "vtab1k.csv").open())}
    assert len(rows) == 16
    assert list(next(iter(rows.values())))[:4] == ["method", "dtd", "eurosat", "clevr_count"]
    for result in tree.rglob("final_result.json"):
        task, method = result.parent.parent.name, result.parent.name
        assert float(rows[method][task]) == pytest.approx(json.loads(result.read_text())["avg_acc"])
    lora = rows["lora"]
    # partial groups come only from the tasks present: natural = dtd, specialized = eurosat
    assert float(lora["natural"]) == pytest.approx(float(lora["dtd"]))
    assert float(lora["mean_of_groups"]) == pytest.approx(
        (float(lora["dtd"]) + float(lora["eurosat"]) + float(lora["clevr_count"])) / 3)
    # params: the mean over tasks (the best rank differs per task: 36,864 / 1,179,648 / 589,824)
    released = [json.loads((tree / "default_vtab" / "processed_vtab" / t / "lora" / "final_result.json").read_text())
                for t in ("dtd", "eurosat", "clevr_count")]
    assert int(lora["params"]) == round(sum(r["inserted_parameters"] for r in released) / 3) == 602112
    md = (tmp_path / "vtab1k.md").read_text()
    assert "mean of 3 groups" in md and "mean of tasks" in md and "*" in md  # partial groups flagged
    assert (tmp_path / "vtab1k.tex").read_text().startswith(r"\begin{tabular}")


def test_figure_is_a_non_empty_png_of_the_expected_size(imported, tmp_path):
    uri, _ = imported
    assert main(["report", "--tracking-uri", uri, "--experiment", "paper", "--out", str(tmp_path)]) == 0
    with Image.open(tmp_path / "accuracy_vs_params.png") as img:
        assert img.size == (800, 500) and sum(1 for n in img.convert("L").histogram() if n) > 10


def test_empty_study_says_what_is_missing(tmp_path, capsys):
    from mlflow.tracking import MlflowClient
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("empty")
    assert main(["report", "--tracking-uri", uri, "--experiment", "empty", "--out", str(tmp_path / "r")]) == 0
    assert "no finished final runs yet" in capsys.readouterr().out


def test_compare_to_the_same_results_gives_zero_deltas(imported, tmp_path):
    from search.report.build import report
    uri, _ = imported
    report(uri, "paper", tmp_path, compare_to=(uri, "paper"))
    rows = list(csv.DictReader((tmp_path / "vtab1k.csv").open()))
    deltas = [k for k in rows[0] if k.endswith("_delta")]
    assert {"dtd_delta", "natural_delta", "mean_of_groups_delta", "mean_of_tasks_delta"} <= set(deltas)
    assert all(float(r[k]) == 0.0 for r in rows for k in deltas)
