"""The study file as one typed model: ``Study`` mirrors the YAML key for key (``search.asha.
grace_period`` is ``Study.search.asha.grace_period``), forbids unknown keys, and checks what it
can before anything runs: methods and backbone against their registries, every search-space
entry against its method, ASHA against the training schedule, and (``check_data``) the files
it names. Every error is one line naming the file and the key
(``spaces/x.yaml: search.num_samples: ...``); ``peft-search schema`` prints its JSON schema.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (AfterValidator, BeforeValidator, Field, PlainSerializer, PlainValidator, PrivateAttr,
                      ValidationError, ValidationInfo, model_validator)

from peft_core.backbones import check_checkpoint
from peft_core.data.loaders import FORMATS, DataSpec, check_dataset
from peft_core.registry import get_method, method_names
from peft_core.run_config import merged_values, study_space
from peft_core.train import BackboneName, MethodName, Seed, TrainConfig, TrainSettings, weights_file
from peft_core.typed import KeyedError, StrictModel, message_of, one_line
from peft_core.yaml_files import read_yaml

from .space import Dimension, grid_points, parse_dimension, to_yaml

SAMPLERS = ("tpe", "grid", "random", "cmaes")
TRAIN_KEYS = set(TrainSettings.model_fields)  # what a study's train: and spaces: may set
# What a tuning trial reports (peft_core/train.py) that the search can maximize.
SELECTION_METRICS = ("val_top1", "val_top5")


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


def _metric(value: str) -> str:
    allowed = ", ".join(SELECTION_METRICS)
    if value.startswith("test_"):
        raise ValueError(f"'{value}': the test set never selects anything (final runs test once, at the "
                         f"end); allowed: {allowed}")
    if value == "val_loss":
        raise ValueError(f"'{value}': the search maximizes its metric, so a loss would pick the worst "
                         f"trial; allowed: {allowed}")
    if value not in SELECTION_METRICS:
        raise ValueError(f"'{value}' is not a validation metric trials report; allowed: {allowed}")
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


NumSamples = Annotated[Union[Annotated[int, Field(ge=1)], Literal["grid"]], BeforeValidator(_num_samples)]


class Search(StrictModel):
    sampler: Annotated[Literal[SAMPLERS], BeforeValidator(_sampler)] = "tpe"
    num_samples: NumSamples = 8
    num_samples_by_method: dict[str, NumSamples] = Field(
        default_factory=dict, description="a method's own num_samples (e.g. grid for a method with a small grid)")
    metric: Annotated[str, AfterValidator(_metric)] = "val_top1"
    asha: Annotated[Asha | None, BeforeValidator(lambda v: None if v is False else v)] = None
    max_concurrent: int = Field(2, ge=1)
    seed: Seed = 0
    warm_start: bool = False
    max_failures: int = Field(2, ge=0, description="retries of a trial whose node died (from its checkpoint)")
    reuse_actors: bool = Field(True, description="a finished trial's process takes the next trial")


class Final(StrictModel):
    seeds: list[Seed] = Field(default_factory=lambda: [42], min_length=1)


class Resources(StrictModel):
    cpu: float = Field(1.0, ge=0)
    gpu: float = Field(0.0, ge=0)


class Mlflow(StrictModel):
    tracking_uri: Annotated[str | None, AfterValidator(_tracking_uri)] = None
    experiment: str | None = Field(None, description="default: the study's name")
    outage_limit: float = Field(1800.0, gt=0, description="seconds the tracking server may be away (its writes "
                                "kept, sent when it is back) before the driver stops; the study resumes later")


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
    methods: list[str] = Field(min_length=1, description="registered methods and variants")
    variants: dict[str, MethodName] = Field(default_factory=dict, description=(
        "cells of one method under a name of their own, their fixed values in spaces (lora_8: lora, "
        "with spaces.lora_8.lora_bottleneck: 8); a space's files name it themselves"))
    train: TrainSettings = Field(default_factory=TrainSettings)
    spaces: dict[str, dict[str, SpaceDimension]] = Field(default_factory=dict, description=(
        "per method or variant: its search space; files: [FILE, ...] (the study's own method, "
        "lr_wd_*.yml or default_*.yml files, relative to this file) merged underneath"))
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
    @model_validator(mode="before")
    @classmethod
    def _spaces_from_files(cls, data: Any, info: ValidationInfo) -> Any:
        return spaces_from_files(data, Path((info.context or {}).get("source", "study.yaml")).resolve())

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
        self._check_names()
        self._check_spaces()
        if context.get("starting", True):  # a study folder read back keeps the budget it started with
            self._check_budget()
        self._check_asha()
        if context.get("check_data", True):
            self._check_files()
        return self

    def _check_names(self) -> None:
        """Every name a cell or a space uses is a registered method or a variant of one."""
        registered = set(method_names())
        for name in self.variants:
            if name in registered:
                raise KeyedError(f"variants.{name}", f"'{name}' is a method already; give its variant another name")
        known = registered | set(self.variants)
        named = [(f"methods[{i}]", m) for i, m in enumerate(self.methods)]
        named += [(f"spaces.{m}", m) for m in self.spaces]
        named += [(f"search.num_samples_by_method.{m}", m) for m in self.search.num_samples_by_method]
        for key, name in named:
            if name not in known:
                raise KeyedError(key, f"unknown method '{name}' (a variant needs variants.{name}: METHOD "
                                 f"or spaces.{name}.files); methods: {', '.join(sorted(registered))}")

    def base_method(self, name: str) -> str:
        """The registered method a cell's method (a method or a variant) runs."""
        return self.variants.get(name, name)

    def walks_grid(self, method: str) -> bool:
        """Whether a method's cells walk their grid point by point: every method under the grid
        sampler, and each method whose own ``num_samples`` is ``grid`` (study-wide or by method)."""
        return self.search.sampler == "grid" or self.num_samples(method)[0] == "grid"

    def _check_spaces(self) -> None:
        for method, space in self.spaces.items():
            grid = self.walks_grid(method)
            cls = get_method(self.base_method(method))
            hp_keys = set(cls.__dataclass_fields__) | set(cls.aliases)
            for key, dim in space.items():
                where = f"spaces.{method}.{key}"
                if key not in hp_keys and key not in TRAIN_KEYS:
                    raise KeyedError(where, f"unknown key for '{method}'; allowed: "
                                     f"{', '.join(sorted(hp_keys | TRAIN_KEYS))}")
                if grid and not dim.categorical:
                    raise KeyedError(where, f"grid search needs grid/choice values, got {dim.kind}")
                if key not in TRAIN_KEYS:
                    for value in dim.values if dim.categorical else dim.values[:1]:
                        try:
                            cls.from_hp(**{key: value})
                        except ValueError as err:
                            raise KeyedError(where, str(err)) from None
            self._check_train_values(method, space)

    def _check_train_values(self, method: str, space: dict[str, Dimension]) -> None:
        """Every training setting a trial of ``method`` can get: each combination of the space's
        training values (grid values, range bounds) over the study's ``train:`` settings, so that
        e.g. ``epoch: {grid: [5]}`` under ``train.warmup_epoch: 10`` fails here, not in a trial."""
        dims = {key: dim for key, dim in space.items() if key in TRAIN_KEYS}
        # a float range samples floats: an int setting (epoch) must be refused as the trial would
        candidates = [dim.values if dim.kind in ("grid", "choice", "int") else tuple(map(float, dim.values))
                      for dim in dims.values()]
        settings = self.train.model_dump()
        for values in itertools.product(*candidates):
            try:
                TrainSettings(**{**settings, **dict(zip(dims, values))})
            except ValidationError as err:
                key, message = message_of(err.errors()[0], TrainSettings)
                # a train: setting that a space value contradicts is named after the space's key
                name = key if key in dims else next(iter(dims))
                raise KeyedError(f"spaces.{method}.{name}", message if key == name else f"{key}: {message}") from None

    def _check_budget(self) -> None:
        """``num_samples`` above a finite space's size would spend trials repeating its points."""
        for method in self.methods:
            samples, key = self.num_samples(method)
            space = self.space(method)
            if self.walks_grid(method) or not all(dim.categorical for dim in space.values()):
                continue
            size = math.prod(len(dim.values) for dim in space.values())  # 1: nothing to search
            if samples > size:
                what = (f"the {size} points of spaces.{method} (all grid/choice)" if space else
                        f"the 1 point of {method}, which has no spaces entry")
                raise KeyedError(key, f"{samples} is more than {what}: trials would repeat points; use "
                                 f"num_samples: grid, or search.num_samples_by_method: {{{method}: grid}}")

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
        """The weights file (its header against the backbone) and every dataset's folders, split
        lists and labels, read without opening an image or a tensor."""
        try:
            weights = weights_file(self.backbone, self.checkpoint, self.train.pretrained)
            if weights is not None:  # with class_names the file is open_clip's, not the backbone's layout
                check_checkpoint(self.backbone, weights, header=self.train.class_names is None)
        except ValueError as err:
            raise KeyedError("checkpoint", str(err)) from None
        for name, settings in self.datasets.items():
            if not Path(settings.data_path).is_dir():
                key = f"datasets.{name}.data_path" if name in self._own_data_path else "data_root"
                raise KeyedError(key, f"data root not found: {settings.data_path}")
            spec = DataSpec(name, Path(settings.data_path), settings.format, settings.num_classes)
            if spec.format == "vtab" and not (spec.root / spec.task).is_dir():
                raise KeyedError(f"datasets.{name}", f"unknown dataset: no folder {spec.root / spec.task}")
            try:
                check_dataset(spec)
            except ValueError as err:
                raise KeyedError(f"datasets.{name}", str(err)) from None

    # -- what the service asks of a study ------------------------------------------------------
    def cells(self) -> list[Cell]:
        return [Cell(d, m) for d in self.datasets for m in self.methods]

    def space(self, method: str) -> dict[str, Dimension]:
        return self.spaces.get(method, {})

    def num_samples(self, method: str) -> tuple[int | str, str]:
        """A method's num_samples and the key that set it."""
        if method in self.search.num_samples_by_method:
            return self.search.num_samples_by_method[method], f"search.num_samples_by_method.{method}"
        return self.search.num_samples, "search.num_samples"

    def budget(self, cell: Cell) -> int:
        """Tuning trials of a cell: the size of its grid, or its method's ``num_samples``."""
        if self.walks_grid(cell.method):
            return max(1, len(grid_points(self.space(cell.method))))
        return int(self.num_samples(cell.method)[0])

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
                  "method": self.base_method(cell.method), "data": cell.dataset, "data_path": data.data_path,
                  "data_format": data.format, "num_classes": data.num_classes, "phase": phase,
                  "eval_epochs": self.milestones() if phase == "tune" else []}
        if seed is not None:
            values["seed"] = seed
        values.update({k: v for k, v in params.items() if k in TRAIN_KEYS})
        values["hp"] = {k: v for k, v in params.items() if k not in TRAIN_KEYS}
        return TrainConfig(**values).to_dict()


