"""Datasets: the processed VTAB-1K layout, generic list files, ImageFolder, CIFAR-100 subsets,
ImageNet few-shot lists and domain-shift sets (``imagenet``), and built-in real data that needs
no download (scikit-learn digits, Fashion-MNIST)."""
from .lists import ListDataset, read_list
from .loaders import SPLITS, DataSpec, build_datasets, build_transforms, image_transform

__all__ = ["SPLITS", "DataSpec", "ListDataset", "build_datasets", "build_transforms", "image_transform",
           "read_list"]
