"""VQT: per-block query tokens that read the block without being read (an attention mask).

Each block gets ``vqt_num`` query tokens appended to its input, with an attention mask that
hides them from every key, so the other tokens compute exactly what they would without them.
Their block outputs, through the model's final norm, are combined with the normed CLS feature
by a learned weighting (init ones) into the pooled feature (what ``fc_norm`` and the head read).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..layers import InsertedModule
from ..registry import ON, MethodConfig, hp, register_method
from .vpt import prompt_init_bound


class QueryTokens(InsertedModule):
    def __init__(self, num: int, dim: int, bound: float, sink: "QueryCombiner") -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.empty(num, dim).uniform_(-bound, bound))
        self._sink = (sink,)  # the model-level combiner collects this block's outputs

    def append(self, block: nn.Module, args: tuple, kwargs: dict) -> tuple:
        x = args[0]
        n, t = x.shape[1], self.tokens.shape[0]
        visible = torch.zeros(n + t, n + t, dtype=torch.bool, device=x.device)
        visible[:, :n] = True  # every token (queries included) attends to the real tokens only
        queries = self.tokens.to(x.dtype).expand(x.shape[0], -1, -1)
        return (torch.cat([x, queries], dim=1),) + args[1:], {**kwargs, "attn_mask": visible}

    def collect(self, block: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor):
        t = self.tokens.shape[0]
        self._sink[0].outputs.append(output[:, -t:])
        return output[:, :-t]


class QueryCombiner(InsertedModule):
    """Weights (init ones) over [CLS, all query outputs]; feeds their weighted sum to the head."""

    def __init__(self, num_queries: int, norm: nn.Module) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_queries + 1))
        self._norm = (norm,)  # the model's frozen final norm
        self.outputs: list[torch.Tensor] = []

    def combine(self, fc_norm: nn.Module, args: tuple) -> tuple:
        cls = args[0]
        queries = self._norm[0](torch.cat(self.outputs, dim=1))  # (B, L*T, D)
        self.outputs = []
        feats = torch.cat([cls.unsqueeze(1), queries], dim=1)
        return (torch.einsum("bkd,k->bd", feats, self.weight.to(cls.dtype)),) + args[1:]

    def reset(self, module: nn.Module, args: tuple) -> None:
        self.outputs = []


@register_method
@dataclass
class VQT(MethodConfig):
    name = "vqt"
    trains = "query tokens per block and the weights combining their outputs with CLS"
    aliases = {"num_tokens": "vqt_num"}
    cannot_merge = "query tokens add features the head reads; they do not fold into weights"
    study_switches = {"vqt_num": ON}  # the study's default file sets it to 0: off
    study_modes = {"vqt_dropout": (None, 0, 0.0)}  # no dropout on the query tokens here
    vqt_num: int = hp(10, "query tokens per block", low=1)

    def attach(self, model) -> None:
        bound = prompt_init_bound(model)
        model.vqt = QueryCombiner(self.vqt_num * len(model.blocks), model.norm)
        model.blocks[0].register_forward_pre_hook(model.vqt.reset)
        for block in model.blocks:
            block.vqt_queries = QueryTokens(self.vqt_num, model.embed_dim, bound, model.vqt)
            block.register_forward_pre_hook(block.vqt_queries.append, with_kwargs=True)
            block.register_forward_hook(block.vqt_queries.collect, with_kwargs=True)
        # Before fc_norm (empty on the study's towers, CLIP's included).
        model.fc_norm.register_forward_pre_hook(model.vqt.combine)