def validate_study(raw: dict[str, Any], source: Path, check_data: bool = True, starting: bool = True) -> Study:
    """The typed study of an already-read mapping; StudyError ``FILE: dotted.key: message``.
    ``starting``: a study about to start, held to the start line's budget rules too."""
    try:
        return Study.model_validate(raw, context={"source": source, "check_data": check_data, "starting": starting})
    except ValidationError as err:
        raise StudyError(f"{source}: {one_line(err, Study)}") from None


def load_study(path: str | Path, check_data: bool = True, starting: bool = True) -> Study:
    """Read (includes merged) and validate a study file; raises StudyError (one line)."""
    source = Path(path)
    try:
        raw = read_yaml(source)
    except ValueError as err:
        raise StudyError(str(err)) from None
    return validate_study(raw, source.resolve(), check_data, starting)


def spaces_from_files(data: Any, source: Path) -> Any:
    """``spaces.X.files``: the study's own files as X's space (``run_config.study_space``);
    entries written next to it win. X's method comes from the files when it is no
    registered method and ``variants`` does not name one."""
    spaces = data.get("spaces") if isinstance(data, dict) else None
    if not isinstance(spaces, dict) or not any(isinstance(v, dict) and "files" in v for v in spaces.values()):
        return data
    train = data.get("train") if isinstance(data.get("train"), dict) else {}
    settings = {**TrainSettings().model_dump(), **train}
    variants = dict(data.get("variants") or {}) if isinstance(data.get("variants"), dict) else {}
    spaces = dict(spaces)
    for name, entry in spaces.items():
        if not isinstance(entry, dict) or "files" not in entry:
            continue
        entry = dict(entry)
        files = _as_list(entry.pop("files"))
        where = f"spaces.{name}.files"
        if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
            raise KeyedError(where, "expected a file or a list of files")
        try:
            values, _ = merged_values([source.parent / file for file in files])
            label = " + ".join(files)  # as written in the study
            known = name if name in method_names() else variants.get(name)
            method, found = study_space(values, label, settings, known, data.get("backbone"))
        except ValueError as err:
            raise KeyedError(where, str(err)) from None
        if known is not None and method != known:
            raise KeyedError(where, f"the files describe '{method}', not '{known}'")
        if known is None:
            variants[name] = method
        spaces[name] = {**{k: {"grid": v} for k, v in found.items()}, **entry}
    return {**data, "spaces": spaces, **({"variants": variants} if variants else {})}


