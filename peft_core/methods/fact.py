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
# FacT-TT's cores of each frozen linear, as the study's nn.Linear's: (out, in) in units of d.
_TT_CORES = {"qkv": ((1, 1),) * 3, "proj": ((1, 1),), "fc1": ((4, 1),), "fc2": ((1, 4),)}
_SCALERS = [0.01, 0.1, 1.0, 10.0, 100.0]
# The study saves its one FacT module under the first name that holds it.
_STUDY_FACT = r"blocks\.\d+\.(?:attn|mlp)\.fact\."
_STUDY_TT_BLOCK = _STUDY_FACT + r"per_block_para\.(\d+)\."  # q, k, v, proj in attn; fc1, fc2 in mlp


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

    def tk_core(self, block: int, kind: str) -> torch.Tensor:
        """The Linear-layout core of ``kind`` in ``block``, laid out as the study's code lays it.

        T[a, b, j] = sum_k C[a, b, k] P[k, 12*block + j]. The study multiplies U(x) by T[:, :, j]
        from the right (a is the input index), reads fc1's 4d outputs interleaved (output b*4 + j
        is T[:, b, 4 + j]), and takes fc2's 4d inputs interleaved the same way with a the output.
        """
        slots = _SLOTS[kind]
        cols = self.factor[:, 12 * block + slots.start: 12 * block + slots.stop]
        t = torch.einsum("abk,kj->abj", self.core, cols)
        d = t.shape[0]
        if kind == "fc1":
            return t.permute(1, 2, 0).reshape(4 * d, d)
        if kind == "fc2":
            return t.reshape(d, 4 * d)
        return t.permute(2, 1, 0).reshape(-1, d)  # q, k, v or proj: T[:, :, j] transposed, stacked


class FactDelta(LowRankBranch):
    """The FacT update of one frozen linear (``kind`` in qkv, proj, fc1, fc2) of one block."""

    def __init__(self, factors: FactFactors, kind: str, block: int, scale: float,
                 own_cores: bool, dropout: float = 0.1) -> None:
        super().__init__()
        self._factors = (factors,)  # shared, registered once on the model: not a child here
        self.kind, self.block, self.scale = kind, block, scale
        self.dropout = nn.Dropout(dropout)
        self.cores = nn.ParameterList()
        if own_cores:  # FacT-TT: this matrix's cores, Linear-initialised
            d = factors.u.out_features
            for n_out, n_in in _TT_CORES[kind]:
                self.cores.append(nn.Parameter(torch.empty(n_out * d, n_in * d)))
                nn.init.kaiming_uniform_(self.cores[-1], a=math.sqrt(5))

    def _core(self) -> torch.Tensor:
        """The core in Linear layout: (n*d, d) for qkv/proj/fc1, (d, 4d) for fc2."""
        if len(self.cores) == 0:
            return self._factors[0].tk_core(self.block, self.kind)
        return torch.cat(list(self.cores))

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
        hidden = {block.mlp.fc1.out_features for block in model.blocks}
        if hidden != {4 * model.embed_dim}:  # the study's 12 slots: fc1 and fc2 as 4 chunks each
            raise ValueError(f"method '{self.name}' needs MLPs 4x the width ({4 * model.embed_dim}); "
                             f"this model's are {', '.join(map(str, sorted(hidden)))}")
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
    study_names = {_STUDY_FACT + r"FacT([uv])\.weight": r"fact.\1.weight",
                   _STUDY_TT_BLOCK + r"attn\.([012])\.weight": r"blocks.\1.attn.qkv.delta.cores.\2",
                   _STUDY_TT_BLOCK + r"attn\.3\.weight": r"blocks.\1.attn.proj.delta.cores.0",
                   _STUDY_TT_BLOCK + r"mlp\.0\.weight": r"blocks.\1.mlp.fc1.delta.cores.0",
                   _STUDY_TT_BLOCK + r"mlp\.1\.weight": r"blocks.\1.mlp.fc2.delta.cores.0"}


@register_method
@dataclass
class FactTK(_Fact):
    name = "fact_tk"
    trains = "shared U, V, a d x d x d core tensor and a d x 12L factor (Tucker)"
    tensor_cores = True
    study_switches = {"fact_type": "tk"}
    study_names = {_STUDY_FACT + r"FacT([uv])\.weight": r"fact.\1.weight",
                   _STUDY_FACT + r"FacTc": "fact.core", _STUDY_FACT + r"FacTp": "fact.factor"}
    fact_dim: int = hp(16, "factor rank d", grid=[16, 32, 64], low=1)
