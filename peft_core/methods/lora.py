"""LoRA on the fused qkv projection of every block (q, k and v all adapted)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..layers import LowRankBranch, ParallelBranch
from ..registry import ON, Scalable, hp, register_method


class LowRankDelta(LowRankBranch):
    """``B(A(dropout(x)))``: A kaiming-uniform, B zeros, no biases."""

    def __init__(self, n_in: int, n_out: int, rank: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.down = nn.Linear(n_in, rank, bias=False)  # LoRA's A
        self.up = nn.Linear(rank, n_out, bias=False)  # LoRA's B
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.dropout(x))


@register_method
@dataclass
class LoRA(Scalable):
    name = "lora"
    trains = "low-rank A (D->r) and B (r->3D) on every block's qkv"
    aliases = {"rank": "lora_bottleneck"}
    identity_at_init = True
    study_switches = {"lora_bottleneck": ON}  # the study's default file sets it to 0: off
    study_names = {r"blocks\.(\d+)\.attn\.lora\.lora_a\.weight": r"blocks.\1.attn.qkv.delta.down.weight",
                   r"blocks\.(\d+)\.attn\.lora\.lora_b\.weight": r"blocks.\1.attn.qkv.delta.up.weight"}
    lora_bottleneck: int = hp(8, "rank r", grid=[1, 8, 16, 32], low=1)

    def attach(self, model) -> None:
        for block in model.blocks:
            qkv = block.attn.qkv
            delta = LowRankDelta(qkv.in_features, qkv.out_features, self.lora_bottleneck)
            block.attn.qkv = ParallelBranch(qkv, delta)
