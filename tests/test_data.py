"""Built-in real data, mini-VTAB in the VTAB-1K layout, and the shipped pretrained backbone."""
import hashlib
from pathlib import Path

import numpy as np
import torch
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
    assert (len(train), len(test), classes) == (50, 10, 10)  # final runs train on train + val
    assert [train.samples[i] for i in (0, 40)] == [rows[0], rows[40]]
    x, y = train[0]
    assert x.shape == (3, 32, 32) and x.min() >= -1.0 and y == rows[0][1]
    for split in ("train", "val", "test"):
        for label in range(3):
            folder = tmp_path / "folder" / split / f"class{label}"
            folder.mkdir(parents=True)
            for p, _ in [r for r in rows if r[1] == label][:2]:
                (folder / Path(p).name).write_bytes((tmp_path / "lists" / p).read_bytes())
    train, val, classes = build_datasets(DataSpec("folder", tmp_path / "folder", "imagefolder"), "tune", transform)
    assert classes == 3 and len(train) == 6 and len(val) == 6
    train, test, classes = build_datasets(DataSpec("folder", tmp_path / "folder", "imagefolder"), "final", transform)
    assert classes == 3 and len(train) == 12 and len(test) == 6 and sorted(set(train.targets)) == [0, 1, 2]
    assert train.samples[6][0].startswith(str(tmp_path / "folder" / "val"))


@pytest.mark.parametrize("recipe, augmented_phases, vertical_flip", [
    ("cifar100", {"final"}, False), ("resisc45", {"tune", "final"}, True)])
def test_many_shot_recipes_transform_each_phase_as_the_study(recipe, augmented_phases, vertical_flip):
    """CIFAR-100: a random-resized crop and flip in final runs only (tuning trains on the
    evaluation transform); RESISC45: crop, horizontal and vertical flips in both phases. Both
    evaluate on a resize of the shorter side to 256/224 of the size and a centre crop."""
    from PIL import Image
    from torchvision import transforms as T

    from peft_core.data import build_transforms
    from peft_core.data.loaders import augments
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8))  # not square
    mean, std = (0.5,) * 3, (0.25,) * 3
    for phase in ("tune", "final"):
        train, evaluation = build_transforms(recipe, 32, mean, std, True, phase)
        expected = T.functional.center_crop(T.functional.resize(image, 36, T.InterpolationMode.BICUBIC), 32)
        expected = (T.functional.to_tensor(expected) - 0.5) / 0.25
        assert torch.allclose(evaluation(image), expected, atol=1e-6)
        torch.manual_seed(0)
        views = [train(image) for _ in range(4)]
        assert views[0].shape == (3, 32, 32)
        random = any(not torch.equal(views[0], v) for v in views[1:])
        assert random == (phase in augmented_phases) == augments(recipe, phase), (recipe, phase)
        if not random:
            assert torch.equal(views[0], expected)
        steps = [type(t).__name__ for t in train.transforms]
        assert ("RandomVerticalFlip" in steps) == (vertical_flip and phase in augmented_phases)


def test_a_datasets_class_names_come_from_its_classnames_file_or_its_class_folders(tmp_path):
    from peft_core.data.loaders import DataSpec, class_names
    from peft_core.data.minivtab import build_task
    build_task("digits_rot", tmp_path)
    assert class_names(DataSpec("digits_rot", tmp_path)) == ["0-deg", "90-deg", "180-deg", "270-deg"]
    for name in ("cat", "ant"):
        (tmp_path / "pets" / "train" / name).mkdir(parents=True)
    assert class_names(DataSpec("pets", tmp_path / "pets", "imagefolder")) == ["ant", "cat"]
    assert class_names(DataSpec("pets", tmp_path / "pets", "lists")) is None
