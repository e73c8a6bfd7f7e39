"""A study's runs read back from MLflow for the report: which cells exist, their finished final
runs, their tuning trials, and the dataset naming conventions the tables group by.

Dataset names: ``processed_vtab-<task>`` is the VTAB-1K task ``<task>``. A many-shot subset is
``<base>_<size>`` or ``<base>-<size>`` with size ``500``, ``1k``, ``10k`` or ``full``; the bare
names ``cifar100`` and ``clevr`` are full many-shot sets, and so is a bare VTAB task name
(``resisc45``) in a study whose name starts with ``manyshot`` (``spaces/manyshot_resisc45.yaml``):
it is keyed ``<name>_full`` so it never lands in the VTAB-1K table.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

GROUPS = {
    "natural": ["cifar", "caltech101", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn", "sun397"],
    "specialized": ["patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy"],
    "structured": ["clevr_count", "clevr_dist", "dmlab", "kitti", "dsprites_loc", "dsprites_ori",
                   "smallnorb_azi", "smallnorb_ele"],
}
VTAB_TASKS = [t for tasks in GROUPS.values() for t in tasks]
MANYSHOT_FULL = ("cifar100", "clevr")
_SUBSET = re.compile(r"^(?P<base>.+?)[-_](?P<size>\d+k?|full)$")
Key = tuple[str, str]  # (dataset, method)


def manyshot_split(dataset: str) -> tuple[str, str] | None:
    """(base, size label) of a many-shot dataset name, else None."""
    if dataset in VTAB_TASKS:
        return None
    if dataset in MANYSHOT_FULL:
        return dataset, "full"
    match = _SUBSET.match(dataset)
    return (match["base"], match["size"]) if match else None


def size_order(size: str) -> float:
    """Subset sizes in ascending order, ``full`` last."""
    if size == "full":
        return float("inf")
    return int(size.rstrip("k")) * (1000 if size.endswith("k") else 1)


def dataset_key(tags: dict) -> str:
    name = tags.get("dataset", "")
    name = name.split("-", 1)[1] if name.startswith("processed_vtab-") else name
    if name in VTAB_TASKS and tags.get("study", "").startswith("manyshot"):
        return f"{name}_full"
    return name


@dataclass
class StudyRuns:
    client: MlflowClient
    label: str  # "<experiment> at <uri>", for messages
    cells: set[Key] = field(default_factory=set)  # every cell the study declared or ran
    finals: dict[Key, list[Run]] = field(default_factory=dict)  # FINISHED phase=final runs
    tune: dict[Key, list[Run]] = field(default_factory=dict)  # phase=tune runs, any status
    final_all: dict[Key, list[Run]] = field(default_factory=dict)  # phase=final runs, any status
    running: int = 0  # runs of any phase still RUNNING

    def metric(self, key: Key, name: str) -> list[float]:
        """``name`` (its latest value) from every finished final run of the cell that logged it."""
        return [r.data.metrics[name] for r in self.finals.get(key, []) if name in r.data.metrics]


def _search(client: MlflowClient, experiment_id: str, phase: str) -> list[Run]:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=f"tags.phase = '{phase}'",
                                  max_results=5000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def load_runs(tracking_uri: str, experiment: str) -> StudyRuns:
    """Every cell, tuning trial and final run of ``experiment``; raises ValueError if it is absent."""
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ValueError(f"no MLflow experiment '{experiment}' at {tracking_uri}")
    runs = StudyRuns(client, f"'{experiment}' at {tracking_uri}")
    for phase in ("cell", "tune", "final"):
        for run in _search(client, found.experiment_id, phase):
            tags = run.data.tags
            if "dataset" not in tags or "method" not in tags:
                continue
            key = (dataset_key(tags), tags["method"])
            runs.cells.add(key)
            if phase != "cell" and run.info.status == "RUNNING":
                runs.running += 1
            if phase == "tune":
                runs.tune.setdefault(key, []).append(run)
            elif phase == "final":
                runs.final_all.setdefault(key, []).append(run)
                if run.info.status == "FINISHED":
                    runs.finals.setdefault(key, []).append(run)
    for finals in runs.finals.values():
        finals.sort(key=_seed_order)
    return runs


def _seed_order(run: Run) -> tuple:
    seed = run.data.params.get("seed", "")
    return (not seed.isdigit(), int(seed) if seed.isdigit() else 0, run.info.start_time or 0)
