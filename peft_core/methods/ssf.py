"""SSF: learnable scale and shift after every operation of the backbone."""
from __future__ import annotations

from dataclasses import dataclass

from ..layers import ChannelAffine, OutputAffine
from ..registry import ON, MethodConfig, register_method


def _ssf(module, dim: int) -> OutputAffine:
    return OutputAffine(module, ChannelAffine(dim, shift=True, init_std=0.02))


@register_method
@dataclass
class SSF(MethodConfig):
    name = "ssf"
    trains = "scale and shift after patch embed, norm1, qkv, proj, norm2, fc1, fc2, final norm"
    study_switches = {"ssf": ON}

    def attach(self, model) -> None:
        dim = model.embed_dim
        model.patch_embed.proj = _ssf(model.patch_embed.proj, dim)
        for block in model.blocks:
            block.norm1 = _ssf(block.norm1, dim)
            block.attn.qkv = _ssf(block.attn.qkv, block.attn.qkv.out_features)
            block.attn.proj = _ssf(block.attn.proj, dim)
            block.norm2 = _ssf(block.norm2, dim)
            block.mlp.fc1 = _ssf(block.mlp.fc1, block.mlp.fc1.out_features)
            block.mlp.fc2 = _ssf(block.mlp.fc2, dim)
        model.norm = _ssf(model.norm, dim)
