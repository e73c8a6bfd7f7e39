"""Report tables and figures from small MLflow experiments written here with the study's layout
(SPEC section 7) and the evaluate/wise/predictions conventions: many-shot, domain shift, WiSE,
prediction overlap, budget, missing cells, --compare-to deltas."""
import csv
import time

import numpy as np
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from PIL import Image

from search.report.overlap import prediction_overlap
from search.report.build import report
from search.report.datasets import dataset_key, manyshot_split

OURS = {  # (dataset, method): test top-1 of each final run (one per seed)
    ("dtd", "lora"): [70.0, 72.0], ("dtd", "linear"): [60.0], ("dtd", "full"): [65.0],
    ("eurosat", "lora"): [90.0], ("eurosat", "linear"): [],  # declared, no final run
    ("cifar100_500", "lora"): [40.0], ("cifar100_1k", "lora"): [50.0], ("cifar100", "lora"): [80.0],
    ("cifar100_500", "full"): [35.0], ("cifar100_1k", "full"): [],
    ("imagenet_fewshot", "full"): [75.0], ("imagenet_fewshot", "lora"): [76.0],
}
THEIRS = {("dtd", "lora"): [69.0], ("dtd", "linear"): [61.0], ("cifar100_500", "lora"): [38.0],
          ("imagenet_fewshot", "full"): [74.0]}
EVAL = {  # final-run metrics logged by `peft-search evaluate`
    ("imagenet_fewshot", "full"): {"imagenet": 75.0, "imagenet_v2": 65.0, "imagenet_sketch": 45.0,
                                   "imagenet_r": 60.0, "imagenet_a": 30.0},
    ("imagenet_fewshot", "lora"): {"imagenet": 76.0, "imagenet_v2": 66.0, "imagenet_sketch": 46.0,
                                   "imagenet_r": 62.0},  # imagenet_a not evaluated
}
LABELS = np.array([0, 1, 2, 0, 1, 2])
# method -> its correct samples, most confident first (the rest are wrong)
CORRECT = {"lora": [0, 1, 3, 2], "full": [4, 0, 1, 5], "linear": [0, 2, 4]}


def logits_for(order: list[int]) -> np.ndarray:
    logits = np.zeros((len(LABELS), 3))
    for i, label in enumerate(LABELS):
        if i in order:
            logits[i, label] = 10.0 - order.index(i)
        else:
            logits[i, (label + 1) % 3] = 5.0
    return logits


def _run(client, experiment_id, dataset, method, phase, parent, metrics=(), params=(), status="FINISHED",
         study="ours"):
    tags = {"study": study, "dataset": dataset, "method": method, "phase": phase, "mlflow.parentRunId": parent,
            "cell": f"{dataset}/{method}"}
    run_id = client.create_run(experiment_id, tags=tags).info.run_id
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v, step in metrics],
                     params=[Param(k, str(v)) for k, v in params])
    if status != "RUNNING":
        client.set_terminated(run_id, status)
    return run_id


def make_study(client, name, cells, root, extra=True, eval_shift=0.0):
    experiment_id = client.create_experiment(name, artifact_location=(root / name).as_uri())
    for (dataset, method), scores in cells.items():
        parent = client.create_run(experiment_id, tags={"study": name, "dataset": dataset, "method": method,
                                                        "phase": "cell", "cell": f"{dataset}/{method}"}).info.run_id
        for seed, top1 in enumerate(scores, start=42):
            metrics = [("test_top1", top1, 0), ("inserted_params", 1000.0 * len(method), 0),
                       ("epochs_run", 10.0, 10), ("trial_seconds", 7.0, 10)]
            metrics += [(f"eval_{s}_top1", v + eval_shift, 0) for s, v in EVAL.get((dataset, method), {}).items()]
            if extra and (dataset, method) == ("imagenet_fewshot", "full"):
                metrics += [(f"wise_{s}_top1", base + step, step) for step in (0, 5, 10)
                            for s, base in (("imagenet", 60.0), ("imagenet_v2", 50.0), ("imagenet_sketch", 40.0),
                                            ("imagenet_r", 60.0), ("imagenet_a", 30.0))]
            run_id = _run(client, experiment_id, dataset, method, "final", parent, metrics, [("seed", seed)])
            if extra and dataset == "dtd" and seed == 42:
                np.savez(root / "test.npz", logits=logits_for(CORRECT[method]), labels=LABELS)
                client.log_artifact(run_id, str(root / "test.npz"), "predictions")
                shifted = LABELS if method == "lora" else LABELS[::-1]
                np.savez(root / "shifted.npz", logits=logits_for(CORRECT[method]), labels=shifted)
                client.log_artifact(run_id, str(root / "shifted.npz"), "predictions")
    return experiment_id


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("studies")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    ours = make_study(client, "ours", OURS, root)
    make_study(client, "theirs", THEIRS, root, extra=False, eval_shift=-1.0)
    # dtd/lora's tuning: two finished trials and one pruned; dtd/adaptformer's final run still running
    parent = client.search_runs([ours], "tags.phase = 'cell' and tags.cell = 'dtd/lora'")[0].info.run_id
    for epochs, seconds, status in ((10, 5.0, "FINISHED"), (10, 6.0, "FINISHED"), (3, 1.5, "KILLED")):
        _run(client, ours, "dtd", "lora", "tune", parent, [("epochs_run", epochs, epochs),
                                                           ("trial_seconds", seconds, epochs)], status=status)
    _run(client, ours, "dtd", "adaptformer", "final", parent, [("val_top1", 50.0, 1)], status="RUNNING")
    out = root / "report"
    result = report(uri, "ours", out, compare_to=(uri, "theirs"), top_k=1000)
    return out, result, uri


