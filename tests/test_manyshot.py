"""The shipped many-shot RESISC45 study, run end to end on small stand-in data: the study's
transforms per phase, its final runs on train + val, one cell per fixed rank."""
from pathlib import Path

import yaml

SPACES = Path(__file__).resolve().parents[1] / "spaces"


def standin_resisc(minivtab: Path, root: Path) -> Path:
    """RESISC45's list layout (train.txt, val.txt, test.txt) over mini-VTAB digits' images."""
    digits = minivtab / "digits"
    root.mkdir()
    (root / "images").symlink_to(digits / "images")
    for ours, theirs in (("train.txt", "train800.txt"), ("val.txt", "val200.txt"), ("test.txt", "test.txt")):
        (root / ours).write_text((digits / theirs).read_text())
    return root


def test_the_shipped_resisc_study_runs_each_phase_as_the_study(tmp_path, minivtab):
    from mlflow.tracking import MlflowClient

    from search.study_folder import read_trials, tracking_source
    from tests.studies import run_study
    data = standin_resisc(minivtab, tmp_path / "resisc")
    one_point = {"lr": {"grid": [0.01]}, "wd": {"grid": [0.0001]}, "drop_path_rate": {"grid": [0.1]}}
    out = run_study({
        "include": str(SPACES / "manyshot_resisc45.yaml"),  # the paper's settings, cut to CPU size below
        "backbone": "tiny_vit_b16_in21k", "checkpoint": None, "data_root": str(data),
        "datasets": {"resisc45": {"format": "lists", "num_classes": 10}},
        "methods": ["linear", "lora_8"],
        "train": {"epoch": 2, "warmup_epoch": 1, "pretrained": False, "batch_size": 64},
        "spaces": {"linear": one_point, "lora_8": one_point},
        "search": {"max_concurrent": 1}, "final": {"seeds": [42]}, "resources": {"cpu": 1, "gpu": 0}}, tmp_path)
    records = list(read_trials(out).values())
    assert sorted((r["cell"], r["phase"]) for r in records) == [
        ("resisc45/linear", "final"), ("resisc45/linear", "tune"), ("resisc45/lora_8", "final"), ("resisc45/lora_8", "tune")]
    lora = [r for r in records if r["cell"] == "resisc45/lora_8"]
    assert all(r["params"]["lora_bottleneck"] == 8 for r in lora)  # the variant's fixed rank
    uri, experiment = tracking_source(out)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], "tags.phase != 'cell'")
    assert len(runs) == 4
    for run in runs:
        params, metrics = run.data.params, run.data.metrics
        assert (params["transform"], params["normalize"], params["warmup_epoch"]) == ("resisc45", "True", "1")
        # tuning trains on train.txt and validates on val.txt; final runs train on both
        assert metrics["train_examples"] == (800 if run.data.tags["phase"] == "tune" else 1000), run.data.tags
        assert ("test_top1" in metrics) == (run.data.tags["phase"] == "final")
    settings = yaml.safe_load((SPACES / "manyshot_resisc45.yaml").read_text())["train"]
    assert settings["transform"] == "resisc45" and settings["warmup_epoch"] == 5  # RESISC's own warm-up
