"""Read a run's YAML (ours, or a PETL_Vision default + method file pair) into a ``TrainConfig``.

The study's method files describe a method by flags (``ft_mlp_module: adapter``,
``vpt_mode: deep``, ``fact_type: tt``, ...); they are translated to a registered method name.
Unknown keys are errors naming the file and the key.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .registry import get_method, method_from_study_keys, study_flag_keys
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
# Study keys that change nothing in a run here (logging, hardware, output).
_IGNORED = {"model", "gpu_num", "debug", "output_dir", "store_ckp", "optimizer", "crop_size",
            "test_data", "exp_name", "final_run", "method_name", "tune", "default"}


def resolve(values: dict[str, Any], source: str) -> TrainConfig:
    """Turn merged key/values into a TrainConfig; ``source`` names the file(s) in errors."""
    values = {_RENAMED.get(k, k): v for k, v in values.items()}
    if "backbone" in values:
        values["backbone"] = _BACKBONE_NAMES.get(values["backbone"], values["backbone"])
    method = values.pop("method", None) or method_from_study_keys(values, source)
    method_cls = get_method(method)
    hp_keys = {f for f in method_cls.__dataclass_fields__} | set(method_cls.aliases)
    hp = dict(values.pop("hp", None) or {})
    train_keys = TrainConfig.keys()
    kwargs: dict[str, Any] = {}
    flags = study_flag_keys()
    for key, value in values.items():
        if key in hp_keys:
            hp[key] = value
        elif key in train_keys:
            kwargs[key] = value
        elif key in flags or key in _IGNORED or key.endswith("_bottleneck") or key.endswith("_scaler"):
            continue  # the study's flags for other methods, or keys without effect here
        else:
            allowed = ", ".join(sorted(train_keys | hp_keys))
            raise ValueError(f"{source}: unknown key '{key}'; allowed: {allowed}")
    try:  # validate now: errors name the file(s) and the key before any work starts
        method_cls.from_hp(**hp)
        return TrainConfig(method=method, hp=hp, **kwargs)
    except ValueError as err:  # name the file(s), not "train config"
        raise ValueError(f"{source}: {str(err).removeprefix('train config: ')}") from None


# Keys that name files or folders. A value starting with ./ or ../ is relative to the YAML file
# that holds it (an export's config.yaml, copied with what it names, still runs); any other
# relative path is relative to the working directory, as in the study's own files.
PATH_KEYS = ("checkpoint", "data_path", "data_folder", "class_names", "templates")


def _file_relative(values: dict[str, Any], path: Path) -> dict[str, Any]:
    folder = Path(path).resolve().parent
    return {k: str((folder / v).resolve()) if k in PATH_KEYS and isinstance(v, str) and v.startswith(("./", "../"))
            else v for k, v in values.items()}


def load_train_config(paths: list[Path], overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Merge YAML files in order (later wins), then ``overrides`` (``--set``)."""
    values: dict[str, Any] = {}
    for path in paths:
        values.update(_file_relative(read_yaml(path), path))
    values.update(overrides or {})
    return resolve(values, " + ".join(str(p) for p in paths) or "--set")
