"""Study YAML: load with includes, validate everything before anything runs.

Every error is one line naming the file and the key (``spaces/x.yaml: search.num_samples: ...``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from peft_core.backbones import get_backbone
from peft_core.data.loaders import FORMATS
from peft_core.registry import get_method
from peft_core.train import TrainConfig

from .space import Dimension, grid_points, parse_dimension

SAMPLERS = ("tpe", "grid", "random", "cmaes")
_TOP = {"name", "include", "backbone", "checkpoint", "data_root", "datasets", "methods", "train",
        "spaces", "search", "final", "resources", "mlflow", "storage_path"}
_SEARCH = {"sampler", "num_samples", "metric", "asha", "max_concurrent", "seed", "warm_start", "max_failures",
           "reuse_actors"}
_ASHA = {"grace_period", "reduction_factor", "max_t"}
_FINAL = {"seeds"}
_RESOURCES = {"cpu", "gpu"}
_MLFLOW = {"tracking_uri", "experiment"}
_DATASET = {"data_path", "format", "num_classes"}
# Keys a cell decides, not the study-wide training defaults.
_PER_TRIAL = {"method", "hp", "data", "data_path", "data_format", "num_classes", "phase", "seed",
              "backbone", "checkpoint", "eval_epochs"}


class StudyError(ValueError):
    """A study file is invalid: one line, exit code 2, nothing written."""


@dataclass(frozen=True)
class Dataset:
    name: str
    data_path: str
    format: str = "vtab"
    num_classes: int | None = None


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


@dataclass
class Study:
    name: str
    source: Path
    backbone: str
    checkpoint: str | None
    datasets: dict[str, Dataset]
    methods: list[str]
    train: dict[str, Any]
    spaces: dict[str, dict[str, Dimension]]
    sampler: str = "tpe"
    num_samples: int | str = 8
    metric: str = "val_top1"
    asha: dict[str, int] | None = None
    max_concurrent: int = 2
    seed: int = 0
    warm_start: bool = False
    max_failures: int = 2  # retries of a trial that died with its node (from its last checkpoint)
    reuse_actors: bool = True  # a finished trial's process takes the next trial (no re-import)
    final_seeds: list[int] = field(default_factory=lambda: [42])
    cpu: float = 1.0
    gpu: float = 0.0
    tracking_uri: str | None = None
    experiment: str = ""
    storage_path: str | None = None

    def cells(self) -> list[Cell]:
        return [Cell(d, m) for d in self.datasets for m in self.methods]

    def space(self, method: str) -> dict[str, Dimension]:
        return self.spaces.get(method, {})

    def budget(self, cell: Cell) -> int:
        """Tuning trials of a cell: the size of its grid, or ``num_samples``."""
        if self.num_samples == "grid" or self.sampler == "grid":
            return max(1, len(grid_points(self.space(cell.method))))
        return int(self.num_samples)

    def epochs(self) -> int:
        return int(self.train.get("epoch", TrainConfig.epoch))

    def milestones(self) -> list[int]:
        """ASHA rung epochs (the trial evaluates at each)."""
        if not self.asha:
            return []
        rungs, t = [], self.asha["grace_period"]
        while t < min(self.asha["max_t"], self.epochs()):
            rungs.append(int(t))
            t *= self.asha["reduction_factor"]
        return rungs

    def trial_config(self, cell: Cell, params: dict[str, Any], phase: str, seed: int | None = None) -> dict:
        """The complete, self-describing TrainConfig of one trial (a dict)."""
        data = self.datasets[cell.dataset]
        values = {**self.train, "backbone": self.backbone, "checkpoint": self.checkpoint,
                  "method": cell.method, "data": cell.dataset, "data_path": data.data_path,
                  "data_format": data.format, "num_classes": data.num_classes, "phase": phase,
                  "eval_epochs": self.milestones() if phase == "tune" else []}
        if seed is not None:
            values["seed"] = seed
        keys = TrainConfig.keys()
        hp = {k: v for k, v in params.items() if k not in keys}
        values.update({k: v for k, v in params.items() if k in keys})
        values["hp"] = hp
        return TrainConfig(**values).to_dict()


def _read(path: Path, stack: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML mapping with its ``include`` files merged underneath it (the file wins)."""
    path = path.resolve()
    if path in stack:
        raise StudyError(f"{stack[-1]}: include: cycle through {path}")
    if not path.is_file():
        where = f"{stack[-1]}: include: " if stack else ""
        raise StudyError(f"{where}file not found: {path}")
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise StudyError(f"{path}:{mark.line + 1 if mark else '?'}: not valid YAML") from None
    if not isinstance(content, dict):
        raise StudyError(f"{path}: expected a mapping of keys to values")
    includes = content.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list):
        raise StudyError(f"{path}: include: expected a file or a list of files")
    merged: dict[str, Any] = {}
    for inc in includes:
        _merge(merged, _read(path.parent / str(inc), stack + (path,)))
    _merge(merged, content)
    return merged


