"""Read a run's YAML (ours, or a PETL_Vision default + method file pair) into a ``TrainConfig``.

The study's method files describe a method by flags (``ft_mlp_module: adapter``,
``vpt_mode: deep``, ``fact_type: tt``, ...); they are translated to a registered method name.
Unknown keys are errors naming the file and the key.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .registry import get_method
from .train import TrainConfig

# Study keys with another name here.
_RENAMED = {"random_seed": "seed", "normalized": "normalize", "pretrained_weights": "backbone",
            "data_folder": "data_path"}
_BACKBONE_NAMES = {"vit_base_patch16_224_in21k": "vit_b16_in21k",
                   "vit_base_patch16_224.augreg_in21k": "vit_b16_in21k",
                   "dinov2_vitb14": "dinov2_vitb14", "vit_base_patch14_dinov2.lvd142m": "dinov2_vitb14",
                   "vit_base_patch16_clip_224": "clip_vitb16", "clip": "clip_vitb16"}
# Study keys that describe a method's structure; consumed by ``_method_from_flags``.
_FLAGS = {"full", "ssf", "bitfit", "ln", "difffit", "vpt_mode", "fact_type", "ft_mlp_module",
          "ft_mlp_mode", "ft_mlp_ln", "ft_attn_module", "ft_attn_mode", "ft_attn_ln", "adapter_init",
          "vpt_layer", "vpt_dropout"}
# Study keys that change nothing in a run here (logging, hardware, output).
_IGNORED = {"model", "gpu_num", "debug", "output_dir", "store_ckp", "optimizer", "crop_size",
            "test_data", "exp_name", "final_run", "method_name", "tune", "default"}


def read_yaml(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file not found: {path}")
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        where = f":{line + 1}" if line is not None else ""
        raise ValueError(f"{path}{where}: not valid YAML") from None
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a mapping of keys to values")
    return content


def _method_from_flags(flags: dict[str, Any], source: str) -> str:
    """The registered method a PETL_Vision flag set describes."""
    def bad(key):
        return ValueError(f"{source}: {key}={flags[key]!r} is not a method this project runs")
    if flags.get("full"):
        return "full"
    for flag in ("ssf", "bitfit", "difffit", "ln"):
        if flags.get(flag):
            return flag
    if "vpt_mode" in flags:
        if flags["vpt_mode"] not in ("shallow", "deep"):
            raise bad("vpt_mode")
        return f"vpt_{flags['vpt_mode']}"
    if "fact_type" in flags:
        if flags["fact_type"] not in ("tt", "tk"):
            raise bad("fact_type")
        return f"fact_{flags['fact_type']}"
    if flags.get("ft_mlp_module") == "adapter":
        mode, init = flags.get("ft_mlp_mode", "parallel"), flags.get("adapter_init", "lora_kaiming")
        if mode == "parallel":
            if flags.get("ft_mlp_ln", "before") != "before":
                raise bad("ft_mlp_ln")
            return "adaptformer"
        if mode != "sequential_after":
            raise bad("ft_mlp_mode")
        if init == "lora_xavier":
            return "lora_p_adapter"
        if init == "zero":
            return "zero_adapter"
        return "rand_h_adapter" if flags.get("ft_attn_module") == "adapter" else "rand_p_adapter"
    if flags.get("ft_mlp_module") not in (None, "adapter"):
        raise bad("ft_mlp_module")
    return ""


def _infer_method(values: dict[str, Any], source: str) -> str:
    by_flags = _method_from_flags({k: values[k] for k in _FLAGS if k in values}, source)
    if by_flags:
        return by_flags
    for key, method in (("lora_bottleneck", "lora"), ("repadapter_bottleneck", "repadapter"),
                        ("convpass_bottleneck", "convpass"), ("vqt_num", "vqt")):
        if values.get(key):
            return method
    return "linear"


def resolve(values: dict[str, Any], source: str) -> TrainConfig:
    """Turn merged key/values into a TrainConfig; ``source`` names the file(s) in errors."""
    values = {_RENAMED.get(k, k): v for k, v in values.items()}
    if "backbone" in values:
        values["backbone"] = _BACKBONE_NAMES.get(values["backbone"], values["backbone"])
    method = values.pop("method", None) or _infer_method(values, source)
    method_cls = get_method(method)
    hp_keys = {f for f in method_cls.__dataclass_fields__} | set(method_cls.aliases)
    hp = dict(values.pop("hp", None) or {})
    train_keys = TrainConfig.keys()
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key in hp_keys:
            hp[key] = value
        elif key in train_keys:
            kwargs[key] = value
        elif key in _FLAGS or key in _IGNORED or key.endswith("_bottleneck") or key.endswith("_scaler"):
            continue  # the study's flags for other methods, or keys without effect here
        else:
            allowed = ", ".join(sorted(train_keys | hp_keys))
            raise ValueError(f"{source}: unknown key '{key}'; allowed: {allowed}")
    method_cls.from_hp(**hp)  # validate now: errors name the key before any work starts
    return TrainConfig(method=method, hp=hp, **kwargs)


def load_train_config(paths: list[Path], overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Merge YAML files in order (later wins), then ``overrides`` (``--set``)."""
    values: dict[str, Any] = {}
    for path in paths:
        values.update(read_yaml(path))
    values.update(overrides or {})
    source = " + ".join(str(p) for p in paths) or "--set"
    try:
        return resolve(values, source)
    except TypeError as err:  # a value of the wrong type reaching TrainConfig
        raise ValueError(f"{source}: {err}") from None