def rows(path, *keys):
    return {tuple(r[k] for k in keys): r for r in csv.DictReader(path.open())}


def test_manyshot_table_per_size_with_missing_and_deltas(studies):
    out, *_ = studies
    with (out / "manyshot_cifar100.csv").open() as f:
        assert next(csv.reader(f))[:5] == ["method", "500", "500_delta", "1k", "1k_delta"]
    table = rows(out / "manyshot_cifar100.csv", "method")
    assert float(table[("lora",)]["500"]) == 40.0 and float(table[("lora",)]["full"]) == 80.0
    assert float(table[("lora",)]["500_delta"]) == pytest.approx(40.0 - 38.0)
    assert table[("full",)]["1k"] == "" and table[("lora",)]["1k_delta"] == ""  # missing, not zero
    assert "| full | 35.00 | missing | missing |" in (out / "manyshot_cifar100.md").read_text()
    for ext in ("md", "tex"):
        assert (out / f"manyshot_cifar100.{ext}").stat().st_size > 0
    # the many-shot sets stay out of the VTAB-1K and other-datasets tables
    assert "cifar100" not in (out / "vtab1k.csv").read_text() + (out / "datasets.csv").read_text()


def test_vtab_values_std_missing_and_deltas(studies):
    out, result, _ = studies
    table = rows(out / "vtab1k.csv", "method")
    lora = table[("lora",)]
    assert float(lora["dtd"]) == 71.0 and float(lora["dtd_std"]) == pytest.approx(np.std([70, 72], ddof=1), abs=1e-4)
    assert float(lora["dtd_delta"]) == pytest.approx(71.0 - 69.0)
    assert float(table[("linear",)]["dtd_delta"]) == pytest.approx(60.0 - 61.0)
    assert lora["eurosat_delta"] == ""  # theirs has no eurosat
    # a mean is compared only where both sides average the same tasks: lora's covers dtd+eurosat here
    assert float(lora["natural_delta"]) == pytest.approx(2.0) and lora["mean_of_groups_delta"] == ""
    assert float(table[("linear",)]["mean_of_groups_delta"]) == pytest.approx(-1.0)
    assert table[("linear",)]["eurosat"] == "" and table[("adaptformer",)]["dtd"] == ""
    md = (out / "vtab1k.md").read_text()
    assert "71.00 ± 1.41" in md and "+2.00" in md and "| linear | 60.00 | -1.00 | missing |" in md
    assert r"$\Delta$ dtd" in (out / "vtab1k.tex").read_text()
    missing = (out / "missing.txt").read_text().splitlines()
    for line in ("vtab1k: eurosat/linear", "vtab1k: dtd/adaptformer", "manyshot_cifar100: cifar100_1k/full",
                 "domain_shift: imagenet_fewshot/lora A", "still running: 1 runs (not in the tables)"):
        assert line in missing and line in result["missing"]


def test_domain_shift_values_and_partial_ood_mean(studies):
    out, *_ = studies
    table = rows(out / "domain_shift.csv", "dataset", "method")
    full, lora = table[("imagenet_fewshot", "full")], table[("imagenet_fewshot", "lora")]
    assert [float(full[s]) for s in ("imagenet", "imagenet_v2", "imagenet_sketch", "imagenet_r", "imagenet_a")] \
        == [75.0, 65.0, 45.0, 60.0, 30.0]
    assert float(full["ood_mean"]) == pytest.approx((65 + 45 + 60 + 30) / 4)
    assert float(lora["ood_mean"]) == pytest.approx((66 + 46 + 62) / 3) and lora["imagenet_a"] == ""
    assert "ood_mean" in lora["partial"].split(";") and "ood_mean" not in full["partial"].split(";")
    assert float(full["imagenet_delta"]) == pytest.approx(1.0) and float(full["ood_mean_delta"]) == pytest.approx(1.0)
    assert lora["imagenet_delta"] == ""  # theirs has no lora
    others = rows(out / "datasets.csv", "method")
    assert float(others[("full",)]["imagenet_fewshot_delta"]) == pytest.approx(75.0 - 74.0)
    md = (out / "domain_shift.md").read_text()
    assert "| IN |" in md and "OOD mean" in md and f"{(66 + 46 + 62) / 3:.2f}*" in md


def test_wise_points_equal_the_logged_history(studies):
    out, *_ = studies
    table = rows(out / "wise.csv", "method", "alpha")
    assert sorted(a for _, a in table) == ["0.0", "0.5", "1.0"]
    half = table[("full", "0.5")]
    assert float(half["imagenet"]) == 65.0
    assert float(half["ood_mean"]) == pytest.approx((55 + 45 + 65 + 35) / 4)


