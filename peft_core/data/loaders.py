"""Which files make the train and evaluation sets of a run, for every supported layout."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset, Subset
from torchvision import datasets, transforms

from .lists import ListDataset

# phase -> (train list, eval list) of the processed VTAB-1K layout (SPEC 4.1)
SPLITS = {"tune": ("train800.txt", "val200.txt"), "final": ("train800val200.txt", "test.txt")}
FORMATS = ("vtab", "imagefolder", "lists", "cifar100")


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


def build_datasets(spec: DataSpec, phase: str, transform) -> tuple[Dataset, Dataset, int]:
    """(train set, evaluation set, class count) for ``phase`` ``tune`` (train/val) or ``final``
    (train+val/test). Missing folders, lists or images are one-line errors naming the path."""
    if phase not in SPLITS:
        raise ValueError(f"unknown phase '{phase}'; allowed: {', '.join(SPLITS)}")
    if spec.format not in FORMATS:
        raise ValueError(f"unknown data format '{spec.format}'; allowed: {', '.join(FORMATS)}")
    root = Path(spec.root)
    if not root.is_dir():
        raise ValueError(f"data root not found: {root}")
    if spec.format == "vtab":
        folder = root / spec.task
        if not folder.is_dir():
            raise ValueError(f"task folder not found: {folder}")
        train_name, eval_name = SPLITS[phase]
        train, evaluation = (ListDataset(folder, folder / n, transform) for n in (train_name, eval_name))
    elif spec.format == "lists":
        eval_name = spec.val_list if phase == "tune" else spec.test_list
        train = ListDataset(root, root / spec.train_list, transform)
        evaluation = ListDataset(root, root / eval_name, transform)
    elif spec.format == "imagefolder":
        folders = [root / "train", root / ("val" if phase == "tune" else "test")]
        for folder in folders:
            if not folder.is_dir():
                raise ValueError(f"image folder not found: {folder}")
        train, evaluation = (datasets.ImageFolder(str(f), transform=transform) for f in folders)
    else:
        train, evaluation = _cifar100(spec, root, phase, transform)
    for dataset in (train, evaluation):
        if isinstance(dataset, ListDataset):
            dataset.check_files()
    found = max(_num_classes(train), _num_classes(evaluation))
    if spec.num_classes is not None and found != spec.num_classes:
        raise ValueError(f"{root / spec.task if spec.format == 'vtab' else root}: labels give "
                         f"{found} classes but num_classes is {spec.num_classes}")
    return train, evaluation, spec.num_classes or found


def _cifar100(spec: DataSpec, root: Path, phase: str, transform):
    try:
        full_train = datasets.CIFAR100(str(root), train=True, download=False, transform=transform)
        test = datasets.CIFAR100(str(root), train=False, download=False, transform=transform)
    except RuntimeError:
        raise ValueError(f"CIFAR-100 not found under {root} (torchvision's cifar-100-python layout)") from None
    train_idx = _read_indices(root / spec.train_list)
    val_idx = _read_indices(root / spec.val_list)
    if phase == "tune":
        return Subset(full_train, train_idx), Subset(full_train, val_idx)
    return Subset(full_train, train_idx + val_idx), test
