"""Nothing wrong gets past the start line: every bad input to ``run`` and ``train`` is one line on
stderr naming the file and the key or value, exit code 2, and nothing written (no study or run
folder appears; an existing one stays byte-identical). All of it fails during validation: no
training, no Ray."""
import copy
import hashlib
import shutil
from pathlib import Path

import pytest
import yaml
from safetensors.torch import save_file

from peft_core.backbones import get_backbone
from search.cli import main
from search.study_folder import SEARCH_STATE

SPLIT_FILES = ("train800.txt", "val200.txt", "train800val200.txt", "test.txt")
SHIPPED_WEIGHTS = get_backbone("fmnist_vit_tiny").default_checkpoint


# -- files the cases point at (made in the test's tmp_path) --------------------------------------
def data_root(edit=None):
    """A data root whose digits task holds the split lists only (validation opens no image);
    ``edit(folder)`` breaks it."""
    def make(tmp: Path, minivtab: Path) -> str:
        folder = tmp / "data" / "digits"
        folder.mkdir(parents=True)
        for name in SPLIT_FILES:
            shutil.copy(minivtab / "digits" / name, folder / name)
        if edit:
            edit(folder)
        return str(folder.parent)
    return make


def drop(name):
    return lambda folder: (folder / name).unlink()


def add_line(name, line):
    return lambda folder: (folder / name).write_text((folder / name).read_text() + f"\n{line}\n")


def file_with(name, content: bytes = b""):
    def make(tmp: Path, minivtab: Path) -> str:
        (tmp / name).write_bytes(content)
        return str(tmp / name)
    return make


def other_backbones_weights(tmp: Path, minivtab: Path) -> str:
    import peft_core
    path = tmp / "dinov2.safetensors"
    state = peft_core.build_backbone("tiny_dinov2", 10).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return str(path)


def under_a_file(rest: str):
    """A path below a regular file: it can never be created."""
    def make(tmp: Path, minivtab: Path) -> str:
        (tmp / "a_file").write_text("x")
        return str(tmp / "a_file" / rest)
    return make


def resolve(value, tmp: Path, minivtab: Path):
    return value(tmp, minivtab) if callable(value) else value


def mutated(base: dict, changes: dict, tmp: Path, minivtab: Path) -> dict:
    """A copy of ``base`` with each dotted key set (values made by callables when they are)."""
    result = copy.deepcopy(base)
    for path, value in changes.items():
        *parents, last = path.split(".")
        node = result
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = resolve(value, tmp, minivtab)
    return result


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def refused(capsys, args: list[str], *needles: str) -> str:
    """Run the CLI; assert exit 2, nothing on stdout, one stderr line holding every needle."""
    code = main(args)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and captured.out == "", (code, captured)
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def existing_folder(path: Path) -> dict[str, str]:
    """A folder with something in it (an earlier partial run, notes): it must not change."""
    (path / "notes").mkdir(parents=True)
    (path / "notes" / "keep.txt").write_text("keep me")
    return snapshot(path)


# -- peft-search run STUDY ------------------------------------------------------------------------
@pytest.fixture
def study(base_study):
    return base_study


