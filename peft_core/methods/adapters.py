"""Bottleneck adapters: AdaptFormer (parallel), Pfeiffer and Houlsby (sequential), VPT's adapter."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from ..layers import Bottleneck, PreNormParallel, SequentialAdapter
from ..registry import Scalable, hp, register_method

_SCALERS = [0.01, 0.1, 1.0, 10.0]
_RANKS = [4, 8, 16, 32]


@dataclass
class _Adapter(Scalable):
    """Shared fields; subclasses choose init and placement."""

    init: ClassVar[str] = "random"
    aliases = {"rank": "adapter_bottleneck", "scale": "adapter_scaler"}
    adapter_bottleneck: int = hp(8, "bottleneck width r", grid=_RANKS, low=1)
    adapter_scaler: float = hp(0.1, "output scale s", grid=_SCALERS, low=0.0)

    def _bottleneck(self, dim: int) -> Bottleneck:
        return Bottleneck(dim, self.adapter_bottleneck, self.adapter_scaler, self.init)


@dataclass
class _SequentialAdapter(_Adapter):
    """An adapter after the MLP branch (and after attention for Houlsby), before the residual add.

    The study's code applies the block's LayerScale and drop-path to the branch output, feeds
    that to the adapter, and applies them again to the sum; ``adapter_layerscale_once`` applies
    them once, to branch + adapter.
    """

    after_attention: ClassVar[bool] = False  # Houlsby: one adapter after each branch
    study_names = {r"blocks\.(\d+)\.ft_(attn|mlp)_module\.(down|up)_proj\.(\w+)":
                   r"blocks.\1.\2.delta.\3.\4"}
    adapter_layerscale_once: bool = hp(False, "apply the block's LayerScale and drop-path once, "
                                              "to branch + adapter, instead of a second time to the "
                                              "branch output the adapter reads (the study's code)")

    def _after(self, branch: nn.Module, layerscale: nn.Module, drop_path: nn.Module,
               dim: int) -> SequentialAdapter:
        tail = () if self.adapter_layerscale_once else (layerscale, drop_path)
        return SequentialAdapter(branch, self._bottleneck(dim), tail)

    def attach(self, model) -> None:
        for block in model.blocks:
            block.mlp = self._after(block.mlp, block.ls2, block.drop_path2, model.embed_dim)
            if self.after_attention:
                block.attn = self._after(block.attn, block.ls1, block.drop_path1, model.embed_dim)


_RELU = "ReLU adapters are not linear in their input"
# The study's flags: every adapter here is on the MLP; its "xavier" init is this project's "random".
_MLP_ADAPTER = {"ft_mlp_module": "adapter"}
_AFTER = ("sequential_after",)
_RANDOM_INIT = ("xavier", "random", None)


@register_method
@dataclass
class AdaptFormer(_Adapter):
    name = "adaptformer"
    trains = "a bottleneck parallel to each MLP, fed the block input before norm2"
    init = "lora_kaiming"
    identity_at_init = True
    cannot_merge = _RELU
    study_switches = _MLP_ADAPTER
    study_modes = {"ft_mlp_mode": ("parallel", None), "ft_mlp_ln": ("before", None),
                   "adapter_init": ("lora_kaiming", None)}
    study_names = {r"blocks\.(\d+)\.ft_mlp_module\.(down|up)_proj\.(\w+)":
                   r"blocks.\1.mlp.adapter.\2.\3"}
    adapter_bottleneck: int = hp(8, "bottleneck width r", grid=[4, 16, 32], low=1)
    adapter_scaler: float = hp(0.1, "output scale s", grid=[0.05, 0.1, 0.2], low=0.0)

    def attach(self, model) -> None:
        for block in model.blocks:
            block.mlp = PreNormParallel(block.norm2, block.mlp, self._bottleneck(model.embed_dim))
            block.norm2 = nn.Identity()


@register_method
@dataclass
class LoraPAdapter(_SequentialAdapter):
    name = "lora_p_adapter"
    trains = "a Pfeiffer adapter after each MLP (xavier down, zero up)"
    init = "lora_xavier"
    identity_at_init = True
    cannot_merge = _RELU
    study_switches = _MLP_ADAPTER
    study_modes = {"ft_mlp_mode": _AFTER, "adapter_init": ("lora_xavier",)}
    adapter_bottleneck: int = hp(8, "bottleneck width r", grid=[4, 8, 16, 32, 64], low=1)


@register_method
@dataclass
class RandPAdapter(_SequentialAdapter):
    name = "rand_p_adapter"
    trains = "a Pfeiffer adapter after each MLP (random init)"
    cannot_merge = _RELU
    study_switches = _MLP_ADAPTER
    study_modes = {"ft_mlp_mode": _AFTER, "adapter_init": _RANDOM_INIT}


@register_method
@dataclass
class RandHAdapter(_SequentialAdapter):
    name = "rand_h_adapter"
    trains = "Houlsby adapters after each attention and each MLP branch (random init)"
    after_attention = True
    cannot_merge = _RELU
    study_switches = {**_MLP_ADAPTER, "ft_attn_module": "adapter"}
    study_modes = {"ft_mlp_mode": _AFTER, "ft_attn_mode": ("sequential_after", None),
                   "adapter_init": _RANDOM_INIT}


@register_method
@dataclass
class ZeroAdapter(_SequentialAdapter):
    name = "zero_adapter"
    trains = "the VPT paper's adapter after each MLP (down weight and up bias start at zero)"
    init = "zero"
    cannot_merge = _RELU
    study_switches = _MLP_ADAPTER
    study_modes = {"ft_mlp_mode": _AFTER, "adapter_init": ("zero",)}
