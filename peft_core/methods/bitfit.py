"""Methods that tune existing weights: BitFit (biases), LN-tune (LayerNorms), DiffFit."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..layers import ChannelAffine, OutputAffine
from ..registry import ON, MethodConfig, register_method


def _backbone_modules(model):
    """Every module outside the classifier head."""
    head = model.get_classifier()
    head_modules = set(head.modules()) if isinstance(head, nn.Module) else set()
    return [m for m in model.modules() if m not in head_modules]


def train_biases(model) -> None:
    for m in _backbone_modules(model):
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.LayerNorm)) and m.bias is not None:
            m.bias.requires_grad_(True)


def train_layernorms(model, weights_only: bool = False) -> None:
    for m in _backbone_modules(model):
        if isinstance(m, nn.LayerNorm):
            m.weight.requires_grad_(True)
            if not weights_only and m.bias is not None:
                m.bias.requires_grad_(True)


@register_method
@dataclass
class BitFit(MethodConfig):
    name = "bitfit"
    trains = "every bias outside the head (qkv, proj, fc1, fc2, LayerNorms, patch embed)"
    identity_at_init = True
    changes_weights = True
    study_switches = {"bitfit": ON}

    def attach(self, model) -> None:
        train_biases(model)


@register_method
@dataclass
class LayerNormTune(MethodConfig):
    name = "ln"
    trains = "every LayerNorm weight and bias"
    identity_at_init = True
    changes_weights = True
    study_switches = {"ln": ON}

    def attach(self, model) -> None:
        train_layernorms(model)


@register_method
@dataclass
class DiffFit(MethodConfig):
    name = "difffit"
    trains = "biases, LayerNorm weights, and per-block gains on the attention and MLP branches"
    identity_at_init = True
    changes_weights = True
    study_switches = {"difffit": ON}
    study_names = {r"blocks\.(\d+)\.difffit_gamma1": r"blocks.\1.attn.proj.delta.scale",
                   r"blocks\.(\d+)\.difffit_gamma2": r"blocks.\1.mlp.fc2.delta.scale"}

    def attach(self, model) -> None:
        train_biases(model)
        train_layernorms(model, weights_only=True)
        dim = model.embed_dim
        for block in model.blocks:
            # A gain on the branch output before the residual add = a gain on its last linear.
            block.attn.proj = OutputAffine(block.attn.proj, ChannelAffine(dim, shift=False))
            block.mlp.fc2 = OutputAffine(block.mlp.fc2, ChannelAffine(dim, shift=False))