STUDY_CASES = [  # (id, changes to the study, what the line must name besides the file)
    ("lr-zero", {"train.lr": 0}, ["train.lr", "> 0"]),
    ("lr-negative", {"train.lr": -0.1}, ["train.lr", "> 0"]),
    ("lr-nan", {"train.lr": float("nan")}, ["train.lr", "finite"]),
    ("lr-inf", {"train.lr": float("inf")}, ["train.lr", "finite"]),
    ("lr-string", {"train.lr": "1e-3"}, ["train.lr", "wrong type"]),  # YAML reads 1e-3 as a string
    ("wd-negative", {"train.wd": -1e-4}, ["train.wd", ">= 0"]),
    ("lr-min-negative", {"train.lr_min": -1e-5}, ["train.lr_min", ">= 0"]),
    ("warmup-lr-negative", {"train.warmup_lr_init": -1e-6}, ["train.warmup_lr_init", ">= 0"]),
    ("epoch-zero", {"train.epoch": 0}, ["train.epoch", ">= 1"]),
    ("epoch-float", {"train.epoch": 2.5}, ["train.epoch", "wrong type"]),
    ("warmup-not-below-epoch", {"train.warmup_epoch": 3}, ["train.warmup_epoch", "below epoch (3)"]),
    ("drop-path-one", {"train.drop_path_rate": 1.0}, ["train.drop_path_rate", "< 1"]),
    ("batch-size-zero", {"train.batch_size": 0}, ["train.batch_size", ">= 1"]),
    ("test-batch-size-zero", {"train.test_batch_size": 0}, ["train.test_batch_size", ">= 1"]),
    ("workers-negative", {"train.num_workers": -1}, ["train.num_workers", ">= 0"]),
    ("device-unknown", {"train.device": "gpu"}, ["train.device", "unknown device 'gpu'"]),
    ("transform-unknown", {"train.transform": "crop"}, ["train.transform", "crop"]),
    ("space-lr-zero", {"spaces.lora.lr": {"grid": [0.001, 0]}}, ["spaces.lora.lr", "> 0"]),
    ("space-wd-range-negative", {"spaces.lora.wd": {"uniform": [-0.1, 0.1]}}, ["spaces.lora.wd", ">= 0"]),
    ("space-drop-path", {"spaces.lora.drop_path_rate": {"choice": [0.1, 1.5]}},
     ["spaces.lora.drop_path_rate", "< 1"]),
    ("space-batch-size", {"spaces.lora.batch_size": {"grid": [0, 32]}}, ["spaces.lora.batch_size", ">= 1"]),
    ("space-epoch-float-range", {"spaces.lora.epoch": {"uniform": [2, 3]}}, ["spaces.lora.epoch", "wrong type"]),
    ("space-warmup-vs-train-epoch", {"spaces.lora.warmup_epoch": {"grid": [0, 3]}},
     ["spaces.lora.warmup_epoch", "below epoch (3)"]),
    ("space-epoch-vs-train-warmup", {"train.epoch": 6, "train.warmup_epoch": 2, "search.asha": None,
                                     "spaces.lora.epoch": {"grid": [2, 6]}},
     ["spaces.lora.epoch", "warmup_epoch: must be below epoch (2)"]),
    ("metric-test", {"search.metric": "test_top1"}, ["search.metric", "test set never selects"]),
    ("metric-loss", {"search.metric": "val_loss"}, ["search.metric", "maximizes"]),
    ("metric-unknown", {"search.metric": "accuracy"}, ["search.metric", "val_top1"]),
    ("num-samples-above-grid", {"spaces.lora": {"lora_bottleneck": {"choice": [1, 8]}},
                                "search.num_samples": 5},
     ["search.num_samples", "5 is more than the 2 points of spaces.lora", "num_samples: grid"]),
    ("num-samples-without-space", {"spaces": {"lora": {"lr": {"loguniform": [0.0001, 0.01]}}}},
     ["search.num_samples", "2 is more than the 1 point of linear, which has no spaces entry",
      "num_samples_by_method: {linear: grid}"]),
    ("search-seed-negative", {"search.seed": -1}, ["search.seed", ">= 0"]),
    ("final-seed-negative", {"final.seeds": [42, -1]}, ["final.seeds[1]", ">= 0"]),
    ("checkpoint-missing", {"train.pretrained": True, "checkpoint": "nowhere.safetensors"},
     ["checkpoint", "file not found", "nowhere.safetensors"]),
    ("checkpoint-format", {"train.pretrained": True, "checkpoint": file_with("weights.txt", b"w")},
     ["checkpoint", "unsupported format '.txt'"]),
    ("checkpoint-garbage", {"train.pretrained": True, "checkpoint": file_with("junk.safetensors", b"junk" * 9)},
     ["checkpoint", "junk.safetensors", "does not fit backbone 'tiny_vit_b16_in21k'"]),
    ("checkpoint-pth-garbage", {"train.pretrained": True, "checkpoint": file_with("junk.pth", b"junk" * 9)},
     ["checkpoint", "junk.pth", "not a readable torch.save file"]),
    ("checkpoint-npz-garbage", {"train.pretrained": True, "checkpoint": file_with("junk.npz", b"junk" * 9)},
     ["checkpoint", "junk.npz", "not a readable .npz archive"]),
    ("checkpoint-other-backbone", {"train.pretrained": True, "checkpoint": str(SHIPPED_WEIGHTS)},
     ["checkpoint", "does not fit backbone 'tiny_vit_b16_in21k'", "size mismatch"]),
    ("checkpoint-other-architecture", {"train.pretrained": True, "checkpoint": other_backbones_weights},
     ["checkpoint", "dinov2.safetensors", "does not fit"]),
    ("no-weights-shipped", {"backbone": "vit_b16_in21k", "train.pretrained": True},
     ["checkpoint", "ships no weights"]),
    ("data-no-test-list", {"data_root": data_root(drop("test.txt"))}, ["datasets.digits", "test.txt"]),
    ("data-no-trainval-list", {"data_root": data_root(drop("train800val200.txt"))},
     ["datasets.digits", "train800val200.txt"]),
    ("data-empty-val-list", {"data_root": data_root(lambda f: (f / "val200.txt").write_text(""))},
     ["datasets.digits", "list file is empty", "val200.txt"]),
    ("data-malformed-line", {"data_root": data_root(add_line("train800.txt", "images/x.png seven"))},
     ["datasets.digits", "train800.txt:", "seven"]),
    ("data-negative-label", {"data_root": data_root(add_line("test.txt", "images/x.png -1"))},
     ["datasets.digits", "test.txt:", "-1"]),
    ("data-label-above-num-classes", {"data_root": data_root(add_line("test.txt", "images/x.png 12")),
                                      "datasets": {"digits": {"num_classes": 10}}},
     ["datasets.digits", "13 classes but num_classes is 10"]),
    ("data-num-classes-too-many", {"datasets": {"digits": {"num_classes": 12}}},
     ["datasets.digits", "10 classes but num_classes is 12"]),
    ("data-imagefolder-layout", {"datasets": {"digits": {"format": "imagefolder"}}},
     ["datasets.digits", "image folder not found"]),
    ("tracking-folder-unwritable", {"mlflow.tracking_uri": lambda tmp, m: f"sqlite:///{under_a_file('db')(tmp, m)}/m.db"},
     ["mlflow.tracking_uri", "is not a folder"]),
]


