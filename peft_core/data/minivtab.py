"""mini-VTAB: small downstream tasks from offline real data, in the processed VTAB-1K layout.

Each task folder holds PNG images and the four list files of VTAB-1K (``train800.txt``,
``val200.txt``, ``train800val200.txt``, ``test.txt``), so it goes through the same code path
as real VTAB, and ``classnames.txt`` (its classes' names, in label order). Tasks (one per VTAB group):

- ``digits`` (natural): scikit-learn's 8x8 handwritten digits, 10 classes.
- ``fashion_unseen`` (specialized / shift): the five Fashion-MNIST classes the shipped backbone
  never saw in pretraining (sandal, shirt, sneaker, bag, ankle boot).
- ``digits_rot`` (structured): which of 0/90/180/270 degrees a digit was rotated by.
- ``fashion_loc`` (structured): in which cell of a 3x3 grid a small unseen-class item sits.

    python -m peft_core.data.minivtab OUT_DIR
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from . import builtin, loaders

PRETRAIN_CLASSES = [0, 1, 2, 3, 4]  # Fashion-MNIST classes the shipped backbone was trained on
UNSEEN_CLASSES = [5, 6, 7, 8, 9]
TASKS = {"digits": "natural", "fashion_unseen": "specialized", "digits_rot": "structured",
         "fashion_loc": "structured"}
MAX_TEST = 1000
CLASS_NAMES = {  # written next to each task's lists (classnames.txt): what `predict` prints
    "digits": [str(d) for d in range(10)],
    "digits_rot": [f"{90 * k}-deg" for k in range(4)],  # counter-clockwise turns
    "fashion_unseen": [builtin.FASHION_CLASSES[c] for c in UNSEEN_CLASSES],
    "fashion_loc": ["top-left", "top", "top-right", "left", "centre", "right", "bottom-left", "bottom",
                    "bottom-right"],
}


def write_vtab_layout(folder: Path, images: np.ndarray, labels: np.ndarray, seed: int = 0,
                      order: np.ndarray | None = None, n_train: int = 800, n_val: int = 200,
                      max_test: int = MAX_TEST) -> None:
    """Write uint8 images (N, H, W) with labels as a processed VTAB-1K task folder.

    ``order`` (default: a seeded permutation) is read as train800, val200, then test (up to
    ``max_test``).
    """
    if len(images) < n_train + n_val + 1:
        raise ValueError(f"{folder}: {len(images)} images, need more than {n_train + n_val}")
    if order is None:
        order = np.random.default_rng(seed).permutation(len(images))
    parts = {"train800.txt": order[:n_train], "val200.txt": order[n_train:n_train + n_val],
             "test.txt": order[n_train + n_val:n_train + n_val + max_test]}
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for index in order[:n_train + n_val + max_test]:
        Image.fromarray(images[index]).save(folder / "images" / f"{index:05d}.png")
    lines = {name: [f"images/{i:05d}.png {labels[i]}" for i in idx] for name, idx in parts.items()}
    lines["train800val200.txt"] = lines["train800.txt"] + lines["val200.txt"]
    for name, content in lines.items():
        (folder / name).write_text("\n".join(content) + "\n")


def _unseen_fashion(split: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = builtin.fashion_mnist(split)
    keep = np.isin(labels, UNSEEN_CLASSES)
    return images[keep], np.searchsorted(UNSEEN_CLASSES, labels[keep])


def _locations(items: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each item shrunk to 10x10 and pasted into one of 3x3 cells of a 30x30 canvas."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 9, len(items))
    canvas = np.zeros((len(items), 30, 30), dtype=np.uint8)
    for i, (item, cell) in enumerate(zip(items, cells)):
        small = np.asarray(Image.fromarray(item).resize((10, 10), Image.BILINEAR))
        r, c = divmod(int(cell), 3)
        canvas[i, 10 * r:10 * r + 10, 10 * c:10 * c + 10] = small
    return canvas, cells.astype(np.int64)


def build_task(task: str, out_dir: Path, seed: int = 0) -> Path:
    folder = Path(out_dir) / task
    if task == "digits":
        write_vtab_layout(folder, *builtin.digits(), seed=seed)
    elif task == "digits_rot":
        images, _ = builtin.digits()
        turns = np.random.default_rng(seed + 1).integers(0, 4, len(images))
        rotated = np.stack([np.rot90(img, k) for img, k in zip(images, turns)])
        write_vtab_layout(folder, rotated, turns.astype(np.int64), seed=seed)
    elif task == "fashion_unseen":
        train_x, train_y = _unseen_fashion("train")
        test_x, test_y = _unseen_fashion("test")
        # train/val from Fashion's train split, test from its test split (as in VTAB)
        rng = np.random.default_rng(seed)
        pick = rng.permutation(len(train_x))[:1000]
        images = np.concatenate([train_x[pick], test_x])
        labels = np.concatenate([train_y[pick], test_y])
        order = np.concatenate([np.arange(1000), 1000 + rng.permutation(len(test_x))])
        write_vtab_layout(folder, images, labels, order=order)
    elif task == "fashion_loc":
        items, _ = _unseen_fashion("test")
        canvas, cells = _locations(items[:2000], seed)
        write_vtab_layout(folder, canvas, cells, seed=seed)
    else:
        raise ValueError(f"unknown mini-VTAB task '{task}'; allowed: {', '.join(TASKS)}")
    (folder / loaders.CLASS_NAMES).write_text("\n".join(CLASS_NAMES[task]) + "\n")
    return folder


def build_minivtab(out_dir: Path, tasks: list[str] | None = None, seed: int = 0) -> Path:
    """Build every mini-VTAB task under ``out_dir`` (skipping finished ones); returns it."""
    out_dir = Path(out_dir)
    for task in tasks or list(TASKS):
        if not (out_dir / task / "test.txt").is_file():
            build_task(task, out_dir, seed)
    return out_dir


if __name__ == "__main__":
    print(build_minivtab(Path(sys.argv[1])))
