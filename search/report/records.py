"""A study's MLflow runs, read once and classified into ``RunRecord``s: every table and figure of the
report is a pivot of these records, so this is the only module that queries run data.

Prediction files are the exception to reading everything up front: they are large and only the
overlap analysis wants them, so ``Artifacts`` fetches them on demand.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from peft_core.registry import role_of
from ..mlflow_layout import BASE_METHOD, DATASET, METHOD, NOTE, PHASE, PHASE_CELL, PHASE_FINAL, PHASES, STATE
from .datasets import dataset_key, manyshot_split, vtab_group

Cell = tuple[str, str]  # (dataset, method)
HISTORY_PREFIX = "wise_"  # metrics logged at several steps (WiSE: step = round(10 α)): their history is read
# A trial's end state when the service did not tag one: MLflow's run status, as the trial states.
_STATE_OF_STATUS = {"FINISHED": "completed", "KILLED": "pruned", "FAILED": "failed"}


@dataclass(frozen=True)
class RunRecord:
    """One run of the study, classified once: which cell, phase and state it is, what it logged."""

    run_id: str
    phase: str  # cell | tune | final (search.mlflow_layout.PHASES)
    status: str  # MLflow run status: RUNNING, FINISHED, FAILED, KILLED, SCHEDULED
    state: str | None  # completed | pruned | failed: the ``state`` tag, else from the status; None while running
    dataset: str  # the dataset key (datasets.dataset_key)
    vtab_group: str | None  # natural | specialized | structured; None outside VTAB-1K
    manyshot_base: str | None  # a many-shot subset's dataset and training-set size; None otherwise
    manyshot_size: str | None
    method: str  # the cell's method: a registered one or a variant (lora_8)
    base_method: str  # the registered method it runs (lora)
    role: str  # what the method is in a comparison (peft_core.registry.role_of)
    seed: int | None
    metrics: dict[str, float]  # the latest value of each metric
    params: dict[str, str]
    histories: dict[str, tuple[tuple[int, float], ...]]  # (step, value) of each HISTORY_PREFIX metric
    note: str | None = None  # why the run lacks a metric it should have (the ``note`` tag)

    @property
    def cell(self) -> Cell:
        return self.dataset, self.method

    @property
    def finished_final(self) -> bool:
        """A final run that ended well: the runs every score is computed from."""
        return self.phase == PHASE_FINAL and self.status == "FINISHED"


class Artifacts:
    """A study's run artifacts, listed and downloaded on demand."""

    def __init__(self, client: MlflowClient):
        self._client = client

    def paths(self, run_id: str, folder: str) -> list[str]:
        """The artifact paths directly under ``folder`` of a run."""
        return [info.path for info in self._client.list_artifacts(run_id, folder)]

    def download(self, run_id: str, path: str, dest: Path) -> Path:
        """The local copy of an artifact, downloaded under ``dest``."""
        dest.mkdir(parents=True, exist_ok=True)
        return Path(self._client.download_artifacts(run_id, path, str(dest)))


@dataclass(frozen=True)
class StudyRecords:
    records: tuple[RunRecord, ...]  # cell, tune, then final runs; final runs in seed order
    artifacts: Artifacts

    def finished_finals(self) -> list[RunRecord]:
        return [r for r in self.records if r.finished_final]

    def cells(self) -> list[Cell]:
        """Every cell the study declared or ran, sorted."""
        return sorted({r.cell for r in self.records})

    def running(self) -> int:
        """Trials and final runs still running (not in the tables yet)."""
        return sum(r.phase != PHASE_CELL and r.status == "RUNNING" for r in self.records)


def select(records: Iterable[RunRecord], **fields: Any) -> list[RunRecord]:
    """The records whose ``fields`` equal the values given, in their order."""
    return [r for r in records if all(getattr(r, name) == value for name, value in fields.items())]


def values(records: Iterable[RunRecord], metric: str) -> list[float]:
    """``metric`` from every record that logged it."""
    return [r.metrics[metric] for r in records if metric in r.metrics]


def pivot(records: Iterable[RunRecord], row: str, column: str,
          cell: Callable[[list[RunRecord]], Any]) -> dict[tuple[Any, Any], Any]:
    """{(row field, column field): ``cell`` of the records sharing both}, e.g. rows = method,
    columns = dataset, cell = the score of a metric; pairs without records are absent."""
    groups: dict[tuple[Any, Any], list[RunRecord]] = {}
    for r in records:
        groups.setdefault((getattr(r, row), getattr(r, column)), []).append(r)
    return {key: cell(group) for key, group in groups.items()}


def _search(client: MlflowClient, experiment_id: str, phase: str) -> list[Run]:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=f"tags.{PHASE} = '{phase}'",
                                  max_results=5000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _record(client: MlflowClient, run: Run, phase: str) -> RunRecord:
    tags, metrics, params = run.data.tags, dict(run.data.metrics), dict(run.data.params)
    dataset = dataset_key(tags)
    split = manyshot_split(dataset)
    base_method = tags.get(BASE_METHOD, tags[METHOD])  # absent in imported runs
    histories = {name: tuple((m.step, m.value) for m in client.get_metric_history(run.info.run_id, name))
                 for name in metrics if name.startswith(HISTORY_PREFIX)}
    return RunRecord(
        run_id=run.info.run_id, phase=phase, status=run.info.status,
        state=tags.get(STATE) or _STATE_OF_STATUS.get(run.info.status),
        dataset=dataset, vtab_group=vtab_group(dataset),
        manyshot_base=split[0] if split else None, manyshot_size=split[1] if split else None,
        method=tags[METHOD], base_method=base_method, role=role_of(base_method), seed=_seed(params),
        metrics=metrics, params=params, histories=histories, note=tags.get(NOTE))


def _seed(params: dict[str, str]) -> int | None:
    seed = params.get("seed", "")
    return int(seed) if seed.isdigit() else None


def _seed_order(run: Run) -> tuple:
    seed = _seed(run.data.params)
    return seed is None, seed or 0, run.info.start_time or 0


def load_records(tracking_uri: str, experiment: str) -> StudyRecords:
    """Every cell, tuning trial and final run of ``experiment`` that names its dataset and method;
    raises ValueError if the experiment is absent."""
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ValueError(f"no MLflow experiment '{experiment}' at {tracking_uri}")
    records = []
    for phase in PHASES:
        runs = [r for r in _search(client, found.experiment_id, phase)
                if DATASET in r.data.tags and METHOD in r.data.tags]
        if phase == PHASE_FINAL:  # the first seed is the run a table takes a single value from
            runs.sort(key=_seed_order)
        records += [_record(client, run, phase) for run in runs]
    return StudyRecords(tuple(records), Artifacts(client))
