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
TRANSFORMS = ("resize", "randaugment", "cifar100", "resisc45")
CLASS_NAMES = "classnames.txt"  # a dataset's class names, one per line in label order (optional)


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

    @property
    def folder(self) -> Path:
        """The dataset's own folder: its task's under a VTAB root, else the root itself."""
        return Path(self.root) / self.task if self.format == "vtab" else Path(self.root)


def image_transform(img_size: int, mean, std, normalize: bool) -> transforms.Compose:
    """The study's evaluation-style transform: bicubic resize, to tensor, optional normalise."""
    steps = [transforms.Resize((img_size, img_size), interpolation=transforms.InterpolationMode.BICUBIC),
             transforms.ToTensor()]
    if normalize:
        steps.append(transforms.Normalize(mean, std))
    return transforms.Compose(steps)


def augments(recipe: str, phase: str) -> bool:
    """Whether a recipe's training transform draws a new random view of an image each epoch."""
    return recipe not in ("resize", "cifar100") or (recipe == "cifar100" and phase == "final")


def build_transforms(recipe: str, img_size: int, mean, std, normalize: bool,
                     phase: str = "final") -> tuple[Callable, Callable]:
    """(training, evaluation) transforms of a recipe for a phase, as PETL_Vision ran each scenario.

    ``resize`` (VTAB-1K, Clevr): ``image_transform`` for both, no augmentation. ``randaugment``
    (few-shot ImageNet): training is timm's random-resized crop, flip, colour jitter 0.4,
    RandAugment ``rand-m9-mstd0.5-inc1`` and random erasing 0.25 (bicubic). ``cifar100``: a
    bicubic random-resized crop and a horizontal flip, in final runs only (tuning trains on the
    evaluation transform). ``resisc45``: the same crop with horizontal and vertical flips, in both
    phases. Every recipe but ``resize`` evaluates on a bicubic resize to 256/224 of the size (of
    both sides for ``randaugment``, of the shorter side for the others) and a centre crop.
    """
    if recipe not in TRANSFORMS:
        raise ValueError(f"unknown transform '{recipe}'; allowed: {', '.join(TRANSFORMS)}")
    if recipe == "resize":
        plain = image_transform(img_size, mean, std, normalize)
        return plain, plain
    if not normalize:  # the identity keeps pixels in [0, 1]
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    bicubic = transforms.InterpolationMode.BICUBIC
    to_tensor = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    resized = int(256 / 224 * img_size)
    evaluation = transforms.Compose([
        transforms.Resize((resized, resized) if recipe == "randaugment" else resized, interpolation=bicubic),
        transforms.CenterCrop(img_size), *to_tensor])
    if recipe == "randaugment":
        train = create_transform(img_size, is_training=True, color_jitter=0.4,
                                 auto_augment="rand-m9-mstd0.5-inc1", interpolation="bicubic",
                                 re_prob=0.25, re_mode="pixel", re_count=1, mean=mean, std=std)
        return train, evaluation
    if not augments(recipe, phase):
        return evaluation, evaluation
    flips = [transforms.RandomHorizontalFlip()] + ([transforms.RandomVerticalFlip()] if recipe == "resisc45" else [])
    train = transforms.Compose([transforms.RandomResizedCrop(img_size, interpolation=bicubic), *flips, *to_tensor])
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


def _list_files(spec: DataSpec, phase: str) -> tuple[Path, list[Path], Path]:
    """(image root, train lists, evaluation list) of the list-file formats (vtab, lists): final
    runs train on train + val, as VTAB-1K's train800val200 does."""
    if spec.format == "vtab":
        folder = spec.folder
        if not folder.is_dir():
            raise ValueError(f"task folder not found: {folder}")
        train_name, eval_name = SPLITS[phase]
        return folder, [folder / train_name], folder / eval_name
    root = Path(spec.root)
    if phase == "tune":
        return root, [root / spec.train_list], root / spec.val_list
    return root, [root / spec.train_list, root / spec.val_list], root / spec.test_list


def _image_folders(root: Path, phase: str) -> tuple[list[Path], Path]:
    """(train folders, evaluation folder) of the imagefolder format; final runs train on train + val."""
    folders = ([root / "train"], root / "val") if phase == "tune" else ([root / "train", root / "val"], root / "test")
    for folder in [*folders[0], folders[1]]:
        if not folder.is_dir():
            raise ValueError(f"image folder not found: {folder}")
    return folders


def _image_folder(folders: list[Path], transform) -> datasets.ImageFolder:
    """One ImageFolder over several folders of the same classes (train + val)."""
    first, *others = [datasets.ImageFolder(str(f), transform=transform) for f in folders]
    for other in others:
        if other.class_to_idx != first.class_to_idx:
            raise ValueError(f"{other.root}: its class folders differ from {first.root}'s")
        first.samples += other.samples
        first.targets += other.targets
    first.imgs = first.samples
    return first


def class_names(spec: DataSpec) -> list[str] | None:
    """The dataset's class names in label order, where it has them: a ``classnames.txt`` in its
    folder (any format), else an ImageFolder's class folders (sorted, as torchvision labels them)."""
    folder = spec.folder
    if (folder / CLASS_NAMES).is_file():
        return [line.strip() for line in (folder / CLASS_NAMES).read_text().splitlines() if line.strip()]
    if spec.format == "imagefolder" and (folder / "train").is_dir():
        return sorted(d.name for d in (folder / "train").iterdir() if d.is_dir())
    return None


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
            _, train_lists, eval_list = _list_files(spec, phase)
            labels = [label for path in [*train_lists, eval_list] for _, label in read_list(path)]
            _check_class_count(spec, max(labels) + 1, eval_list.parent)
        elif spec.format == "imagefolder":
            train_folders, eval_folder = _image_folders(root, phase)
            folders = [*train_folders, eval_folder]
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
        images, train_lists, eval_list = _list_files(spec, phase)
        train = ListDataset(images, train_lists, train_transform)
        evaluation = ListDataset(images, eval_list, transform)
    elif spec.format == "imagefolder":
        train_folders, eval_folder = _image_folders(root, phase)
        train = _image_folder(train_folders, train_transform)
        evaluation = _image_folder([eval_folder], transform)
    else:
        train, evaluation = _cifar100(spec, root, phase, transform, train_transform)
    for dataset in (train, evaluation):
        if isinstance(dataset, ListDataset):
            dataset.check_files()
    found = max(_num_classes(train), _num_classes(evaluation))
    _check_class_count(spec, found, spec.folder)
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
