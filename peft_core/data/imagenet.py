"""ImageNet few-shot splits and the domain-shift test sets, all in ImageNet-1K's label space.

- ``write_fewshot_lists``: from an ImageNet train folder (one sub-folder per WordNet id), seeded
  lists of ``shots`` training and ``val_per_class`` validation images per class (the study: 100
  and 10), and the ImageNet val folder as the test list; the ``lists`` data format reads them.
- ``domain_set``: ImageNet val and ImageNet-Sketch (WordNet-id folders), ImageNet-V2 (folders
  named by class index 0..999), ImageNet-R and ImageNet-A (WordNet-id folders of 200 classes,
  scored with the logits masked to those classes; the class lists are timm's).
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import ImageFolder

INFO = Path(__file__).parent / "info"
NUM_CLASSES = 1000
# name -> file of the ImageNet-1K indices its classes are (None: all 1000)
SUBSETS = {"imagenet": None, "imagenet_v2": None, "imagenet_sketch": None,
           "imagenet_r": "imagenet_r_indices.txt", "imagenet_a": "imagenet_a_indices.txt"}
FEWSHOT_LISTS = ("train.txt", "val.txt", "test.txt")


@functools.cache
def imagenet_synsets() -> tuple[str, ...]:
    """The 1000 WordNet ids in class-index order."""
    return tuple((INFO / "imagenet_synsets.txt").read_text().split())


def subset_indices(name: str) -> list[int] | None:
    """The ImageNet-1K class indices of test set ``name`` (None: all of them)."""
    if name not in SUBSETS:
        raise ValueError(f"unknown domain-shift set '{name}'; allowed: {', '.join(SUBSETS)}")
    if SUBSETS[name] is None:
        return None
    return [int(i) for i in (INFO / SUBSETS[name]).read_text().split()]


def class_mask(name: str) -> torch.Tensor | None:
    """1000 bools marking the classes set ``name`` is scored among (R, A: 200); None for all."""
    indices = subset_indices(name)
    if indices is None:
        return None
    mask = torch.zeros(NUM_CLASSES, dtype=torch.bool)
    mask[indices] = True
    return mask


class SynsetFolder(ImageFolder):
    """One sub-folder per WordNet id, labelled by the id's ImageNet-1K index (not 0..k-1 as
    ``ImageFolder`` would for a subset). ``allowed``: the indices the folders may be."""

    def __init__(self, root: Path, transform=None, allowed: list[int] | None = None) -> None:
        self.allowed = set(allowed) if allowed is not None else None
        super().__init__(str(root), transform=transform)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        index = {wnid: i for i, wnid in enumerate(imagenet_synsets())}
        folders = sorted(e.name for e in os.scandir(directory) if e.is_dir())
        for folder in folders:
            if folder not in index or (self.allowed is not None and index[folder] not in self.allowed):
                what = "a class of this set" if folder in index else "an ImageNet-1K WordNet id"
                raise ValueError(f"{Path(directory) / folder}: folder name is not {what}")
        return folders, {folder: index[folder] for folder in folders}


class ClassIndexFolder(ImageFolder):
    """ImageNet-V2's layout: one sub-folder per class, named by its index 0..999."""

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        folders = sorted(e.name for e in os.scandir(directory) if e.is_dir())
        for folder in folders:
            if not folder.isdigit() or int(folder) >= NUM_CLASSES:
                raise ValueError(f"{Path(directory) / folder}: folder name is not a class index 0..999")
        return folders, {folder: int(folder) for folder in folders}


def _folder(kind: type[ImageFolder], root: Path, what: str, **kwargs) -> ImageFolder:
    if not Path(root).is_dir():
        raise ValueError(f"{what} folder not found: {root}")
    try:
        return kind(root, **kwargs)
    except FileNotFoundError as err:  # torchvision: a class folder without images
        raise ValueError(f"{what} at {root}: {err}") from None


def domain_set(name: str, root: Path, transform=None) -> tuple[ImageFolder, torch.Tensor | None]:
    """Test set ``name`` at ``root`` with labels in ImageNet-1K's space, and its class mask."""
    indices = subset_indices(name)
    if name == "imagenet_v2":
        dataset = _folder(ClassIndexFolder, root, name, transform=transform)
    else:
        dataset = _folder(SynsetFolder, root, name, transform=transform, allowed=indices)
    return dataset, class_mask(name)


def write_fewshot_lists(train_dir: Path, val_dir: Path, out_dir: Path, shots: int = 100,
                        val_per_class: int = 10, seed: int = 0) -> Path:
    """Write ``train.txt``, ``val.txt`` and ``test.txt`` into ``out_dir`` (read with
    ``data_format: lists``, ``data_path: out_dir``); paths are relative to ``out_dir``.

    Per WordNet-id folder of ``train_dir``: a seeded draw of ``shots`` + ``val_per_class``
    distinct images, the first ``shots`` for training, the rest for validation. ``test.txt``
    lists every image of ``val_dir`` (ImageNet val in WordNet-id folders). Labels are
    ImageNet-1K indices.
    """
    out_dir = Path(out_dir)
    by_class: dict[int, list[str]] = {}
    for path, label in _folder(SynsetFolder, Path(train_dir), "ImageNet train").samples:
        by_class.setdefault(label, []).append(path)
    rng = np.random.default_rng(seed)
    train_lines, val_lines = [], []
    for label, images in sorted(by_class.items()):
        if len(images) < shots + val_per_class:
            raise ValueError(f"{Path(images[0]).parent}: {len(images)} images, need "
                             f"{shots} + {val_per_class}")
        picked = [images[i] for i in rng.permutation(len(images))[:shots + val_per_class]]
        lines = [f"{os.path.relpath(p, out_dir)} {label}" for p in picked]
        train_lines += lines[:shots]
        val_lines += lines[shots:]
    test = _folder(SynsetFolder, Path(val_dir), "ImageNet val")
    test_lines = [f"{os.path.relpath(p, out_dir)} {label}" for p, label in test.samples]
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, lines in zip(FEWSHOT_LISTS, (train_lines, val_lines, test_lines)):
        (out_dir / name).write_text("\n".join(lines) + "\n")
    return out_dir
