"""List-file datasets: one ``relative/path label`` per line (VTAB-1K, RESISC45, ImageNet few-shot)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset


def read_list(path: Path) -> list[tuple[str, int]]:
    """Parse a list file; a malformed line is an error naming the file and line number."""
    if not path.is_file():
        raise ValueError(f"list file not found: {path}")
    samples = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        rel, _, label = line.strip().rpartition(" ")
        if not rel or not label.isdigit():  # a negative label is no class
            raise ValueError(f"{path}:{number}: expected 'relative/path label', got {line.strip()!r}")
        samples.append((rel, int(label)))
    if not samples:
        raise ValueError(f"list file is empty: {path}")
    return samples


class ListDataset(Dataset):
    """Images named by a list file (or several, one after the other), relative to ``root``; RGB,
    through ``transform``."""

    def __init__(self, root: Path, list_file: Path | list[Path], transform: Callable | None = None) -> None:
        self.root = Path(root)
        files = list_file if isinstance(list_file, list) else [list_file]
        self.samples = [sample for path in files for sample in read_list(Path(path))]
        self.targets = [label for _, label in self.samples]
        self.transform = transform

    def check_files(self) -> None:
        """Fail before training, not at batch 37, when an image named in the list is missing."""
        for rel, _ in self.samples:
            if not (self.root / rel).is_file():
                raise ValueError(f"image not found: {self.root / rel}")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        rel, label = self.samples[index]
        path = self.root / rel
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
        except (FileNotFoundError, UnidentifiedImageError, OSError) as err:
            raise ValueError(f"cannot read image {path}: {type(err).__name__}") from None
        return (self.transform(img) if self.transform else img), label
