"""Method registry: one config dataclass per method, registered by name.

A method is its config: a dataclass whose fields are the study's hyper-parameter keys (with the
paper's grid and the allowed range in the field metadata) and whose ``attach`` wires the method
into a stock timm ``VisionTransformer``. ``peft_core.apply`` validates, freezes, attaches. The
config also declares the study's YAML flags that name it (``method_from_study_keys``).
"""
from __future__ import annotations

import dataclasses
import functools
import re
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Mapping

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError

from timm.models.vision_transformer import VisionTransformer
from torch import nn

_METHODS: dict[str, type["MethodConfig"]] = {}


# A study switch that any set value turns on (``full: true``, ``lora_bottleneck: 8``).
ON = object()


def hp(default: Any, help: str, *, grid: list | None = None, low: float | None = None,
       high: float | None = None, choices: list | None = None) -> Any:
    """A hyper-parameter field: default, help text, the paper's grid and the allowed values."""
    meta = {"help": help, "grid": grid, "low": low, "high": high, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def _allowed(f: dataclasses.Field) -> str:
    m = f.metadata
    if m.get("choices") is not None:
        return "one of " + ", ".join(map(str, m["choices"]))
    lo, hi = m.get("low"), m.get("high")
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if lo is not None and hi is not None:
        return f"{kind} in [{lo}, {hi}]"
    if lo is not None:
        return f"{kind} >= {lo}"
    return kind


def _whole(value: Any) -> Any:
    """8.0 is the integer 8 (YAML and the study's files write either)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _listed(value: Any) -> Any:
    """One integer is a list of one; a tuple (the study's files write block lists so) a list."""
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    return list(value) if isinstance(value, tuple) else value


@functools.cache
def _field_type(cls: type, name: str) -> TypeAdapter:
    """A hyper-parameter's type (from the config's annotations) with its metadata's range and
    choices, strict: no strings for numbers, no numbers for booleans."""
    hint = typing.get_type_hints(cls)[name]
    meta = next(f for f in dataclasses.fields(cls) if f.name == name).metadata
    checks: list[Any] = [Field(ge=meta.get("low"), le=meta.get("high"))]
    if typing.get_origin(hint) is list:
        checks = [BeforeValidator(_listed), Field(min_length=1)]
    elif hint is int:
        checks.insert(0, BeforeValidator(_whole))
    if meta.get("choices") is not None:
        checks.append(AfterValidator(lambda v: v if v in meta["choices"] else _not_a_choice()))
    return TypeAdapter(Annotated[hint, *checks], config=ConfigDict(strict=True))


def _not_a_choice() -> Any:
    raise ValueError("not one of the choices")


def _check_value(cls: type["MethodConfig"], f: dataclasses.Field, value: Any) -> Any:
    """``value`` as the field's type, in its range; ValueError names the method, key and value."""
    try:
        return _field_type(cls, f.name).validate_python(value)
    except ValidationError:
        raise ValueError(f"method '{cls.name}': hyper-parameter '{f.name}'={value!r} is invalid; "
                         f"allowed: {_allowed(f)}") from None


@dataclass
class MethodConfig:
    """Base of every method config. Subclasses are dataclasses registered by name."""

    name: ClassVar[str] = ""
    trains: ClassVar[str] = ""            # what is trained besides the head, for people
    aliases: ClassVar[dict[str, str]] = {}
    # None: folds into the frozen weights; otherwise the reason it cannot.
    cannot_merge: ClassVar[str | None] = None
    # True when the last layer of every inserted module starts at zero (forward unchanged).
    identity_at_init: ClassVar[bool] = False
    trains_head: ClassVar[bool] = True
    # True when the method trains existing backbone weights (full, bitfit, ln, difffit, selective
    # tuning): WiSE interpolates the whole state dict instead of scaling inserted modules.
    changes_weights: ClassVar[bool] = False
    # What the method is in a comparison: "peft", or a baseline the report places apart
    # ("linear_probe": the gains are measured against it; "full_finetune"; "zero_shot").
    role: ClassVar[str] = "peft"
    # How the study's YAML (PETL_Vision's method files) names this method, read by
    # ``method_from_study_keys``: the switches that must be on (key -> value, or ON for any set
    # value), and the placement flags it implements (key -> allowed values; None: not given).
    study_switches: ClassVar[dict[str, Any]] = {}
    study_modes: ClassVar[dict[str, tuple]] = {}
    # A method the study picks by its file's ``method_name`` alone (no flag describes it).
    study_method_name: ClassVar[str | None] = None
    # How the study's state dict names this method's own tensors, read by ``our_name``: a regular
    # expression matching a whole study name -> our name (a ``re.Match.expand`` template).
    study_names: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, _check_value(type(self), f, getattr(self, f.name)))

    @classmethod
    def from_hp(cls, **hp: Any) -> "MethodConfig":
        keys = {f.name for f in dataclasses.fields(cls)}
        resolved: dict[str, Any] = {}
        for key, value in hp.items():
            key = cls.aliases.get(key, key)
            if key not in keys:
                allowed = ", ".join(sorted(keys)) or "none"
                raise ValueError(f"method '{cls.name}': unknown hyper-parameter '{key}'; "
                                 f"allowed: {allowed}")
            resolved[key] = value
        return cls(**resolved)

    @classmethod
    def our_name(cls, study_name: str) -> str:
        """Our state-dict name of the inserted tensor the study's code saves as ``study_name``
        (backbone tensors keep timm's names in the study; our wrappers re-home them)."""
        for pattern, ours in cls.study_names.items():
            if match := re.fullmatch(pattern, study_name):
                return match.expand(ours)
        return study_name

    def attach(self, model: VisionTransformer) -> None:  # pragma: no cover - abstract
        raise NotImplementedError(f"method '{self.name}' has no attach")

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.name, **dataclasses.asdict(self)}

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """Name, what is trained, hyper-parameters with defaults and help, and the paper's grid."""
        params = {}
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            params[f.name] = {"default": default, "help": f.metadata["help"],
                              "allowed": _allowed(f)}
        grid = {f.name: f.metadata["grid"] for f in dataclasses.fields(cls) if f.metadata["grid"]}
        return {"name": cls.name, "trains": cls.trains, "hyperparameters": params,
                "grid": grid, "mergeable": cls.cannot_merge is None}