def test_overlap_counts_equal_the_hand_count(studies):
    # top-3 confident correct: lora {0,1,3}, full {4,0,1}, linear {0,2,4}; all three share {0}
    expected = {"lora": (3, 1, 1, 1), "full": (3, 1, 2, 0), "linear": (3, 1, 1, 1)}
    direct = prediction_overlap({m: (logits_for(c), LABELS) for m, c in CORRECT.items()}, k=1000)
    assert {m: tuple(c.values()) for m, c in direct.items()} == expected
    assert prediction_overlap({m: (logits_for(c), LABELS) for m, c in CORRECT.items()}, k=2)["full"] == \
        {"k": 2, "shared_with_all": 1, "shared_with_some": 0, "unique": 1}  # {4,0}; lora {0,1}, linear {0,2}
    out, result, _ = studies
    table = rows(out / "overlap.csv", "dataset", "set", "method")
    assert {m: tuple(int(r[c]) for c in ("k", "shared_with_all", "shared_with_some", "unique"))
            for (d, s, m), r in table.items() if (d, s) == ("dtd", "test")} == expected
    assert not any(s == "shifted" for _, s, _ in table)  # labels differ between methods: skipped, said so
    assert any(line.startswith("overlap: dtd/shifted: labels differ") for line in result["missing"])


def test_budget_sums_epochs_and_seconds_per_cell(studies):
    out, *_ = studies
    table = rows(out / "budget.csv", "dataset", "method")
    lora = table[("dtd", "lora")]
    assert (lora["trials"], lora["pruned"], lora["failed"], lora["final_runs"]) == ("3", "1", "0", "2")
    assert lora["tune_epochs"] == "23" and float(lora["tune_seconds"]) == 12.5
    assert float(lora["final_epochs"]) == 20 and float(lora["total_seconds"]) == 12.5 + 14.0
    assert table[("eurosat", "linear")]["trials"] == "0" and table[("eurosat", "linear")]["tune_seconds"] == ""
    assert table[("dtd", "adaptformer")]["final_runs"] == "1"
    assert float(table[("all", "all")]["tune_seconds"]) == 12.5


@pytest.mark.parametrize("name,size", [("accuracy_vs_params.png", (800, 500)), ("group_means.png", (1000, 500)),
                                       ("gain_over_linear.png", (1000, 500)), ("wise.png", (800, 600)),
                                       ("overlap_dtd_test.png", (800, 500))])
def test_figures_are_non_empty_pngs(studies, name, size):
    out, result, _ = studies
    assert name in result["figures"]
    with Image.open(out / name) as img:
        assert img.format == "PNG" and img.size == size
        assert sum(1 for n in img.convert("L").histogram() if n) > 10


def test_running_study_without_finals_reports_progress(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("running", artifact_location=(tmp_path / "a").as_uri())
    parent = client.create_run(experiment_id, tags={"dataset": "dtd", "method": "lora", "phase": "cell"}).info.run_id
    _run(client, experiment_id, "dtd", "lora", "tune", parent, [("val_top1", 40.0, 1)], status="RUNNING")
    result = report(uri, "running", tmp_path / "r")
    assert result["missing"][0] == "every cell: no finished final runs yet"
    assert "still running: 1 runs (not in the tables)" in (tmp_path / "r" / "missing.txt").read_text()
    assert rows(tmp_path / "r" / "budget.csv", "dataset", "method")[("dtd", "lora")]["running"] == "1"
    assert not (tmp_path / "r" / "vtab1k.csv").exists()


def test_dataset_names():
    assert manyshot_split("cifar100_1k") == ("cifar100", "1k") and manyshot_split("cifar100") == ("cifar100", "full")
    assert manyshot_split("resisc45-225") == ("resisc45", "225") and manyshot_split("clevr") == ("clevr", "full")
    assert manyshot_split("resisc45") is None and manyshot_split("digits_rot") is None
    assert dataset_key({"dataset": "processed_vtab-dtd"}) == "dtd"
    assert dataset_key({"dataset": "resisc45", "study": "manyshot_resisc45"}) == "resisc45_full"
    assert dataset_key({"dataset": "resisc45", "study": "vtab1k"}) == "resisc45"


def test_compare_to_a_study_folder(studies, tmp_path):
    """A study folder names its tracking URI and experiment; comparing to it equals comparing to them."""
    out, _, uri = studies
    folder = tmp_path / "theirs_study"
    folder.mkdir()
    (folder / "study.yaml").write_text("name: theirs\ndatasets: {d: {format: lists, data_path: .}}\n"
                                       "methods: [linear]\nmlflow: {experiment: theirs}\n")
    (folder / "search_state.json").write_text("{}")
    (folder / "source.txt").write_text(str(folder / "study.yaml"))
    (folder / "tracking_uri.txt").write_text(uri)
    report(uri, "ours", tmp_path / "r", compare_to=folder)
    assert (tmp_path / "r" / "vtab1k.csv").read_text() == (out / "vtab1k.csv").read_text()
