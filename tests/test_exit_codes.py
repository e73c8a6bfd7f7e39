"""`run` and `resume` exit 0 only when every cell ended with its final runs; a trial that fails
for a reason of its own fails once."""
import json
import shutil

import yaml
from mlflow.tracking import MlflowClient

from search.cli import main
from search.study_folder import read_trials, tracking_source, trial_folder_name, tune_dir


def test_run_exits_nonzero_naming_the_cell_whose_trials_all_failed_once(tmp_path, minivtab, capsys):
    import ray
    broken_root = tmp_path / "broken_data"
    shutil.copytree(minivtab / "digits", broken_root / "broken")
    images = [p for p in (broken_root / "broken").rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")]
    assert images
    for image in images:  # every image unreadable: each trial of the cell fails inside training
        image.write_bytes(b"not an image")
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump({
        "name": "exit-codes", "backbone": "tiny_vit_b16_in21k", "data_root": str(minivtab),
        "datasets": {"digits": None, "broken": {"data_path": str(broken_root)}}, "methods": ["linear"],
        "train": {"epoch": 2, "warmup_epoch": 0, "pretrained": False},
        "spaces": {"linear": {"lr": {"grid": [0.01]}}},
        "search": {"sampler": "grid", "num_samples": "grid", "max_concurrent": 2, "max_failures": 2},
        "resources": {"cpu": 1}}))
    try:
        code = main(["run", str(study_file), "--out", str(tmp_path / "out")])
    finally:
        ray.shutdown()
    err = capsys.readouterr().err
    failed = [line for line in err.splitlines() if line.startswith("peft-search: cell ")]
    assert code == 1
    assert len(failed) == 1 and "broken/linear" in failed[0] and "digits/linear" not in failed[0], failed
    assert "failed: " in failed[0] and len(failed[0]) > len("peft-search: cell broken/linear failed: ")
    # Unreadable images fail the same way on any node: one attempt, the error in status and MLflow.
    study_dir = tmp_path / "out"
    broken = [t for t in read_trials(study_dir).values() if t["cell"] == "broken/linear"]
    assert len(broken) == 1 and broken[0]["status"] == "failed" and broken[0]["error"]
    folder = tune_dir(study_dir) / trial_folder_name(broken[0]["trial_id"])
    assert not (folder / "error.txt").exists()  # Tune saw no error, so it retried nothing
    results = [json.loads(line) for line in (folder / "result.json").read_text().splitlines()]
    assert len(results) == 1 and results[0]["trial_error"] == broken[0]["error"]
    assert broken[0]["error"] in failed[0]
    uri, experiment = tracking_source(study_dir)
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                             f"tags.trial_id = '{broken[0]['trial_id']}'")[0]
    assert run.info.status == "FAILED" and run.data.tags["trial_error"] == broken[0]["error"]
    traceback_file = client.download_artifacts(run.info.run_id, "error.txt", str(tmp_path))
    assert open(traceback_file).read().startswith("Traceback")
