"""WiSE (SPEC 4.4): weight-space ensembles of a fine-tuned model and its zero-shot start.

Methods that train existing weights (``changes_weights``: full, bitfit, ln, difffit, selective
tuning) interpolate the whole state dict. ``Scalable`` methods, whose inserted modules carry a
``merge_factor`` (adapters, LoRA, FacT, RepAdapter, ConvPass), interpolate the head and scale
every inserted module's output by alpha. Linear probing and zero-shot have only the head to
interpolate.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from .api import config_of, set_merge_factor
from .layers import InsertedModule
from .registry import Scalable


class WiSE:
    """Move ``finetuned`` between its zero-shot start (alpha 0) and itself (alpha 1), in place.

    ``zero_shot_state``: the same model's state before training: backbone, zero-shot head and
    the method's freshly attached modules (``build_model(config, n).state_dict()``). Exact at
    the ends: alpha 0 gives the zero-shot logits, alpha 1 the fine-tuned ones.
    """

    def __init__(self, finetuned: nn.Module, zero_shot_state: Mapping[str, torch.Tensor]) -> None:
        config = config_of(finetuned)
        if config is None:
            raise ValueError("WiSE needs a model with a PEFT method attached (peft_core.apply)")
        own = finetuned.state_dict()
        if set(zero_shot_state) != set(own):
            differ = sorted(set(zero_shot_state) ^ set(own))
            raise ValueError(f"zero-shot state does not match the fine-tuned '{config.name}' model: "
                             f"{len(differ)} tensors differ, e.g. {differ[0]}")
        self.model = finetuned
        self.finetuned = {k: v.detach().clone() for k, v in own.items()}
        self.zero_shot = {k: v.detach().to(own[k].device).clone() for k, v in zero_shot_state.items()}
        inserted = any(isinstance(m, InsertedModule) for m in finetuned.modules())
        scalable = isinstance(config, Scalable)
        if inserted and not (config.changes_weights or scalable):
            raise ValueError(f"method '{config.name}' has no WiSE: its inserted modules are not "
                             f"scaled by merge_factor and it trains no existing weights")
        # The trained merge_factor is what alpha 1 must give back.
        self.merge_factor = config.merge_factor if scalable else None
        head = {f"head.{name}" for name in finetuned.get_classifier().state_dict()}
        self.interpolated = set(own) if config.changes_weights else head

    @torch.no_grad()
    def at(self, alpha: float) -> nn.Module:
        """The model at ``alpha`` in [0, 1] (the same object, its weights replaced)."""
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"WiSE alpha={alpha!r} is invalid; allowed: a number in [0, 1]")
        # (1 - a) * zs + a * ft, not lerp: it gives exactly zs at 0 and exactly ft at 1.
        state = {k: (1.0 - alpha) * self.zero_shot[k] + alpha * ft
                 if k in self.interpolated and ft.is_floating_point() else ft
                 for k, ft in self.finetuned.items()}
        self.model.load_state_dict(state)
        if self.merge_factor is not None:
            set_merge_factor(self.model, alpha * self.merge_factor)
        return self.model
