"""Built-in real data, mini-VTAB in the VTAB-1K layout, and the shipped pretrained backbone."""
import hashlib
from pathlib import Path

import numpy as np
import pytest

import peft_core
from peft_core.data.builtin import FASHION_ROOTS
from peft_core.data.lists import read_list
from peft_core.data.minivtab import UNSEEN_CLASSES, build_task

fashion = pytest.mark.skipif(not (FASHION_ROOTS[0] / "t10k-images-idx3-ubyte.gz").is_file(),
                             reason="Debian package dataset-fashion-mnist not installed")


def check_layout(folder: Path, classes: int):
    lists = {n: read_list(folder / n) for n in ("train800.txt", "val200.txt", "train800val200.txt", "test.txt")}
    assert len(lists["train800.txt"]) == 800 and len(lists["val200.txt"]) == 200
    assert lists["train800val200.txt"] == lists["train800.txt"] + lists["val200.txt"]
    train = {p for p, _ in lists["train800val200.txt"]}
    assert not train & {p for p, _ in lists["test.txt"]}  # test never overlaps train/val
    assert {y for _, y in lists["train800.txt"]} == set(range(classes))
    assert all((folder / p).is_file() for p, _ in lists["test.txt"][:20])


def test_digits_tasks_follow_the_vtab_layout(minivtab):
    check_layout(minivtab / "digits", 10)
    check_layout(minivtab / "digits_rot", 4)


@fashion
def test_fashion_tasks_use_only_classes_unseen_in_pretraining(tmp_path):
    from peft_core.data.builtin import fashion_mnist
    check_layout(build_task("fashion_unseen", tmp_path), len(UNSEEN_CLASSES))
    check_layout(build_task("fashion_loc", tmp_path), 9)
    images, labels = fashion_mnist("test")
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8 and set(labels) == set(range(10))


def test_shipped_backbone_matches_its_model_card():
    spec = peft_core.backbones.get_backbone("fmnist_vit_tiny")
    card = (spec.default_checkpoint.parent / "MODEL_CARD.md").read_text()
    digest = hashlib.sha256(spec.default_checkpoint.read_bytes()).hexdigest()
    assert digest in card and spec.default_checkpoint.stat().st_size <= 10_000_000
    model = peft_core.build_backbone("fmnist_vit_tiny", 5, checkpoint=spec.default_checkpoint)
    assert model.patch_embed.img_size == (32, 32) and model.embed_dim == 128


def _write_images(root: Path, n: int):
    from PIL import Image

    from peft_core.data.builtin import digits
    images, labels = digits()
    rows = []
    for i in range(n):
        rel = f"img/{labels[i]}/{i}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(root / rel)
        rows.append((rel, int(labels[i])))
    return rows


def test_imagefolder_and_generic_list_layouts(tmp_path):
    from peft_core.data import DataSpec, build_datasets, image_transform
    transform = image_transform(32, (0.5,) * 3, (0.5,) * 3, normalize=True)
    rows = _write_images(tmp_path / "lists", 60)
    (tmp_path / "lists" / "train.txt").write_text("\n".join(f"{p} {y}" for p, y in rows[:40]))
    (tmp_path / "lists" / "val.txt").write_text("\n".join(f"{p} {y}" for p, y in rows[40:50]))
    (tmp_path / "lists" / "test.txt").write_text("\n".join(f"{p} {y}" for p, y in rows[50:]))
    train, test, classes = build_datasets(DataSpec("fewshot", tmp_path / "lists", "lists"), "final", transform)
    assert (len(train), len(test), classes) == (40, 10, 10)
    x, y = train[0]
    assert x.shape == (3, 32, 32) and x.min() >= -1.0 and y == rows[0][1]
    for split in ("train", "val"):
        for label in range(3):
            folder = tmp_path / "folder" / split / f"class{label}"
            folder.mkdir(parents=True)
            for p, _ in [r for r in rows if r[1] == label][:2]:
                (folder / Path(p).name).write_bytes((tmp_path / "lists" / p).read_bytes())
    train, val, classes = build_datasets(DataSpec("folder", tmp_path / "folder", "imagefolder"), "tune", transform)
    assert classes == 3 and len(train) == 6 and len(val) == 6
