"""Visual prompt tuning through forward (pre-)hooks on the stock blocks.

Prompts are prepended before the CLS token. ``vpt_deep`` swaps in fresh prompts before every
block; ``vpt_shallow`` prepends them at block 0 and, as the study's code does, drops them again
after block 0 (``vpt_original: true`` keeps them through all blocks, as in the VPT paper).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from ..layers import InsertedModule
from ..registry import MethodConfig, hp, register_method

_NOT_LINEAR = "prompt tokens change the sequence the attention sees; they do not fold into weights"
# What is implemented of the study's prompt flags: prompts from block 0 on (its vpt_layer would
# keep only the last k blocks) and PromptTokens' dropout of 0.1.
_STUDY_MODES = {"vpt_layer": (None,), "vpt_dropout": (0.1, None)}
# The study keeps every prompted block's tokens in one (blocks, tokens, D) tensor, as we do.
_STUDY_NAMES = {r"vpt\.prompt_embeddings": "blocks.0.vpt_prompts.tokens"}


def prompt_init_bound(model) -> float:
    """VPT's uniform init bound sqrt(6 / (3 * p^2 + D)) for patch size p."""
    ph, pw = model.patch_embed.patch_size
    return math.sqrt(6.0 / (3 * ph * pw + model.embed_dim))


class PromptTokens(InsertedModule):
    """``num`` learnable tokens for each of the first ``layers`` blocks; its hooks prepend a
    block's tokens to its input (swapping out the previous block's) and strip them at the end."""

    def __init__(self, layers: int, num: int, dim: int, bound: float, dropout: float = 0.1) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.empty(layers, num, dim).uniform_(-bound, bound))
        self.dropout = nn.Dropout(dropout)

    @property
    def num(self) -> int:
        return self.tokens.shape[1]

    def prepend(self, layer: int, block: nn.Module, args: tuple) -> tuple:
        x = args[0]
        if layer > 0:  # the previous block's prompt outputs
            x = x[:, self.num:]
        prompts = self.dropout(self.tokens[layer]).to(x.dtype).expand(x.shape[0], -1, -1)
        return (torch.cat([prompts, x], dim=1),) + args[1:]

    def strip(self, block: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output[:, self.num:]


def _attach_prompts(model, num: int, deep: bool, keep: bool) -> None:
    layers = len(model.blocks) if deep else 1
    prompts = PromptTokens(layers, num, model.embed_dim, prompt_init_bound(model))
    model.blocks[0].vpt_prompts = prompts  # block 0 owns every block's tokens
    for layer in range(layers):
        model.blocks[layer].register_forward_pre_hook(partial(prompts.prepend, layer))
    last = model.blocks[-1] if (deep or keep) else model.blocks[0]
    last.register_forward_hook(prompts.strip)


@register_method
@dataclass
class VPTShallow(MethodConfig):
    name = "vpt_shallow"
    trains = "prompt tokens prepended at block 0"
    aliases = {"num_tokens": "vpt_num"}
    cannot_merge = _NOT_LINEAR
    study_switches = {"vpt_mode": "shallow"}
    study_modes = _STUDY_MODES
    study_names = _STUDY_NAMES
    vpt_num: int = hp(10, "number of prompt tokens", grid=[5, 10, 50, 100, 200], low=1)
    vpt_original: bool = hp(False, "keep the prompts through all blocks (VPT paper) instead of "
                                   "dropping them after block 0 (the study's code)")

    def attach(self, model) -> None:
        _attach_prompts(model, self.vpt_num, deep=False, keep=self.vpt_original)


@register_method
@dataclass
class VPTDeep(MethodConfig):
    name = "vpt_deep"
    trains = "fresh prompt tokens before every block"
    aliases = {"num_tokens": "vpt_num"}
    cannot_merge = _NOT_LINEAR
    study_switches = {"vpt_mode": "deep"}
    study_modes = _STUDY_MODES
    study_names = _STUDY_NAMES
    vpt_num: int = hp(10, "prompt tokens per block", grid=[5, 10, 50, 100], low=1)

    def attach(self, model) -> None:
        _attach_prompts(model, self.vpt_num, deep=True, keep=True)
