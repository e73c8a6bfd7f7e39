"""Baselines: linear probing, full fine-tuning, and zero-shot (nothing trained)."""
from __future__ import annotations

from dataclasses import dataclass

from ..registry import ON, MethodConfig, register_method


@register_method
@dataclass
class Linear(MethodConfig):
    name = "linear"
    trains = "nothing (linear probing)"
    role = "linear_probe"
    identity_at_init = True

    def attach(self, model) -> None:
        pass  # apply() trains the head only


@register_method
@dataclass
class Full(MethodConfig):
    name = "full"
    trains = "every parameter"
    role = "full_finetune"
    identity_at_init = True
    study_switches = {"full": ON}
    changes_weights = True

    def attach(self, model) -> None:
        model.requires_grad_(True)


@register_method
@dataclass
class ZeroShot(MethodConfig):
    name = "zero_shot"
    trains = "nothing, not even the head (CLIP tower + text-built head)"
    identity_at_init = True
    trains_head = False
    role = "zero_shot"
    study_method_name = "zero_shot"  # the study's method file sets no flag, only the name

    def attach(self, model) -> None:
        pass
