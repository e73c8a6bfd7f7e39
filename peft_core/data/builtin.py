"""Real data that ships offline, as arrays: scikit-learn digits and Fashion-MNIST."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

FASHION_ROOTS = [Path("/usr/share/datasets/fashion-mnist")]  # Debian: dataset-fashion-mnist
FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                   "sneaker", "bag", "ankle-boot"]


def digits() -> tuple[np.ndarray, np.ndarray]:
    """1,797 8x8 grey digits as uint8 (0..255), labels 0..9."""
    from sklearn.datasets import load_digits
    data = load_digits()
    images = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)
    return images, data.target.astype(np.int64)


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist(split: str, root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST ``train`` (60k) or ``test`` (10k): 28x28 uint8 images and labels.

    Read from ``root``, the Debian package's folder, or torchvision's ``FashionMNIST/raw``.
    """
    prefix = {"train": "train", "test": "t10k"}[split]
    candidates = [Path(root)] if root else list(FASHION_ROOTS)
    candidates += [c / "FashionMNIST" / "raw" for c in list(candidates)]
    for folder in candidates:
        images = folder / f"{prefix}-images-idx3-ubyte.gz"
        if images.is_file():
            return _idx(images), _idx(folder / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    raise ValueError("Fashion-MNIST not found in " + ", ".join(map(str, candidates))
                     + " (install the Debian package dataset-fashion-mnist)")
