"""The study file as one typed model: ``Study`` mirrors the YAML key for key (``search.asha.
grace_period`` is ``Study.search.asha.grace_period``), forbids unknown keys, and checks what it
can before anything runs: methods and backbone against their registries, every search-space
entry against its method, ASHA against the training schedule, and (``check_data``) the files
it names. Every error is one line naming the file and the key
(``spaces/x.yaml: search.num_samples: ...``); ``peft-search schema`` prints its JSON schema.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (AfterValidator, BeforeValidator, Field, PlainSerializer, PlainValidator, PrivateAttr,
                      ValidationError, ValidationInfo, model_validator)

from peft_core.backbones import get_backbone
from peft_core.data.loaders import FORMATS
from peft_core.registry import get_method
from peft_core.train import TrainConfig, TrainSettings
from peft_core.typed import KeyedError, StrictModel, one_line
from peft_core.yaml_files import read_yaml

from .space import Dimension, grid_points, parse_dimension, to_yaml

SAMPLERS = ("tpe", "grid", "random", "cmaes")
TRAIN_KEYS = set(TrainSettings.model_fields)  # what a study's train: and spaces: may set


class StudyError(ValueError):
    """A study file is invalid: one line, exit code 2, nothing written."""


@dataclass(frozen=True)
class Cell:
    dataset: str
    method: str

    @property
    def id(self) -> str:
        return f"{self.dataset}/{self.method}"

    @classmethod
    def parse(cls, cell_id: str) -> "Cell":
        dataset, method = cell_id.rsplit("/", 1)
        return cls(dataset, method)


# -- field types whose validators call the registries ----------------------------------------
def _registered(lookup):
    def check(name: str) -> str:
        lookup(name)  # raises a one-line ValueError naming the allowed names
        return name
    return check


MethodName = Annotated[str, AfterValidator(_registered(get_method))]
BackboneName = Annotated[str, AfterValidator(_registered(get_backbone))]


def _sampler(value: Any) -> Any:
    if isinstance(value, str) and value not in SAMPLERS:
        raise ValueError(f"unknown sampler '{value}'; allowed: {', '.join(SAMPLERS)}")
    return value


def _num_samples(value: Any) -> Any:
    if value == "grid":
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"num_samples={value!r}: expected int >= 1 or 'grid'")
    if value < 1:
        raise ValueError(f"num_samples={value!r} is invalid; allowed: >= 1 or 'grid'")
    return value


def _tracking_uri(uri: str | None) -> str | None:
    if uri is not None and not uri.startswith(("http://", "https://", "file:", "sqlite:", "databricks")):
        raise ValueError(f"unsupported URI '{uri}'; use http(s)://, file: or sqlite:")
    return uri


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class _SpaceEntry(StrictModel):
    """One search-space entry as written (for the schema): a plain value is a one-point grid."""
    grid: list[Any] | None = Field(None, min_length=1)
    choice: list[Any] | None = Field(None, min_length=1)
    loguniform: list[float] | None = Field(None, min_length=2, max_length=2)
    uniform: list[float] | None = Field(None, min_length=2, max_length=2)
    int_: list[int] | None = Field(None, alias="int", min_length=2, max_length=2)


SpaceDimension = Annotated[
    Dimension,
    PlainValidator(lambda spec: parse_dimension("", spec),
                   json_schema_input_type=Union[_SpaceEntry, float, str, bool, None]),
    PlainSerializer(to_yaml)]


# -- the sections -------------------------------------------------------------------------
class Asha(StrictModel):
    grace_period: int = Field(1, ge=1, description="first rung, in epochs; must be above train.warmup_epoch")
    reduction_factor: int = Field(3, ge=2)
    max_t: int | None = Field(None, ge=1, description="last epoch ASHA counts (default: train.epoch)")


class Search(StrictModel):
    sampler: Annotated[Literal[SAMPLERS], BeforeValidator(_sampler)] = "tpe"
    num_samples: Annotated[Union[Annotated[int, Field(ge=1)], Literal["grid"]],
                           BeforeValidator(_num_samples)] = 8
    metric: str = "val_top1"
    asha: Annotated[Asha | None, BeforeValidator(lambda v: None if v is False else v)] = None
    max_concurrent: int = Field(2, ge=1)
    seed: int = 0
    warm_start: bool = False
    max_failures: int = Field(2, ge=0, description="retries of a trial whose node died (from its checkpoint)")
    reuse_actors: bool = Field(True, description="a finished trial's process takes the next trial")


class Final(StrictModel):
    seeds: list[int] = Field(default_factory=lambda: [42], min_length=1)


class Resources(StrictModel):
    cpu: float = Field(1.0, ge=0)
    gpu: float = Field(0.0, ge=0)


class Mlflow(StrictModel):
    tracking_uri: Annotated[str | None, AfterValidator(_tracking_uri)] = None
    experiment: str | None = Field(None, description="default: the study's name")


class DatasetSettings(StrictModel):
    data_path: str | None = Field(None, description="default: data_root")
    format: Literal[FORMATS] = "vtab"
    num_classes: int | None = Field(None, ge=2)


def _datasets(value: Any) -> Any:
    """A list of names is a mapping of names to default settings."""
    if isinstance(value, list):
        if not all(isinstance(name, str) for name in value):
            raise ValueError(f"expected a list of dataset names, got {value!r}")
        value = dict.fromkeys(value)
    if isinstance(value, dict):
        return {name: {} if settings is None else settings for name, settings in value.items()}
    return value


class Study(StrictModel):
    """A study: datasets × methods, each cell searched, then its final runs."""

    include: Annotated[list[str] | None, BeforeValidator(_as_list)] = Field(
        None, description="files merged underneath this one (already merged when validated)")
    name: str | None = Field(None, description="default: the file's name")
    backbone: BackboneName = "fmnist_vit_tiny"
    checkpoint: str | None = Field(None, description="local weights file (default: the backbone's own)")
    data_root: str | None = None
    datasets: Annotated[dict[str, DatasetSettings], Field(min_length=1), BeforeValidator(
        _datasets, json_schema_input_type=Union[list[str], dict[str, Union[DatasetSettings, None]]])]
    methods: list[MethodName] = Field(min_length=1)
    train: TrainSettings = Field(default_factory=TrainSettings)
    spaces: dict[MethodName, dict[str, SpaceDimension]] = Field(default_factory=dict)
    search: Search = Field(default_factory=Search)
    final: Final = Field(default_factory=Final)
    resources: Resources = Field(default_factory=Resources)
    mlflow: Mlflow = Field(default_factory=Mlflow)
    storage_path: str | None = Field(None, description="the study folder, on storage every node mounts")

    _source: Path = PrivateAttr(default=Path("study.yaml"))
    _own_data_path: set[str] = PrivateAttr(default_factory=set)  # datasets not on data_root

    @property
    def source(self) -> Path:
        return self._source

    @property
    def experiment(self) -> str:
        return self.mlflow.experiment or self.name

    # -- checks across sections ---------------------------------------------------------------
    @model_validator(mode="after")
    def _resolve_and_check(self, info: ValidationInfo) -> "Study":
        context = info.context or {}
        source = Path(context.get("source", "study.yaml")).resolve()
        self._source = source
        self.name = self.name or source.stem

        def absolute(value: str) -> str:
            return str((source.parent / value).resolve())

        if self.checkpoint is not None:
            self.checkpoint = absolute(self.checkpoint)
        if self.storage_path is not None:
            if "://" in self.storage_path:
                raise KeyedError("storage_path", f"'{self.storage_path}': the study folder (Optuna, ASHA, MLflow "
                                 "state) needs a filesystem path every node mounts (NFS, a shared volume), not "
                                 "object storage")
            self.storage_path = absolute(self.storage_path)
        for name, settings in self.datasets.items():
            if settings.data_path is not None:
                self._own_data_path.add(name)
            path = settings.data_path or self.data_root
            if path is None:
                raise KeyedError(f"datasets.{name}", "no data_path and no data_root")
            settings.data_path = absolute(path)
        self._check_spaces()
        self._check_asha()
        if context.get("check_data", True):
            self._check_files()
        return self

    def _check_spaces(self) -> None:
        grid = self.search.sampler == "grid" or self.search.num_samples == "grid"
        for method, space in self.spaces.items():
            cls = get_method(method)
            hp_keys = set(cls.__dataclass_fields__) | set(cls.aliases)
            for key, dim in space.items():
                where = f"spaces.{method}.{key}"
                if key not in hp_keys and key not in TRAIN_KEYS:
                    raise KeyedError(where, f"unknown key for '{method}'; allowed: "
                                     f"{', '.join(sorted(hp_keys | TRAIN_KEYS))}")
                if grid and not dim.categorical:
                    raise KeyedError(where, f"grid search needs grid/choice values, got {dim.kind}")
                if key in TRAIN_KEYS:
                    values = dim.values if dim.categorical else dim.values[:1]
                    for value in values:
                        try:
                            TrainSettings(**{key: value})
                        except ValidationError as err:
                            raise KeyedError(where, one_line(err, TrainSettings)) from None
                else:
                    for value in dim.values if dim.categorical else dim.values[:1]:
                        try:
                            cls.from_hp(**{key: value})
                        except ValueError as err:
                            raise KeyedError(where, str(err)) from None

    def _check_asha(self) -> None:
        asha = self.search.asha
        if asha is None:
            return
        epochs = self.train.epoch
        last = min(asha.max_t or epochs, epochs)
        if asha.grace_period >= last:
            raise KeyedError("search.asha.grace_period", f"must be below max_t and train.epoch ({last})")
        if asha.grace_period <= self.train.warmup_epoch:
            # A rung inside the warm-up ranks trials that have only trained at the warm-up lr: noise.
            raise KeyedError("search.asha.grace_period", f"must be above train.warmup_epoch "
                             f"({self.train.warmup_epoch}): a rung inside the warm-up ranks models that "
                             "have barely trained")

    def _check_files(self) -> None:
        if self.checkpoint is not None and not Path(self.checkpoint).is_file():
            raise KeyedError("checkpoint", f"file not found: {self.checkpoint}")
        for name, settings in self.datasets.items():
            if not Path(settings.data_path).is_dir():
                key = f"datasets.{name}.data_path" if name in self._own_data_path else "data_root"
                raise KeyedError(key, f"data root not found: {settings.data_path}")
            task = name.split("-", 1)[1] if name.startswith("processed_vtab-") else name
            if settings.format == "vtab" and not (Path(settings.data_path) / task).is_dir():
                raise KeyedError(f"datasets.{name}", f"unknown dataset: no folder {Path(settings.data_path) / task}")

    # -- what the service asks of a study ------------------------------------------------------
    def cells(self) -> list[Cell]:
        return [Cell(d, m) for d in self.datasets for m in self.methods]

    def space(self, method: str) -> dict[str, Dimension]:
        return self.spaces.get(method, {})

    def budget(self, cell: Cell) -> int:
        """Tuning trials of a cell: the size of its grid, or ``num_samples``."""
        if self.search.num_samples == "grid" or self.search.sampler == "grid":
            return max(1, len(grid_points(self.space(cell.method))))
        return int(self.search.num_samples)

    def milestones(self) -> list[int]:
        """ASHA rung epochs (the trial evaluates at each)."""
        asha = self.search.asha
        if asha is None:
            return []
        rungs, t = [], asha.grace_period
        while t < min(asha.max_t or self.train.epoch, self.train.epoch):
            rungs.append(int(t))
            t *= asha.reduction_factor
        return rungs

    def trial_config(self, cell: Cell, params: dict[str, Any], phase: str, seed: int | None = None) -> dict:
        """The complete, self-describing TrainConfig of one trial (a dict)."""
        data = self.datasets[cell.dataset]
        values = {**self.train.model_dump(), "backbone": self.backbone, "checkpoint": self.checkpoint,
                  "method": cell.method, "data": cell.dataset, "data_path": data.data_path,
                  "data_format": data.format, "num_classes": data.num_classes, "phase": phase,
                  "eval_epochs": self.milestones() if phase == "tune" else []}
        if seed is not None:
            values["seed"] = seed
        values.update({k: v for k, v in params.items() if k in TRAIN_KEYS})
        values["hp"] = {k: v for k, v in params.items() if k not in TRAIN_KEYS}
        return TrainConfig(**values).to_dict()


def validate_study(raw: dict[str, Any], source: Path, check_data: bool = True) -> Study:
    """The typed study of an already-read mapping; StudyError ``FILE: dotted.key: message``."""
    try:
        return Study.model_validate(raw, context={"source": source, "check_data": check_data})
    except ValidationError as err:
        raise StudyError(f"{source}: {one_line(err, Study)}") from None


def load_study(path: str | Path, check_data: bool = True) -> Study:
    """Read (includes merged) and validate a study file; raises StudyError (one line)."""
    source = Path(path)
    try:
        raw = read_yaml(source)
    except ValueError as err:
        raise StudyError(str(err)) from None
    return validate_study(raw, source.resolve(), check_data)


def portable_mapping(path: str | Path) -> dict[str, Any]:
    """The study with its includes merged and every path absolute: a file that can be moved
    (``submit`` ships it to a cluster, where the same paths must exist)."""
    source = Path(path).resolve()
    raw = read_yaml(source)
    raw.setdefault("name", source.stem)

    def absolute(value: Any) -> str:
        return str((source.parent / str(value)).resolve())

    for key in ("data_root", "checkpoint", "storage_path"):
        if raw.get(key) is not None:
            raw[key] = absolute(raw[key])
    datasets = raw.get("datasets")
    for settings in datasets.values() if isinstance(datasets, dict) else ():
        if isinstance(settings, dict) and settings.get("data_path") is not None:
            settings["data_path"] = absolute(settings["data_path"])
    return raw


def study_schema() -> dict[str, Any]:
    """The JSON schema of a study file, with the registered methods' hyper-parameter keys
    under ``spaces`` (so an editor completes them)."""
    schema = Study.model_json_schema()
    from peft_core.registry import method_names
    entry = schema["properties"]["spaces"]["additionalProperties"]
    methods = {}
    for name in method_names():
        cls = get_method(name)
        keys = sorted(set(cls.__dataclass_fields__) | set(cls.aliases) | TRAIN_KEYS)
        methods[name] = {"type": "object", "additionalProperties": False,
                         "properties": {k: entry["additionalProperties"] for k in keys}}
    schema["properties"]["spaces"] = {"type": "object", "properties": methods, "additionalProperties": False}
    schema["properties"]["methods"]["items"] = {"enum": method_names()}
    return schema
