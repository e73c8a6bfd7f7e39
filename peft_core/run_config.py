"""Read a run's YAML (ours, or a PETL_Vision default + method file pair) into a ``TrainConfig``.

The study's method files describe a method by flags (``ft_mlp_module: adapter``,
``vpt_mode: deep``, ``fact_type: tt``, ...); they are translated to a registered method name.
Unknown keys are errors naming the file and the key.
"""
from __future__ import annotations

import ast
import dataclasses
import itertools
import math
from pathlib import Path
from typing import Any

from .backbones import get_backbone
from .registry import get_method, method_from_study_keys, method_names, study_flag_keys, study_switch_keys
from .train import TrainConfig
from .yaml_files import read_yaml

# Study keys with another name here.
_RENAMED = {"random_seed": "seed", "normalized": "normalize", "pretrained_weights": "backbone",
            "data_folder": "data_path"}
_BACKBONE_NAMES = {"vit_base_patch16_224_in21k": "vit_b16_in21k",
                   "vit_base_patch16_224.augreg_in21k": "vit_b16_in21k",
                   "dinov2_vitb14": "dinov2_vitb14", "vit_base_patch14_dinov2.lvd142m": "dinov2_vitb14",
                   "vit_base_patch14_dinov2": "dinov2_vitb14",
                   "vit_base_patch16_clip_224": "clip_vitb16", "clip": "clip_vitb16"}
# Study keys that change nothing in a run here (logging, hardware, output; SGD's momentum).
_IGNORED = {"model", "gpu_num", "debug", "output_dir", "store_ckp", "test_data", "exp_name", "experiment_name",
            "final_run", "method_name", "tune", "default", "momentum"}
# Study keys whose every value in the study's files is what this project does; others are refused.
_ONLY = {"optimizer": ("adamw",)}
# The study writes block lists as Python tuples in strings ("(10, 11)") and evaluates them.
_INDEX_KEYS = ("attention_index", "mlp_index", "block_index")


def _study_value(key: str, value: Any, source: str) -> Any:
    if key in _INDEX_KEYS and isinstance(value, str):
        try:
            value = ast.literal_eval(value)  # a literal, never code
        except (ValueError, SyntaxError):
            raise ValueError(f"{source}: {key}: '{value}' is not a list of block indices") from None
        return list(value) if isinstance(value, (tuple, list)) else value
    if key in _ONLY and (value.lower() if isinstance(value, str) else value) not in _ONLY[key]:
        raise ValueError(f"{source}: {key}: {value!r} is not supported; this project runs "
                         f"{' or '.join(map(repr, _ONLY[key]))}")
    return value


def resolve_grid(values: dict[str, Any], source: str) -> tuple[TrainConfig, dict[str, list]]:
    """Merged key/values as a TrainConfig and the grid the study's files list (``lr: [1e-3, 1e-2]``,
    ``lora_bottleneck: [1, 8, 16, 32]``): every point is validated; the config holds the first.
    ``source`` names the file(s) in errors."""
    values = {_RENAMED.get(k, k): _study_value(_RENAMED.get(k, k), v, source) for k, v in values.items()}
    if "backbone" in values:
        values["backbone"] = _BACKBONE_NAMES.get(values["backbone"], values["backbone"])
    crop = values.pop("crop_size", None)
    method = values.pop("method", None) or method_from_study_keys(values, source)
    method_cls = get_method(method)
    fields = _hp_fields(method)
    hp_keys = set(fields) | set(method_cls.aliases)
    hp = dict(values.pop("hp", None) or {})
    train_keys = TrainConfig.keys()
    kwargs: dict[str, Any] = {}
    others = {k for name in method_names() if name != method for k in _hp_fields(name)}
    skipped = study_flag_keys() | _IGNORED | _ONLY.keys() | others
    for key, value in values.items():
        if key in hp_keys:
            hp[key] = value
        elif key in train_keys:
            kwargs[key] = value
        elif key in skipped:
            continue  # the study's flags and settings for other methods, or keys without effect here
        else:
            allowed = ", ".join(sorted(train_keys | hp_keys))
            raise ValueError(f"{source}: unknown key '{key}'; allowed: {allowed}")
    native_lists = {k for k, f in fields.items() if str(f.type).startswith("list")} | {"eval_epochs"}
    grid = {k: v for k, v in {**hp, **kwargs}.items() if isinstance(v, list) and k not in native_lists}
    if any(not points for points in grid.values()):
        raise ValueError(f"{source}: {next(k for k, v in grid.items() if not v)}: an empty list")
    try:  # validate every point now: errors name the file(s) and the key before any work starts
        config = None
        for point in (dict(zip(grid, p)) for p in itertools.product(*grid.values())):
            point_hp = {k: point.get(k, v) for k, v in hp.items()}
            method_cls.from_hp(**point_hp)
            point_config = TrainConfig(method=method, hp=point_hp, **{k: point.get(k, v) for k, v in kwargs.items()})
            config = config or point_config
    except ValueError as err:  # name the file(s), not "train config"
        raise ValueError(f"{source}: {str(err).removeprefix('train config: ')}") from None
    size = get_backbone(config.backbone).img_size
    if crop is not None and crop != size:
        raise ValueError(f"{source}: crop_size: {crop} is not backbone '{config.backbone}''s input size {size}")
    return config, grid


