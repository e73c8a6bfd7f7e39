"""Dataset naming rules the report groups by: VTAB-1K tasks and their groups, many-shot subsets.

Dataset names: ``processed_vtab-<task>`` is the VTAB-1K task ``<task>``. A many-shot subset is
``<base>_<size>`` or ``<base>-<size>`` with size ``500``, ``1k``, ``10k`` or ``full``; the bare
names ``cifar100`` and ``clevr`` are full many-shot sets, and so is a bare VTAB task name
(``resisc45``) in a study whose name starts with ``manyshot`` (``spaces/manyshot_resisc45.yaml``):
it is keyed ``<name>_full`` so it never lands in the VTAB-1K table.
"""
from __future__ import annotations

import re

from ..mlflow_layout import DATASET, STUDY

GROUPS = {
    "natural": ["cifar", "caltech101", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn", "sun397"],
    "specialized": ["patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy"],
    "structured": ["clevr_count", "clevr_dist", "dmlab", "kitti", "dsprites_loc", "dsprites_ori",
                   "smallnorb_azi", "smallnorb_ele"],
}
VTAB_TASKS = [t for tasks in GROUPS.values() for t in tasks]
FULL_SIZE = "full"  # not a method name: the size label of a whole many-shot training set
MANYSHOT_FULL = ("cifar100", "clevr")
_SUBSET = re.compile(rf"^(?P<base>.+?)[-_](?P<size>\d+k?|{FULL_SIZE})$")


def vtab_group(dataset: str) -> str | None:
    """The VTAB-1K group of a dataset key, None when it is no VTAB-1K task."""
    return next((group for group, tasks in GROUPS.items() if dataset in tasks), None)


def manyshot_split(dataset: str) -> tuple[str, str] | None:
    """(base, size label) of a many-shot dataset name, else None."""
    if dataset in VTAB_TASKS:
        return None
    if dataset in MANYSHOT_FULL:
        return dataset, FULL_SIZE
    match = _SUBSET.match(dataset)
    return (match["base"], match["size"]) if match else None


def size_order(size: str) -> float:
    """Subset sizes in ascending order, ``full`` last."""
    if size == FULL_SIZE:
        return float("inf")
    return int(size.rstrip("k")) * (1000 if size.endswith("k") else 1)


def dataset_key(tags: dict) -> str:
    """The name a run's dataset is reported under, from its ``dataset`` and ``study`` tags."""
    name = tags.get(DATASET, "")
    name = name.split("-", 1)[1] if name.startswith("processed_vtab-") else name
    if name in VTAB_TASKS and tags.get(STUDY, "").startswith("manyshot"):
        return f"{name}_{FULL_SIZE}"
    return name
