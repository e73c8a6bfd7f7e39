"""Which files make the train and evaluation sets of a run, for every supported layout."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from timm.data import create_transform
from torch.utils.data import Dataset, Subset
from torchvision import datasets, transforms

from .lists import ListDataset, read_list

# phase -> (train list, eval list) of the processed VTAB-1K layout (SPEC 4.1)
SPLITS = {"tune": ("train800.txt", "val200.txt"), "final": ("train800val200.txt", "test.txt")}
FORMATS = ("vtab", "imagefolder", "lists", "cifar100")
TRANSFORMS = ("resize", "randaugment")


@dataclass
class DataSpec:
    """Where a dataset lives and how it is laid out.

    ``name`` may carry the study's prefix (``processed_vtab-dtd`` -> task ``dtd``).
    ``lists`` format: ``train_list``/``val_list``/``test_list`` are list files under ``root``.
    ``cifar100`` format: torchvision's on-disk CIFAR-100 plus index files (one index per line).
    """

    name: str
    root: Path
    format: str = "vtab"
    num_classes: int | None = None
    normalize: bool = False
    train_list: str = "train.txt"
    val_list: str = "val.txt"
    test_list: str = "test.txt"

    @property
    def task(self) -> str:
        return self.name.split("-", 1)[1] if self.name.startswith("processed_vtab-") else self.name


def image_transform(img_size: int, mean, std, normalize: bool) -> transforms.Compose:
    """The study's evaluation-style transform: bicubic resize, to tensor, optional normalise."""
    steps = [transforms.Resize((img_size, img_size), interpolation=transforms.InterpolationMode.BICUBIC),
             transforms.ToTensor()]
    if normalize:
        steps.append(transforms.Normalize(mean, std))
    return transforms.Compose(steps)


