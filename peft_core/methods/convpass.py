"""ConvPass: a convolutional bypass beside attention and beside the MLP, on the normed input."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import LowRankBranch, ParallelBranch, QuickGELU
from ..registry import Scalable, hp, register_method


class ConvBypass(LowRankBranch):
    """down D->r, QuickGELU, 3x3 conv over the patch grid, QuickGELU, dropout, up r->D, times s.

    Prefix tokens (CLS) go through the same conv as a 1x1 image, i.e. its centre tap.
    """

    def __init__(self, dim: int, rank: int, scale: float, grid: tuple[int, int],
                 num_prefix: int, xavier_conv: bool, dropout: float = 0.1) -> None:
        super().__init__()
        self.down = nn.Linear(dim, rank)
        self.conv = nn.Conv2d(rank, rank, 3, padding=1)
        self.act = QuickGELU()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(rank, dim)
        self.scale, self.grid, self.num_prefix = scale, grid, num_prefix
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        if xavier_conv:
            nn.init.xavier_uniform_(self.conv.weight)
        else:  # identity at the centre tap
            nn.init.zeros_(self.conv.weight)
            with torch.no_grad():
                self.conv.weight[:, :, 1, 1] += torch.eye(rank)
        nn.init.zeros_(self.conv.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.down(x))
        prefix, patches = h[:, :self.num_prefix], h[:, self.num_prefix:]
        b, n, r = patches.shape
        grid = patches.transpose(1, 2).reshape(b, r, *self.grid)
        patches = self.conv(grid).flatten(2).transpose(1, 2)
        prefix = F.linear(prefix, self.conv.weight[:, :, 1, 1], self.conv.bias)
        return self.dropout(self.act(torch.cat([prefix, patches], dim=1)))


@register_method
@dataclass
class ConvPass(Scalable):
    name = "convpass"
    trains = "a conv bypass beside each attention and each MLP"
    aliases = {"rank": "convpass_bottleneck", "scale": "convpass_scaler"}
    identity_at_init = True
    cannot_merge = "the bypass has QuickGELU non-linearities and a spatial convolution"
    # Beside both branches, fed their normed input ("ln after").
    study_switches = {"ft_attn_module": "convpass", "ft_mlp_module": "convpass"}
    study_modes = {"ft_attn_mode": ("parallel", None), "ft_mlp_mode": ("parallel", None),
                   "ft_attn_ln": ("after", None), "ft_mlp_ln": ("after", None),
                   "convpass_init": ("lora_xavier", None)}  # the study's default init: ours
    study_names = {r"blocks\.(\d+)\.ft_(attn|mlp)_module\.adapter_(down|conv|up)\.(\w+)":
                   r"blocks.\1.\2.delta.\3.\4"}
    convpass_bottleneck: int = hp(8, "bottleneck width r", grid=[8, 16], low=1)
    convpass_scaler: float = hp(1.0, "output scale s", grid=[0.01, 0.1, 1.0, 10.0, 100.0], low=0.0)
    convpass_xavier_init: bool = hp(False, "xavier conv init instead of identity", grid=[True, False])

    def _bypass(self, model) -> ConvBypass:
        return ConvBypass(model.embed_dim, self.convpass_bottleneck, self.convpass_scaler,
                          tuple(model.patch_embed.grid_size), model.num_prefix_tokens,
                          self.convpass_xavier_init)

    def attach(self, model) -> None:
        for block in model.blocks:
            block.attn = ParallelBranch(block.attn, self._bypass(model))
            block.mlp = ParallelBranch(block.mlp, self._bypass(model))
