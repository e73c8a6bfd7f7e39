"""FacT: factor-tuning with a shared U (D->d), V (d->D) and per-matrix d x d cores.

FacT-TT keeps its own cores per block; FacT-TK builds each core from a shared core tensor C
(d x d x d) and a factor P (d x 12*depth). Every frozen linear ``W`` of a block (q, k, v, proj,
fc1, fc2) gets ``+ s * V(dropout(core(U(x))))``; fc1/fc2 act on 4 chunks of d / D.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import InsertedModule, LowRankBranch, ParallelBranch
from ..registry import Scalable, hp, register_method

# Slots of the 12 cores per block (FacT-TK's P columns): q, k, v, proj, fc1 x4, fc2 x4.
_SLOTS = {"qkv": slice(0, 3), "proj": slice(3, 4), "fc1": slice(4, 8), "fc2": slice(8, 12)}
_SCALERS = [0.01, 0.1, 1.0, 10.0, 100.0]


class FactFactors(InsertedModule):
    """The shared U, V (and for TK the core tensor C and factor P), attached once to the model."""

    def __init__(self, dim: int, rank: int, depth: int, tensor_cores: bool) -> None:
        super().__init__()
        self.u = nn.Linear(dim, rank, bias=False)
        self.v = nn.Linear(rank, dim, bias=False)
        nn.init.zeros_(self.v.weight)
        if tensor_cores:
            self.core = nn.Parameter(torch.empty(rank, rank, rank))
            self.factor = nn.Parameter(torch.empty(rank, 12 * depth))
            nn.init.xavier_uniform_(self.core)
            nn.init.xavier_uniform_(self.factor)

    def tk_cores(self, block: int, slots: slice) -> torch.Tensor:
        """(n, d, d) cores C . P[:, 12*block + j] for j in ``slots``."""
        cols = self.factor[:, 12 * block + slots.start: 12 * block + slots.stop]
        return torch.einsum("oik,kn->noi", self.core, cols)


class FactDelta(LowRankBranch):
    """The FacT update of one frozen linear (``kind`` in qkv, proj, fc1, fc2) of one block."""

    def __init__(self, factors: FactFactors, kind: str, block: int, scale: float,
                 own_core: bool, dropout: float = 0.1) -> None:
        super().__init__()
        self._factors = (factors,)  # shared, registered once on the model: not a child here
        self.kind, self.block, self.scale = kind, block, scale
        self.dropout = nn.Dropout(dropout)
        if own_core:  # FacT-TT: this matrix's cores, Linear-initialised
            d = factors.u.out_features
            n = _SLOTS[kind].stop - _SLOTS[kind].start
            shape = (d, n * d) if kind == "fc2" else (n * d, d)
            self.core = nn.Parameter(torch.empty(shape))
            nn.init.kaiming_uniform_(self.core, a=math.sqrt(5))
        else:
            self.core = None

    def _core(self) -> torch.Tensor:
        """The core in Linear layout: (n*d, d) for qkv/proj/fc1, (d, 4d) for fc2."""
        if self.core is not None:
            return self.core
        cores = self._factors[0].tk_cores(self.block, _SLOTS[self.kind])
        return torch.cat(list(cores), dim=1 if self.kind == "fc2" else 0)

    @property
    def up(self) -> nn.Linear:
        return self._factors[0].v

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The core output before V: (..., n, d) for n output chunks of width D."""
        u = self._factors[0].u
        if self.kind == "fc2":  # 4D input: 4 chunks of D, each through U, concatenated
            h = F.linear(u(x.unflatten(-1, (4, -1))).flatten(-2), self._core())
        else:
            h = F.linear(u(x), self._core())
        return self.dropout(h).unflatten(-1, (-1, u.out_features))


@dataclass
class _Fact(Scalable):
    tensor_cores: ClassVar[bool] = False
    aliases = {"rank": "fact_dim", "scale": "fact_scaler"}
    identity_at_init = True
    fact_dim: int = hp(8, "factor rank d", grid=[8, 16, 32], low=1)
    fact_scaler: float = hp(1.0, "output scale s", grid=_SCALERS, low=0.0)

    def attach(self, model) -> None:
        factors = FactFactors(model.embed_dim, self.fact_dim, len(model.blocks), self.tensor_cores)
        model.fact = factors

        def wrap(linear: nn.Linear, kind: str, index: int) -> ParallelBranch:
            delta = FactDelta(factors, kind, index, self.fact_scaler, not self.tensor_cores)
            return ParallelBranch(linear, delta)

        for i, block in enumerate(model.blocks):
            block.attn.qkv = wrap(block.attn.qkv, "qkv", i)
            block.attn.proj = wrap(block.attn.proj, "proj", i)
            block.mlp.fc1 = wrap(block.mlp.fc1, "fc1", i)
            block.mlp.fc2 = wrap(block.mlp.fc2, "fc2", i)


@register_method
@dataclass
class FactTT(_Fact):
    name = "fact_tt"
    trains = "shared U, V and per-block cores for q, k, v, proj, fc1, fc2 (tensor-train)"
    study_switches = {"fact_type": "tt"}


@register_method
@dataclass
class FactTK(_Fact):
    name = "fact_tk"
    trains = "shared U, V, a d x d x d core tensor and a d x 12L factor (Tucker)"
    tensor_cores = True
    study_switches = {"fact_type": "tk"}
    fact_dim: int = hp(16, "factor rank d", grid=[16, 32, 64], low=1)
