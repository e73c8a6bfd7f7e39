"""Typed configuration: one pydantic base for every config model, and one-line errors.

Models forbid unknown keys and are strict (``"8"`` is not an int, ``true`` is not a number), the
YAML loader's values are checked as they are. ``one_line`` turns pydantic's multi-line
``ValidationError`` into ``dotted.key: message`` for the first problem, the form every error of
this project takes.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

_TYPES = {"int": "int", "float": "float", "bool": "bool", "string": "str", "list": "list",
          "dict": "mapping", "model": "mapping", "literal": "one of the listed values"}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
_BOUND_KEYS = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt", "less_than_equal": "le"}


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=False)


class KeyedError(ValueError):
    """A validator's error that names its own key: ``key`` replaces the location pydantic
    reports (``relative``: it is appended to it, e.g. ``loguniform`` under ``spaces.lora.lr``)."""

    def __init__(self, key: str, message: str, relative: bool = False) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key, self.message, self.relative = key, message, relative


def dotted(loc: tuple) -> str:
    """``("methods", 1)`` -> ``methods[1]``; pydantic's ``[key]`` marker (a bad dict key) is dropped."""
    out = ""
    for part in loc:
        if part == "[key]":
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names of the model found at ``loc`` under ``model`` (for 'unknown key' errors)."""
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            continue  # a list index or a dict key: stay on the same model
        found = _model_in(field.annotation)
        if found is None:
            return []
        model = found
    return sorted(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def message_of(error: dict, model: type[BaseModel]) -> tuple[str, str]:
    """(dotted key, message) of one pydantic error dict."""
    loc, kind, value = tuple(error["loc"]), error["type"], error.get("input")
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, KeyedError):
        key = ".".join(k for k in (dotted(loc), cause.key) if k) if cause.relative else cause.key
        return key, cause.message
    key = dotted(loc)
    names = [part for part in loc if isinstance(part, str) and part != "[key]"]
    shown = f"{names[-1]}={value!r}" if names else repr(value)  # e.g. lr='fast'
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        return key, "unknown key" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
    if kind == "missing":
        return key, "required"
    if kind in _BOUNDS:
        bound = error["ctx"][_BOUND_KEYS[kind]]
        return key, f"{shown} is invalid; allowed: {_BOUNDS[kind]} {bound}"
    if kind == "literal_error":
        return key, f"{shown} is invalid; allowed: {error['ctx']['expected']}"
    if kind in ("too_short", "too_long"):
        return key, f"expected a non-empty list, got {value!r}" if kind == "too_short" else error["msg"]
    if cause is not None:
        return key, str(cause)
    for prefix, name in _TYPES.items():
        if kind.startswith(prefix):
            return key, f"{shown} has the wrong type; expected {name}"
    return key, error["msg"]


def one_line(err: ValidationError, model: type[BaseModel]) -> str:
    key, message = message_of(err.errors()[0], model)
    if not key or message.startswith(f"{key}="):  # "epoch=-1 is invalid" names its key already
        return message
    return f"{key}: {message}"
