"""SSF: learnable scale and shift after every operation of the backbone."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

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
    # The study's scale/shift pairs, named by where they sit, and the module they follow here.
    study_names = {r"patch_embed\.ssf_(scale|shift)_1": r"patch_embed.proj.delta.\1",
                   r"blocks\.(\d+)\.ssf_(scale|shift)_1": r"blocks.\1.norm1.delta.\2",
                   r"blocks\.(\d+)\.attn\.ssf_(scale|shift)_qkv": r"blocks.\1.attn.qkv.delta.\2",
                   r"blocks\.(\d+)\.attn\.ssf_(scale|shift)_linear": r"blocks.\1.attn.proj.delta.\2",
                   r"blocks\.(\d+)\.ssf_(scale|shift)_2": r"blocks.\1.norm2.delta.\2",
                   r"blocks\.(\d+)\.mlp\.ssf_(scale|shift)_hidden": r"blocks.\1.mlp.fc1.delta.\2",
                   r"blocks\.(\d+)\.mlp\.ssf_(scale|shift)_out": r"blocks.\1.mlp.fc2.delta.\2",
                   r"ssf_(scale|shift)": r"norm.delta.\1"}

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
        # the final norm: ``norm``, or ``fc_norm`` after pooling on timm's pooled (gap) ViTs
        final = "norm" if not isinstance(model.norm, nn.Identity) else "fc_norm"
        setattr(model, final, _ssf(getattr(model, final), dim))