@dataclass
class Scalable(MethodConfig):
    """A method whose inserted modules scale their output by ``merge_factor`` (WiSE for PEFT).

    ``apply`` copies the value onto every inserted module after ``attach``.
    """

    merge_factor: float = hp(1.0, "multiplies every inserted module's output", low=0.0)


def register_method(cls: type[MethodConfig]) -> type[MethodConfig]:
    """Class decorator: make ``cls`` (a dataclass with ``name``) available to ``apply``."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no method name")
    if cls.name in _METHODS:
        raise ValueError(f"method '{cls.name}' is already registered")
    _METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[MethodConfig]:
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method '{name}'; allowed: {', '.join(sorted(_METHODS))}") from None


def method_names() -> list[str]:
    return sorted(_METHODS)


ROLES = ("peft", "linear_probe", "full_finetune", "zero_shot")
# Baselines that train nothing besides the head on purpose (zero-shot not even the head).
HEAD_ONLY_ROLES = ("linear_probe", "zero_shot")


def role_of(name: str) -> str:
    """The role a method declares; a name this registry does not know (an imported run) is "peft"."""
    cls = _METHODS.get(name)
    return cls.role if cls is not None else "peft"


def methods_with_role(role: str) -> list[str]:
    if role not in ROLES:
        raise ValueError(f"unknown role '{role}'; allowed: {', '.join(ROLES)}")
    return sorted(n for n, cls in _METHODS.items() if cls.role == role)


def study_switch_keys() -> frozenset[str]:
    """Every study key that switches some method on."""
    return frozenset(k for cls in _METHODS.values() for k in cls.study_switches)


def study_flag_keys() -> frozenset[str]:
    """Every study key some method is named by: its switches and its placement flags."""
    return frozenset(k for cls in _METHODS.values() for k in (*cls.study_switches, *cls.study_modes))


def method_from_study_keys(values: Mapping[str, Any], source: str) -> str:
    """The method the study's flags in ``values`` describe; ``source`` names the file(s) in errors.

    A switch is on when set to anything but null, false, 0 or "" (the study tests
    ``if params.<key>``). The switches that are on must be exactly one method's, with its values,
    and every placement flag that method declares must hold a value it implements. Exactly one
    method may fit: none (while a switch is on) or several is a one-line ValueError. With no
    switch on, the method is the linear probe.
    """
    switch_keys = study_switch_keys()
    on = {k: v for k, v in values.items() if k in switch_keys and v}
    by_name = [cls.name for cls in _METHODS.values() if cls.study_method_name is not None
               and cls.study_method_name == values.get("method_name")]
    if by_name and not on:
        return by_name[0]
    named = [cls for cls in _METHODS.values() if on and cls.study_switches.keys() == on.keys()
             and all(want is ON or on[k] == want for k, want in cls.study_switches.items())]
    fits = [cls.name for cls in named
            if all(values.get(k) in allowed for k, allowed in cls.study_modes.items())]
    if len(fits) > 1:
        raise ValueError(f"{source}: the study's flags fit several methods: {', '.join(sorted(fits))}")
    if fits:
        return fits[0]
    if on:
        modes = {k for cls in named for k in cls.study_modes}
        given = ", ".join(f"{k}={v!r}" for k, v in values.items() if k in on or k in modes)
        raise ValueError(f"{source}: {given} is not a method this project runs")
    (linear,) = methods_with_role("linear_probe")
    return linear


def check_vit(model: nn.Module) -> VisionTransformer:
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"model must be a timm VisionTransformer, got {type(model).__name__}")
    return model
