"""RepAdapter: a linear (re-parameterisable) adapter before attention and before the MLP."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..layers import InsertedModule, PreAdapter, grouped_linear
from ..registry import Scalable, hp, register_method


class RepDelta(InsertedModule):
    """``s * B(dropout(A(x)))``: A a 1x1 conv D->r (xavier), B a grouped 1x1 conv r->D (zeros)."""

    def __init__(self, dim: int, rank: int, scale: float, groups: int, dropout: float = 0.1) -> None:
        super().__init__()
        if rank % groups or dim % groups:
            raise ValueError(f"method 'repadapter': repadapter_bottleneck={rank} and width {dim} "
                             f"must be divisible by repadapter_group={groups}")
        self.down = nn.Linear(dim, rank)  # a 1x1 conv over tokens
        self.dropout = nn.Dropout(dropout)
        self.up_weight = nn.Parameter(torch.zeros(groups, dim // groups, rank // groups))
        self.up_bias = nn.Parameter(torch.zeros(dim))
        self.scale = scale
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = grouped_linear(self.dropout(self.down(x)), self.up_weight, self.up_bias)
        return h * (self.scale * self.merge_factor)


@register_method
@dataclass
class RepAdapter(Scalable):
    name = "repadapter"
    trains = "a linear adapter on the normed input of every qkv and fc1"
    aliases = {"rank": "repadapter_bottleneck", "scale": "repadapter_scaler"}
    identity_at_init = True
    study_switches = {"ft_attn_module": "repadapter", "ft_mlp_module": "repadapter"}
    study_modes = {"ft_attn_mode": ("sequential_before", None),
                   "ft_mlp_mode": ("sequential_before", None),
                   "repadapter_init": ("lora_xavier", None)}  # the study's default init: ours
    # The study's ft_attn_module sits before qkv, its ft_mlp_module before fc1.
    study_names = {r"blocks\.(\d+)\.ft_attn_module\.conv_A\.(\w+)": r"blocks.\1.attn.qkv.delta.down.\2",
                   r"blocks\.(\d+)\.ft_mlp_module\.conv_A\.(\w+)": r"blocks.\1.mlp.fc1.delta.down.\2",
                   r"blocks\.(\d+)\.ft_attn_module\.conv_B\.(\w+)": r"blocks.\1.attn.qkv.delta.up_\2",
                   r"blocks\.(\d+)\.ft_mlp_module\.conv_B\.(\w+)": r"blocks.\1.mlp.fc1.delta.up_\2"}
    repadapter_bottleneck: int = hp(8, "bottleneck width r", grid=[8, 16, 32], low=1)
    repadapter_scaler: float = hp(1.0, "output scale s", grid=[0.1, 0.5, 1.0, 5.0, 10.0], low=0.0)
    repadapter_group: int = hp(2, "groups of the up projection", low=1)

    def _delta(self, dim: int) -> RepDelta:
        return RepDelta(dim, self.repadapter_bottleneck, self.repadapter_scaler, self.repadapter_group)

    def attach(self, model) -> None:
        for block in model.blocks:
            # Attention and MLP read their normed input only through qkv and fc1.
            block.attn.qkv = PreAdapter(block.attn.qkv, self._delta(model.embed_dim))
            block.mlp.fc1 = PreAdapter(block.mlp.fc1, self._delta(model.embed_dim))