def portable_mapping(path: str | Path) -> dict[str, Any]:
    """The study with its includes merged and every path absolute: a file that can be moved
    (``submit`` ships it to a cluster, where the same paths must exist)."""
    source = Path(path).resolve()
    raw = _read(source)
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


def _merge(base: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


class _Checker:
    """Typed reads from the merged mapping; every error names the file and the dotted key."""

    def __init__(self, source: Path) -> None:
        self.source = source

    def fail(self, key: str, message: str) -> StudyError:
        return StudyError(f"{self.source}: {key}: {message}")

    def section(self, raw: dict, key: str, allowed: set[str]) -> dict:
        value = raw.get(key) or {}
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a mapping, got {type(value).__name__}")
        for sub in value:
            if sub not in allowed:
                raise self.fail(f"{key}.{sub}", f"unknown key; allowed: {', '.join(sorted(allowed))}")
        return value

    def typed(self, key: str, value: Any, kind: type | tuple, low: float | None = None) -> Any:
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise self.fail(key, f"expected {names}, got {value!r}")
        if low is not None and value < low:
            raise self.fail(key, f"must be >= {low}, got {value!r}")
        return value


def load_study(path: str | Path, check_data: bool = True) -> Study:
    """Read and validate a study file; raises StudyError (one line) on any problem."""
    source = Path(path)
    raw = _read(source)
    c = _Checker(source)
    for key in raw:
        if key not in _TOP:
            raise c.fail(key, f"unknown key; allowed: {', '.join(sorted(_TOP))}")
    name = c.typed("name", raw.get("name", source.stem), str)
    backbone = c.typed("backbone", raw.get("backbone", "fmnist_vit_tiny"), str)
    try:
        get_backbone(backbone)
    except ValueError as err:
        raise c.fail("backbone", str(err)) from None
    checkpoint = raw.get("checkpoint")
    if checkpoint is not None:
        checkpoint = str((source.parent / c.typed("checkpoint", checkpoint, str)).resolve())
        if check_data and not Path(checkpoint).is_file():
            raise c.fail("checkpoint", f"file not found: {checkpoint}")

    methods = c.typed("methods", raw.get("methods"), list)
    if not methods:
        raise c.fail("methods", "expected a non-empty list of method names")
    for i, method in enumerate(methods):
        try:
            get_method(c.typed(f"methods[{i}]", method, str))
        except ValueError as err:
            raise c.fail(f"methods[{i}]", str(err)) from None

    datasets = _datasets(c, raw, source, check_data)
    train = _train_defaults(c, raw)
    spaces = _spaces(c, raw, methods)
    search = c.section(raw, "search", _SEARCH)
    sampler = c.typed("search.sampler", search.get("sampler", "tpe"), str)
    if sampler not in SAMPLERS:
        raise c.fail("search.sampler", f"unknown sampler '{sampler}'; allowed: {', '.join(SAMPLERS)}")
    num_samples = search.get("num_samples", 8)
    if num_samples != "grid":
        c.typed("search.num_samples", num_samples, int, low=1)
    if sampler == "grid" or num_samples == "grid":
        for method in methods:
            for key, dim in spaces.get(method, {}).items():
                if not dim.categorical:
                    raise c.fail(f"spaces.{method}.{key}", f"grid search needs grid/choice values, got {dim.kind}")
    asha = _asha(c, search.get("asha"), int(train.get("epoch", TrainConfig.epoch)),
                 int(train.get("warmup_epoch", TrainConfig.warmup_epoch)))
    final = c.section(raw, "final", _FINAL)
    seeds = c.typed("final.seeds", final.get("seeds", [42]), list)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise c.fail("final.seeds", f"expected a non-empty list of integers, got {seeds!r}")
    resources = c.section(raw, "resources", _RESOURCES)
    mlflow = c.section(raw, "mlflow", _MLFLOW)
    storage_path = raw.get("storage_path")
    if storage_path is not None:
        c.typed("storage_path", storage_path, str)
        if "://" in storage_path:
            raise c.fail("storage_path", f"'{storage_path}': the study folder (Optuna, ASHA, MLflow state) "
                         "needs a filesystem path every node mounts (NFS, a shared volume), not object storage")
        storage_path = str((source.parent / storage_path).resolve())
    uri = mlflow.get("tracking_uri")
    if uri is not None and not str(uri).startswith(("http://", "https://", "file:", "sqlite:", "databricks")):
        raise c.fail("mlflow.tracking_uri", f"unsupported URI '{uri}'; use http(s)://, file: or sqlite:")
    return Study(
        name=name, source=source.resolve(), backbone=backbone, checkpoint=checkpoint,
        datasets=datasets, methods=methods, train=train, spaces=spaces, sampler=sampler,
        num_samples=num_samples, metric=c.typed("search.metric", search.get("metric", "val_top1"), str),
        asha=asha, max_concurrent=c.typed("search.max_concurrent", search.get("max_concurrent", 2), int, 1),
        seed=c.typed("search.seed", search.get("seed", 0), int),
        warm_start=c.typed("search.warm_start", search.get("warm_start", False), bool),
        max_failures=c.typed("search.max_failures", search.get("max_failures", 2), int, 0),
        reuse_actors=c.typed("search.reuse_actors", search.get("reuse_actors", True), bool),
        final_seeds=seeds, cpu=c.typed("resources.cpu", resources.get("cpu", 1), (int, float), 0),
        gpu=c.typed("resources.gpu", resources.get("gpu", 0), (int, float), 0),
        tracking_uri=uri, experiment=c.typed("mlflow.experiment", mlflow.get("experiment", name), str),
        storage_path=storage_path)


def _datasets(c: _Checker, raw: dict, source: Path, check_data: bool) -> dict[str, Dataset]:
    entries = raw.get("datasets")
    if isinstance(entries, list):
        entries = {c.typed(f"datasets[{i}]", e, str): {} for i, e in enumerate(entries)}
    if not isinstance(entries, dict) or not entries:
        raise c.fail("datasets", "expected a non-empty list of names or a mapping name -> settings")
    root = raw.get("data_root")
    datasets = {}
    for name, settings in entries.items():
        settings = settings or {}
        if not isinstance(settings, dict):
            raise c.fail(f"datasets.{name}", "expected a mapping")
        for key in settings:
            if key not in _DATASET:
                raise c.fail(f"datasets.{name}.{key}", f"unknown key; allowed: {', '.join(sorted(_DATASET))}")
        path = settings.get("data_path", root)
        if path is None:
            raise c.fail(f"datasets.{name}", "no data_path and no data_root")
        path = str((source.parent / str(path)).resolve())
        fmt = settings.get("format", "vtab")
        if fmt not in FORMATS:
            raise c.fail(f"datasets.{name}.format", f"unknown format '{fmt}'; allowed: {', '.join(FORMATS)}")
        num_classes = settings.get("num_classes")
        if num_classes is not None:
            c.typed(f"datasets.{name}.num_classes", num_classes, int, 2)
        if check_data:
            key = "data_root" if "data_path" not in settings else f"datasets.{name}.data_path"
            if not Path(path).is_dir():
                raise c.fail(key, f"data root not found: {path}")
            task = name.split("-", 1)[1] if name.startswith("processed_vtab-") else name
            if fmt == "vtab" and not (Path(path) / task).is_dir():
                raise c.fail(f"datasets.{name}", f"unknown dataset: no folder {Path(path) / task}")
        datasets[name] = Dataset(name, path, fmt, num_classes)
    return datasets


def _train_defaults(c: _Checker, raw: dict) -> dict[str, Any]:
    train = raw.get("train") or {}
    if not isinstance(train, dict):
        raise c.fail("train", "expected a mapping")
    allowed = TrainConfig.keys() - _PER_TRIAL
    for key in train:
        if key not in allowed:
            raise c.fail(f"train.{key}", f"unknown key; allowed: {', '.join(sorted(allowed))}")
    try:
        TrainConfig(**train)
    except ValueError as err:
        detail = str(err).removeprefix("train config: ")
        key = detail.split("=", 1)[0]
        raise c.fail(f"train.{key}", detail) from None
    return dict(train)


def _spaces(c: _Checker, raw: dict, methods: list[str]) -> dict[str, dict[str, Dimension]]:
    spaces_raw = raw.get("spaces") or {}
    if not isinstance(spaces_raw, dict):
        raise c.fail("spaces", "expected a mapping method -> {key: space}")
    spaces = {}
    train_keys = TrainConfig.keys() - _PER_TRIAL
    for method, space in spaces_raw.items():
        try:
            cls = get_method(method)
        except ValueError as err:
            raise c.fail(f"spaces.{method}", str(err)) from None
        if not isinstance(space, dict):
            raise c.fail(f"spaces.{method}", "expected a mapping key -> space")
        hp_keys = {f.name for f in dataclasses.fields(cls)} | set(cls.aliases)
        dims = {}
        for key, spec in space.items():
            where = f"spaces.{method}.{key}"
            if key not in hp_keys and key not in train_keys:
                raise c.fail(where, f"unknown key for '{method}'; allowed: {', '.join(sorted(hp_keys | train_keys))}")
            try:
                dims[key] = parse_dimension(where, spec)
            except ValueError as err:
                raise StudyError(f"{c.source}: {err}") from None
            if key in hp_keys:
                for value in (dims[key].values if dims[key].categorical else dims[key].values[:1]):
                    try:
                        cls.from_hp(**{key: value})
                    except ValueError as err:
                        raise c.fail(where, str(err)) from None
        spaces[method] = dims
    return spaces


def _asha(c: _Checker, asha: Any, epochs: int, warmup: int) -> dict[str, int] | None:
    if asha is None or asha is False:
        return None
    if not isinstance(asha, dict):
        raise c.fail("search.asha", "expected a mapping (grace_period, reduction_factor, max_t) or null")
    for key in asha:
        if key not in _ASHA:
            raise c.fail(f"search.asha.{key}", f"unknown key; allowed: {', '.join(sorted(_ASHA))}")
    out = {"grace_period": c.typed("search.asha.grace_period", asha.get("grace_period", 1), int, 1),
           "reduction_factor": c.typed("search.asha.reduction_factor", asha.get("reduction_factor", 3), int, 2),
           "max_t": c.typed("search.asha.max_t", asha.get("max_t", epochs), int, 1)}
    if out["grace_period"] >= min(out["max_t"], epochs):
        raise c.fail("search.asha.grace_period", f"must be below max_t and train.epoch ({min(out['max_t'], epochs)})")
    if out["grace_period"] <= warmup:
        # A rung inside the warm-up ranks trials that have only trained at the warm-up lr: noise.
        raise c.fail("search.asha.grace_period", f"must be above train.warmup_epoch ({warmup}): a rung inside "
                     "the warm-up ranks models that have barely trained")
    return out