@pytest.mark.parametrize("changes,needles", [c[1:] for c in STUDY_CASES], ids=[c[0] for c in STUDY_CASES])
def test_bad_study_is_refused_before_anything_is_written(study, minivtab, tmp_path, capsys, changes, needles):
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump(mutated(study, changes, tmp_path, minivtab)))
    fresh, existing = tmp_path / "fresh", tmp_path / "existing"
    before = existing_folder(existing)
    for out in (fresh, existing):
        refused(capsys, ["run", str(study_file), "--out", str(out)], str(study_file), *needles)
    assert not fresh.exists() and snapshot(existing) == before


def test_study_folder_that_cannot_be_created(study, tmp_path, capsys):
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump(study))
    out = under_a_file("runs/x")(tmp_path, None)
    refused(capsys, ["run", str(study_file), "--out", out], "--out", out, "is not a folder")
    assert (tmp_path / "a_file").read_text() == "x"


def test_storage_path_that_cannot_be_created(study, minivtab, tmp_path, capsys):
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump(mutated(study, {"storage_path": under_a_file("runs")}, tmp_path, minivtab)))
    refused(capsys, ["run", str(study_file)], str(study_file), "storage_path", "is not a folder")
    assert (tmp_path / "a_file").read_text() == "x"


def test_folder_holding_a_study_is_left_alone(study, tmp_path, capsys):
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump(study))
    out = tmp_path / "out"
    out.mkdir()
    (out / SEARCH_STATE).write_bytes(b"an earlier study")
    before = snapshot(out)
    refused(capsys, ["run", str(study_file), "--out", str(out)], str(out), "already holds a study", "resume")
    assert snapshot(out) == before


