"""`run` and `resume` exit 0 only when every cell ended with its final runs."""
import shutil

import yaml

from search.cli import main


def test_run_exits_nonzero_naming_the_cell_whose_trials_all_failed(tmp_path, minivtab, capsys):
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
        "search": {"sampler": "grid", "num_samples": "grid", "max_concurrent": 2, "max_failures": 0},
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