def study_space(values: dict[str, Any], source: str, settings: dict[str, Any], method: str | None = None,
                backbone: str | None = None) -> tuple[str, dict[str, list]]:
    """The study's files as one cell's search space: the method they describe (``method`` when
    they name none, as ``lr_wd_*.yml`` does) and, per key they set that a space can hold, its
    listed grid or its one value: every hyper-parameter of the method, and each training
    setting that differs from what the cell gets anyway (``settings``). Keys about data,
    hardware or logging are the study's own."""
    if method is not None and not values.get("method_name") and not any(values.get(k) for k in study_switch_keys()):
        values = {**values, "method": method}
    config, grid = resolve_grid(values, source)
    if backbone is not None and config.backbone != backbone and "backbone" in {_RENAMED.get(k, k) for k in values}:
        raise ValueError(f"{source}: pretrained_weights: the files are for '{config.backbone}', the study "
                         f"runs '{backbone}'")
    space = {}
    for key in (_RENAMED.get(k, k) for k in values):
        if key in grid:
            space[key] = grid[key]
        elif key in config.hp:
            space[key] = [config.hp[key]]
        elif key in settings and getattr(config, key) != settings[key]:
            space[key] = [getattr(config, key)]
    return config.method, space


def _hp_fields(method: str) -> dict[str, dataclasses.Field]:
    """A method's hyper-parameter fields (the study's keys for it)."""
    return {f.name: f for f in dataclasses.fields(get_method(method)) if "help" in f.metadata}


def resolve(values: dict[str, Any], source: str) -> TrainConfig:
    """Merged key/values as one run's TrainConfig; a listed grid is an error (a run is one point)."""
    config, grid = resolve_grid(values, source)
    if grid:
        size = math.prod(len(v) for v in grid.values())
        key, points = next(iter(grid.items()))
        raise ValueError(f"{source}: {key} lists {len(points)} values (a grid of {size} points); a run is one "
                         f"point: choose with --set {key}=VALUE, see the grid with --check, or search it in a study")
    return config


# Keys that name files or folders. A value starting with ./ or ../ is relative to the YAML file
# that holds it (an export's config.yaml, copied with what it names, still runs); any other
# relative path is relative to the working directory, as in the study's own files.
PATH_KEYS = ("checkpoint", "data_path", "data_folder", "class_names", "templates")


def _file_relative(values: dict[str, Any], path: Path) -> dict[str, Any]:
    folder = Path(path).resolve().parent
    return {k: str((folder / v).resolve()) if k in PATH_KEYS and isinstance(v, str) and v.startswith(("./", "../"))
            else v for k, v in values.items()}


def merged_values(paths: list[Path], overrides: dict[str, Any] | None = None) -> tuple[dict[str, Any], str]:
    """YAML files merged in order (later wins), then ``overrides`` (``--set``); and their names."""
    values: dict[str, Any] = {}
    for path in paths:
        values.update(_file_relative(read_yaml(path), path))
    values.update(overrides or {})
    return values, " + ".join(str(p) for p in paths) or "--set"


def load_train_config(paths: list[Path], overrides: dict[str, Any] | None = None) -> TrainConfig:
    return resolve(*merged_values(paths, overrides))