# -- peft-search train --config FILE ------------------------------------------------------------------
@pytest.fixture
def run_config(minivtab):
    return {"method": "lora", "lora_bottleneck": 4, "backbone": "tiny_vit_b16_in21k", "pretrained": False,
            "data": "processed_vtab-digits", "data_path": str(minivtab), "epoch": 2, "warmup_epoch": 1}


TRAIN_CASES = [  # (id, changes to the run config, --set pairs, what the line must name besides the file)
    ("lr-zero", {"lr": 0.0}, [], ["lr=0.0", "> 0"]),
    ("lr-nan-set", {}, ["lr=.nan"], ["lr", "finite"]),
    ("warmup-not-below-epoch", {"warmup_epoch": 2}, [], ["warmup_epoch", "below epoch (2)"]),
    ("seed-negative", {}, ["seed=-3"], ["seed=-3", ">= 0"]),
    ("data-format-unknown", {"data_format": "csv"}, [], ["data_format", "csv"]),
    ("backbone-unknown", {"backbone": "resnet50"}, [], ["backbone", "unknown backbone 'resnet50'"]),
    ("eval-epoch-zero", {"eval_epochs": [0]}, [], ["eval_epochs[0]", ">= 1"]),
    ("num-classes-one", {"num_classes": 1}, [], ["num_classes", ">= 2"]),
    ("hp-out-of-range", {"lora_bottleneck": 0}, [], ["lora_bottleneck"]),
    ("data-no-test-list", {"data_path": data_root(drop("test.txt"))}, [], ["test.txt", "list file not found"]),
    ("data-labels-vs-num-classes", {"num_classes": 7}, [], ["10 classes but num_classes is 7"]),
    ("checkpoint-other-backbone", {"pretrained": True, "checkpoint": str(SHIPPED_WEIGHTS)}, [],
     ["fmnist_vit_tiny.safetensors", "does not fit backbone 'tiny_vit_b16_in21k'"]),
]


@pytest.mark.parametrize("changes,sets,needles", [c[1:] for c in TRAIN_CASES], ids=[c[0] for c in TRAIN_CASES])
def test_bad_run_config_is_refused_before_training(run_config, minivtab, tmp_path, capsys, changes, sets, needles):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(mutated(run_config, changes, tmp_path, minivtab)))
    set_args = [arg for pair in sets for arg in ("--set", pair)]
    fresh, existing = tmp_path / "fresh", tmp_path / "existing"
    before = existing_folder(existing)
    for out in (fresh, existing):
        refused(capsys, ["train", "--config", str(config), *set_args, "--out", str(out)], str(config), *needles)
    assert not fresh.exists() and snapshot(existing) == before


def test_train_out_that_cannot_be_created(run_config, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(run_config))
    out = under_a_file("run")(tmp_path, None)
    refused(capsys, ["train", "--config", str(config), "--out", out], "--out", out, "is not a folder")


def test_train_out_holding_a_run_is_left_alone(run_config, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(run_config))
    out = tmp_path / "out"
    out.mkdir()
    (out / "adapter.safetensors").write_bytes(b"an earlier run")
    before = snapshot(out)
    refused(capsys, ["train", "--config", str(config), "--out", str(out)], str(out), "already holds a run")
    assert snapshot(out) == before
