"""Selective tuning: the attention, MLP or whole block weights of listed blocks."""
from __future__ import annotations

from dataclasses import dataclass

from ..registry import ON, MethodConfig, hp, register_method


def _blocks(model, method: str, key: str, indices: list[int]):
    depth = len(model.blocks)
    for i in indices:
        if not -depth <= i < depth:
            raise ValueError(f"method '{method}': {key} contains {i}; allowed: block indices "
                             f"in [0, {depth - 1}] (or negative from the end)")
    return [model.blocks[i] for i in sorted({i % depth for i in indices})]




def _train_parts(model, method: str, key: str, indices: list[int], branch: str, parts: list[str]) -> None:
    """Unfreeze ``parts`` (e.g. qkv, proj) of ``block.<branch>`` for the listed blocks."""
    for block in _blocks(model, method, key, indices):
        for part in parts:
            getattr(getattr(block, branch), part).requires_grad_(True)


@register_method
@dataclass
class AttnTune(MethodConfig):
    name = "attn_tune"
    trains = "qkv and/or proj of the listed blocks"
    identity_at_init = True
    changes_weights = True
    study_switches = {"attention_index": ON}
    attention_index: list[int] = hp([-1], "block indices")
    attention_type: str = hp("full", "which projections (full: both, the study's name)", choices=["qkv", "proj", "full"])

    def attach(self, model) -> None:
        parts = ["qkv", "proj"] if self.attention_type == "full" else [self.attention_type]
        _train_parts(model, self.name, "attention_index", self.attention_index, "attn", parts)


@register_method
@dataclass
class MlpTune(MethodConfig):
    name = "mlp_tune"
    trains = "fc1 and/or fc2 of the listed blocks"
    identity_at_init = True
    changes_weights = True
    study_switches = {"mlp_index": ON}
    mlp_index: list[int] = hp([-1], "block indices")
    mlp_type: str = hp("full", "which layers (full: both, the study's name)", choices=["fc1", "fc2", "full"])

    def attach(self, model) -> None:
        parts = ["fc1", "fc2"] if self.mlp_type == "full" else [self.mlp_type]
        _train_parts(model, self.name, "mlp_index", self.mlp_index, "mlp", parts)


@register_method
@dataclass
class BlockTune(MethodConfig):
    name = "block_tune"
    trains = "every weight of the listed blocks"
    identity_at_init = True
    changes_weights = True
    study_switches = {"block_index": ON}
    block_index: list[int] = hp([-1], "block indices")

    def attach(self, model) -> None:
        for block in _blocks(model, self.name, "block_index", self.block_index):
            block.requires_grad_(True)
