"""The public surface: ``apply``, ``count_inserted``, ``merge``, ``methods``, ``set_merge_factor``."""
from __future__ import annotations

from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .layers import InsertedModule, Wrapper
from .registry import HEAD_ONLY_ROLES, MethodConfig, Scalable, check_vit, get_method, method_names

_CONFIG_ATTR = "peft_config"


def apply(model: nn.Module, name: str, **hp: Any) -> VisionTransformer:
    """Attach method ``name`` with hyper-parameters ``hp`` to a stock timm ViT, in place.

    Everything is frozen, the method attaches, then exactly its parameters (and the head) train.
    Returns the same model. Unknown names or out-of-range values, or a method that found nothing
    to train on this model, raise a one-line ValueError.
    """
    model = check_vit(model)
    if getattr(model, _CONFIG_ATTR, None) is not None:
        raise ValueError(f"model already has method '{model.peft_config.name}' attached; "
                         f"build a fresh model to apply '{name}'")
    config = get_method(name).from_hp(**hp)
    model.requires_grad_(False)
    try:
        config.attach(model)
    except (AttributeError, TypeError, RuntimeError) as err:  # a block layout the method does not know
        blocks = sorted({type(b).__name__ for b in model.blocks})
        detail = (str(err).strip().splitlines() or [""])[0]
        raise ValueError(f"method '{name}' cannot attach to this model (blocks: {', '.join(blocks)}): "
                         f"{type(err).__name__}: {detail}") from None
    for module in model.modules():
        if isinstance(module, InsertedModule):
            module.requires_grad_(True)
    if isinstance(config, Scalable):
        set_merge_factor(model, config.merge_factor)
    if config.trains_head:
        model.get_classifier().requires_grad_(True)
    if config.role not in HEAD_ONLY_ROLES and count_inserted(model) == 0:
        raise ValueError(f"method '{name}' trains nothing besides the head on this model: "
                         f"its attach found nothing to adapt")
    object.__setattr__(model, _CONFIG_ATTR, config)
    return model


def config_of(model: nn.Module) -> MethodConfig | None:
    """The config of the method attached to ``model`` (None for a plain model)."""
    return getattr(model, _CONFIG_ATTR, None)


def count_inserted(model: nn.Module) -> int:
    """Trainable parameters outside the classifier (the study's count)."""
    head = {id(p) for p in model.get_classifier().parameters()}
    return sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in head)


def set_merge_factor(model: nn.Module, factor: float) -> None:
    """Scale the output of every inserted module by ``factor`` (WiSE for PEFT)."""
    for module in model.modules():
        if isinstance(module, InsertedModule):
            module.merge_factor = float(factor)


def merge(model: nn.Module) -> VisionTransformer:
    """Fold the attached method into the frozen weights; returns a plain timm ViT.

    The result has no inserted modules, no hooks, and nothing trainable outside the head; its
    outputs equal the unmerged model's (eval mode). Methods that are not linear in their input
    raise a ValueError saying why.
    """
    model = check_vit(model)
    config = config_of(model)
    if config is None:
        raise ValueError("model has no PEFT method attached; nothing to merge")
    if config.cannot_merge is not None:
        raise ValueError(f"method '{config.name}' cannot be merged: {config.cannot_merge}")
    patches = model.patch_embed.proj
    bias_free_patches = isinstance(patches, Wrapper) and getattr(patches.base, "bias", None) is None
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, Wrapper):
                setattr(parent, child_name, child.fold())
    if bias_free_patches and model.patch_embed.proj.bias is not None:
        _patch_bias_into_pos_embed(model)
    for child_name, child in list(model.named_children()):
        if isinstance(child, InsertedModule):  # shared factors (FacT), folded above
            delattr(model, child_name)
    leftover = [n for n, m in model.named_modules() if isinstance(m, InsertedModule)]
    if leftover:
        raise ValueError(f"method '{config.name}' left inserted modules after merge: {leftover[:3]}")
    model.requires_grad_(False)
    model.get_classifier().requires_grad_(True)
    object.__delattr__(model, _CONFIG_ATTR)
    return model


@torch.no_grad()
def _patch_bias_into_pos_embed(model: VisionTransformer) -> None:
    """A shift folded into a bias-free patch embedding (SSF on CLIP) moves to the position
    embedding of the patch tokens, added to the same tokens next: the stock layout is kept."""
    proj = model.patch_embed.proj
    if model.pos_embed is None:
        raise ValueError("cannot merge a shift of the patch embedding into a model without a "
                         "position embedding and without a patch-embedding bias")
    model.pos_embed[:, 0 if model.no_embed_class else model.num_prefix_tokens:] += proj.bias
    proj.bias = None


def methods() -> dict[str, dict[str, Any]]:
    """Every registered method: what it trains, its hyper-parameters with defaults, its grid."""
    return {name: get_method(name).describe() for name in method_names()}