def build_transforms(recipe: str, img_size: int, mean, std, normalize: bool) -> tuple[Callable, Callable]:
    """(training, evaluation) transforms of a recipe.

    ``resize`` (VTAB-1K): ``image_transform`` for both, no augmentation. ``randaugment`` (few-shot
    ImageNet, as PETL_Vision ran it): training is timm's random-resized crop, flip, colour jitter
    0.4, RandAugment ``rand-m9-mstd0.5-inc1`` and random erasing 0.25 (bicubic); evaluation is a
    bicubic resize to 256/224 of the size and a centre crop.
    """
    if recipe not in TRANSFORMS:
        raise ValueError(f"unknown transform '{recipe}'; allowed: {', '.join(TRANSFORMS)}")
    if recipe == "resize":
        plain = image_transform(img_size, mean, std, normalize)
        return plain, plain
    if not normalize:  # timm always normalises; the identity keeps pixels in [0, 1]
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    train = create_transform(img_size, is_training=True, color_jitter=0.4,
                             auto_augment="rand-m9-mstd0.5-inc1", interpolation="bicubic",
                             re_prob=0.25, re_mode="pixel", re_count=1, mean=mean, std=std)
    resized = int(256 / 224 * img_size)
    evaluation = transforms.Compose([
        transforms.Resize((resized, resized), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(img_size), transforms.ToTensor(), transforms.Normalize(mean, std)])
    return train, evaluation


def _read_indices(path: Path) -> list[int]:
    if not path.is_file():
        raise ValueError(f"index file not found: {path}")
    try:
        return [int(line) for line in path.read_text().split()]
    except ValueError:
        raise ValueError(f"{path}: expected one integer index per line") from None


def _num_classes(dataset: Dataset) -> int:
    targets = dataset.targets if hasattr(dataset, "targets") else [
        dataset.dataset.targets[i] for i in dataset.indices]
    return max(targets) + 1


def _list_files(spec: DataSpec, phase: str) -> tuple[Path, Path, Path]:
    """(image root, train list, evaluation list) of the list-file formats (vtab, lists)."""
    if spec.format == "vtab":
        folder = Path(spec.root) / spec.task
        if not folder.is_dir():
            raise ValueError(f"task folder not found: {folder}")
        train_name, eval_name = SPLITS[phase]
        return folder, folder / train_name, folder / eval_name
    root = Path(spec.root)
    return root, root / spec.train_list, root / (spec.val_list if phase == "tune" else spec.test_list)


def _check_class_count(spec: DataSpec, found: int, where: Path) -> None:
    if spec.num_classes is not None and found != spec.num_classes:
        raise ValueError(f"{where}: labels give {found} classes but num_classes is {spec.num_classes}")


def check_dataset(spec: DataSpec) -> None:
    """What ``build_datasets`` would find missing or wrong in either phase, without opening an
    image: folders, split lists (read, labels checked against ``num_classes``), index files."""
    root = Path(spec.root)
    if not root.is_dir():
        raise ValueError(f"data root not found: {root}")
    for phase in SPLITS:
        if spec.format in ("vtab", "lists"):
            _, *lists = _list_files(spec, phase)
            labels = [label for path in lists for _, label in read_list(path)]
            _check_class_count(spec, max(labels) + 1, lists[0].parent)
        elif spec.format == "imagefolder":
            folders = [root / "train", root / ("val" if phase == "tune" else "test")]
            for folder in folders:
                if not folder.is_dir():
                    raise ValueError(f"image folder not found: {folder}")
            _check_class_count(spec, max(sum(e.is_dir() for e in f.iterdir()) for f in folders), root)
        else:  # cifar100: the index files (the class count is CIFAR-100's)
            for name in (spec.train_list, spec.val_list):
                _read_indices(root / name)


def build_datasets(spec: DataSpec, phase: str, transform,
                   train_transform=None) -> tuple[Dataset, Dataset, int]:
    """(train set, evaluation set, class count) for ``phase`` ``tune`` (train/val) or ``final``
    (train+val/test). ``train_transform`` (default ``transform``) is the training set's.
    Missing folders, lists or images are one-line errors naming the path."""
    if phase not in SPLITS:
        raise ValueError(f"unknown phase '{phase}'; allowed: {', '.join(SPLITS)}")
    if spec.format not in FORMATS:
        raise ValueError(f"unknown data format '{spec.format}'; allowed: {', '.join(FORMATS)}")
    root = Path(spec.root)
    if not root.is_dir():
        raise ValueError(f"data root not found: {root}")
    train_transform = train_transform or transform
    if spec.format in ("vtab", "lists"):
        images, train_list, eval_list = _list_files(spec, phase)
        train = ListDataset(images, train_list, train_transform)
        evaluation = ListDataset(images, eval_list, transform)
    elif spec.format == "imagefolder":
        folders = [root / "train", root / ("val" if phase == "tune" else "test")]
        for folder in folders:
            if not folder.is_dir():
                raise ValueError(f"image folder not found: {folder}")
        train = datasets.ImageFolder(str(folders[0]), transform=train_transform)
        evaluation = datasets.ImageFolder(str(folders[1]), transform=transform)
    else:
        train, evaluation = _cifar100(spec, root, phase, transform, train_transform)
    for dataset in (train, evaluation):
        if isinstance(dataset, ListDataset):
            dataset.check_files()
    found = max(_num_classes(train), _num_classes(evaluation))
    _check_class_count(spec, found, root / spec.task if spec.format == "vtab" else root)
    return train, evaluation, spec.num_classes or found


def _cifar100(spec: DataSpec, root: Path, phase: str, transform, train_transform):
    def split(train: bool, tf):
        return datasets.CIFAR100(str(root), train=train, download=False, transform=tf)

    try:
        full_train = split(True, train_transform)
        if phase == "final":
            evaluation = split(False, transform)
        else:  # val images come from the train split, without its augmentation
            evaluation = full_train if transform is train_transform else split(True, transform)
    except RuntimeError:
        raise ValueError(f"CIFAR-100 not found under {root} (torchvision's cifar-100-python layout)") from None
    train_idx = _read_indices(root / spec.train_list)
    val_idx = _read_indices(root / spec.val_list)
    if phase == "tune":
        return Subset(full_train, train_idx), Subset(evaluation, val_idx)
    return Subset(full_train, train_idx + val_idx), evaluation
