"""``peft-search predict EXPORT_DIR IMAGE...``: an exported cell classifies images, top-5 each.

The model is the export's own run config (backbone, method, hyper-parameters) with its adapter
loaded, in eval mode, with the run's evaluation transform. Class names come from the run's
``class_names`` (CLIP) or from its dataset (``classnames.txt``, an ImageFolder's class folders);
otherwise classes are numbers.
"""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from peft_core.clip import read_class_names
from peft_core.data.loaders import DataSpec
from peft_core.data.loaders import class_names as dataset_class_names
from peft_core.run_config import load_train_config
from peft_core.train import TrainConfig, transforms_for

from .export import trained_model


def load_export(folder: Path) -> tuple[TrainConfig, torch.nn.Module]:
    folder = Path(folder)
    config_file, adapter = folder / "config.yaml", folder / "adapter.safetensors"
    for needed in (config_file, adapter):
        if not needed.is_file():
            raise ValueError(f"{folder}: not an exported cell (no {needed.name}); `peft-search export` writes one")
    config = load_train_config([config_file])  # its paths: relative to the export
    return config, trained_model(config, adapter)


def class_names(config: TrainConfig, count: int) -> list[str]:
    if config.class_names is not None:
        return read_class_names(config.class_names)[:count]
    names = dataset_class_names(DataSpec(config.data, Path(config.data_path), config.data_format))
    return names if names is not None and len(names) == count else [str(i) for i in range(count)]


def predict(folder: Path, images: list[Path], k: int = 5) -> list[tuple[Path, list[tuple[str, float]]]]:
    """Per image: its ``k`` most likely classes with their probabilities (percent)."""
    config, model = load_export(folder)
    transform = transforms_for(config)[1]
    batch = []
    for path in images:
        try:
            with Image.open(path) as image:
                batch.append(transform(image.convert("RGB")))
        except (OSError, UnidentifiedImageError):
            raise ValueError(f"{path}: not a readable image") from None
    with torch.no_grad():
        probs = model(torch.stack(batch)).softmax(dim=-1) * 100.0
    names = class_names(config, probs.shape[1])
    top = probs.topk(min(k, probs.shape[1]), dim=-1)
    return [(path, [(names[i], p) for p, i in zip(values.tolist(), indices.tolist())])
            for path, values, indices in zip(images, top.values, top.indices)]
