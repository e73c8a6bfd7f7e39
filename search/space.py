"""Search-space entries: ``grid``, ``choice``, ``loguniform``, ``uniform``, ``int``.

One place converts them: to Optuna distributions for the samplers, and to the exhaustive list
of points for ``grid`` mode.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import optuna.distributions as od

from peft_core.typed import KeyedError

KINDS = ("grid", "choice", "loguniform", "uniform", "int")


@dataclass(frozen=True)
class Dimension:
    kind: str
    values: tuple  # the listed values (grid/choice) or (low, high)

    @property
    def categorical(self) -> bool:
        return self.kind in ("grid", "choice")

    def distribution(self) -> od.BaseDistribution:
        if self.categorical:
            return od.CategoricalDistribution(list(self.values))
        low, high = self.values
        if self.kind == "loguniform":
            return od.FloatDistribution(low, high, log=True)
        if self.kind == "uniform":
            return od.FloatDistribution(low, high)
        return od.IntDistribution(low, high)


def parse_dimension(where: str, spec: Any) -> Dimension:
    """``{kind: values}`` -> Dimension; a plain value is a one-point grid. Errors name the key
    under ``where`` that is wrong (``where.loguniform``)."""
    def fail(kind: str, message: str) -> KeyedError:
        return KeyedError(".".join(p for p in (where, kind) if p), message, relative=True)

    if not isinstance(spec, dict):
        return Dimension("grid", (spec,))
    if len(spec) != 1:
        raise fail("", f"expected one of {', '.join(KINDS)} with its values, got {spec!r}")
    kind, values = next(iter(spec.items()))
    if kind not in KINDS:
        raise fail("", f"unknown space kind '{kind}'; allowed: {', '.join(KINDS)}")
    if not isinstance(values, list) or not values:
        raise fail(kind, f"expected a non-empty list, got {values!r}")
    if kind in ("grid", "choice"):
        return Dimension(kind, tuple(values))
    if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise fail(kind, f"expected [low, high] numbers, got {values!r}")
    low, high = values
    if kind == "int" and not all(isinstance(v, int) for v in values):
        raise fail(kind, f"expected integer bounds, got {values!r}")
    if not low < high or (kind == "loguniform" and low <= 0):
        raise fail(kind, f"empty range [{low}, {high}]"
                   + ("; loguniform needs 0 < low < high" if kind == "loguniform" else ""))
    return Dimension(kind, (low, high))


def to_yaml(dimension: Dimension) -> Any:
    """The YAML form ``parse_dimension`` reads back."""
    return {dimension.kind: list(dimension.values)}


def grid_points(space: dict[str, Dimension]) -> list[dict[str, Any]]:
    """Every point of an all-categorical space, in a fixed order."""
    keys = sorted(space)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(space[k].values for k in keys))]