def portable_mapping(path: str | Path) -> dict[str, Any]:
    """The study with its includes merged, the spaces its files name written out and every path
    absolute: a file that can be moved (``submit`` ships it to a cluster, where the same paths
    must exist) and that holds the study as it was (a study folder keeps it)."""
    source = Path(path).resolve()
    raw = read_yaml(source)
    raw.setdefault("name", source.stem)

    def absolute(value: Any) -> str:
        return str((source.parent / str(value)).resolve())

    for key in ("data_root", "checkpoint", "storage_path"):
        if raw.get(key) is not None:
            raw[key] = absolute(raw[key])
    raw = spaces_from_files(raw, source)  # the files' grids written out: later edits of them change nothing
    datasets = raw.get("datasets")
    for settings in datasets.values() if isinstance(datasets, dict) else ():
        if isinstance(settings, dict) and settings.get("data_path") is not None:
            settings["data_path"] = absolute(settings["data_path"])
    return raw


def study_schema() -> dict[str, Any]:
    """The JSON schema of a study file, with the registered methods' hyper-parameter keys
    under ``spaces`` (so an editor completes them); a variant's space takes any entry."""
    schema = Study.model_json_schema()
    entry = schema["properties"]["spaces"]["additionalProperties"]
    files = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
    methods = {}
    for name in method_names():
        cls = get_method(name)
        keys = sorted(set(cls.__dataclass_fields__) | set(cls.aliases) | TRAIN_KEYS)
        methods[name] = {"type": "object", "additionalProperties": False,
                         "properties": {**{k: entry["additionalProperties"] for k in keys}, "files": files}}
    variant = {"type": "object", "properties": {"files": files}, "additionalProperties": entry["additionalProperties"]}
    schema["properties"]["spaces"] = {"type": "object", "properties": methods, "additionalProperties": variant}
    schema["properties"]["methods"]["items"] = {"type": "string", "examples": method_names()}
    schema["properties"]["variants"]["additionalProperties"] = {"enum": method_names()}
    return schema
