"""Small composable layers the methods build from.

Every trainable module a method inserts is an ``InsertedModule``: ``apply`` marks exactly their
parameters trainable (freeze by type, never by name). Wrappers keep the stock timm submodule as
``base`` and add an inserted module around it; ``fold()`` turns a wrapper back into a plain
module with the method folded into its weights (``peft_core.merge``).
"""
from __future__ import annotations

import math

import torch
from torch import nn


class InsertedModule(nn.Module):
    """Marker base: a module a method inserted. All its own parameters are trained.

    ``merge_factor`` multiplies its output (the WiSE knob for PEFT, SPEC section 4.4).
    """

    merge_factor: float = 1.0

    def add_to(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``out + self(x)``; low-rank modules override it to accumulate inside one GEMM."""
        return out + self(x)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class LowRankBranch(InsertedModule):
    """An inserted branch ending in a linear up-projection: ``scale * up(hidden(x))``.

    Subclasses give ``hidden`` and ``up``; ``add_to`` then accumulates the up-projection into
    the frozen path's output inside one GEMM. ``hidden`` may return (..., n, r) when the branch
    produces n chunks of the output width (FacT on q|k|v or fc1).
    """

    scale: float = 1.0
    up: nn.Linear

    def hidden(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(self.hidden(x)) * (self.scale * self.merge_factor)
        return y.reshape(*x.shape[:-1], -1)

    def add_to(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return add_scaled_linear(out, self.hidden(x), self.up.weight, self.up.bias,
                                 self.scale * self.merge_factor)


def add_scaled_linear(out: torch.Tensor, z: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """``out + alpha * (z @ weight.T + bias)`` with the product accumulated into ``out`` by one
    GEMM (``addmm``): no full-width temporaries for the product, the scaling or the sum."""
    rows = out.reshape(-1, weight.shape[0])
    if bias is not None:
        rows = rows + alpha * bias
    return torch.addmm(rows, z.reshape(-1, weight.shape[1]), weight.t(), alpha=alpha).view(out.shape)


class Bottleneck(LowRankBranch):
    """down D->r, activation, dropout, up r->D, times ``scale`` (adapters of every flavour)."""

    def __init__(self, dim: int, rank: int, scale: float, init: str, dropout: float = 0.1,
                 act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.down = nn.Linear(dim, rank)
        self.act = act()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(rank, dim)
        self.scale = scale
        _init_bottleneck(self.down, self.up, init)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.act(self.down(x)))


def _init_bottleneck(down: nn.Linear, up: nn.Linear, init: str) -> None:
    if init == "lora_kaiming":  # AdaptFormer: kaiming-uniform down, zero up
        nn.init.kaiming_uniform_(down.weight, a=math.sqrt(5))
        nn.init.zeros_(up.weight)
        nn.init.zeros_(down.bias), nn.init.zeros_(up.bias)
    elif init == "lora_xavier":  # Pfeiffer with LoRA init: xavier down, zero up
        nn.init.xavier_uniform_(down.weight)
        nn.init.zeros_(up.weight)
        nn.init.zeros_(down.bias), nn.init.zeros_(up.bias)
    elif init == "random":  # random Pfeiffer / Houlsby
        nn.init.xavier_uniform_(down.weight)
        nn.init.xavier_uniform_(up.weight)
        nn.init.normal_(down.bias, std=1e-6), nn.init.normal_(up.bias, std=1e-6)
    elif init == "zero":  # VPT paper's adapter as the study ran it: only these two start at 0
        nn.init.zeros_(down.weight)
        nn.init.zeros_(up.bias)
    else:
        raise ValueError(f"unknown adapter init '{init}'; allowed: lora_kaiming, lora_xavier, random, zero")


class Wrapper(nn.Module):
    """Holds a stock submodule as ``base`` and an inserted module as ``delta``."""

    def __init__(self, base: nn.Module, delta: nn.Module) -> None:
        super().__init__()
        self.base = base
        self.delta = delta

    def fold(self) -> nn.Module:
        raise ValueError(f"{type(self.delta).__name__} cannot be folded into {type(self.base).__name__}")


class ParallelBranch(Wrapper):
    """``base(x) + delta(x)``: LoRA and FacT on a linear, ConvPass beside attention or MLP."""

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.delta.add_to(self.base(x, **kwargs), x)

    def fold(self) -> nn.Module:
        return fold_affine(self)


class PreAdapter(Wrapper):
    """``base(x + delta(x))``: RepAdapter on the normed input of qkv / fc1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(self.delta.add_to(x, x))

    def fold(self) -> nn.Module:
        return fold_affine(self)


class SequentialAdapter(Wrapper):
    """``h + delta(h)`` with ``h = tail(base(x))``: Pfeiffer / Houlsby adapters after a branch.

    ``tail`` are modules of the block (its LayerScale and drop-path) that the block applies to
    this wrapper's output anyway: passing them applies them to the branch output a first time,
    as the study's code does. They stay the block's children, not this wrapper's.
    """

    def __init__(self, base: nn.Module, delta: nn.Module, tail: tuple[nn.Module, ...] = ()) -> None:
        super().__init__(base, delta)
        self._tail = tail

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        h = self.base(x, **kwargs)
        for module in self._tail:
            h = module(h)
        return self.delta.add_to(h, h)


class PreNormParallel(nn.Module):
    """AdaptFormer's MLP: ``mlp(norm(x)) + adapter(x)`` with the adapter fed *before* the norm.

    The block's own ``norm2`` is replaced by ``Identity`` and kept here, so the block code is
    untouched and the adapter still sees the un-normed block input (``ft_mlp_ln: before``).
    """

    def __init__(self, norm: nn.Module, mlp: nn.Module, adapter: nn.Module) -> None:
        super().__init__()
        self.norm, self.mlp, self.adapter = norm, mlp, adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter.add_to(self.mlp(self.norm(x)), x)


class ChannelAffine(InsertedModule):
    """Per-channel ``y * scale + shift`` (SSF; DiffFit's gains are the scale-only case)."""

    def __init__(self, dim: int, shift: bool, init_std: float = 0.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.shift = nn.Parameter(torch.zeros(dim)) if shift else None
        if init_std:
            nn.init.normal_(self.scale, 1.0, init_std)
            if self.shift is not None:
                nn.init.normal_(self.shift, 0.0, init_std)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        channel_dim = 1 if y.dim() == 4 else -1  # conv output (B, C, H, W) or tokens (..., C)
        shape = (-1, 1, 1) if channel_dim == 1 else (-1,)
        y = y * self.scale.view(shape)
        return y + self.shift.view(shape) if self.shift is not None else y


class OutputAffine(Wrapper):
    """``delta(base(x))`` for a per-channel affine ``delta``: folds into the base's weight/bias."""

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.delta(self.base(x, **kwargs))

    @torch.no_grad()
    def fold(self) -> nn.Module:
        base, affine = self.base, self.delta
        weight = base.weight  # Linear, Conv2d and LayerNorm all keep output channels on dim 0
        weight.mul_(affine.scale.view((-1,) + (1,) * (weight.dim() - 1)))
        bias = base.bias if base.bias is not None else torch.zeros_like(affine.scale)
        bias = bias * affine.scale + (affine.shift if affine.shift is not None else 0.0)
        base.bias = nn.Parameter(bias.detach().clone())
        return base


@torch.no_grad()
def fold_affine(module: nn.Module) -> nn.Linear:
    """Fold a wrapper that is affine in its input into one ``nn.Linear``.

    The map is probed (eval mode: no dropout) on the origin and the unit vectors, so every
    linear method folds through the same code: bias = f(0), column i = f(e_i) - f(0).
    """
    base = module.base
    was_training = module.training
    module.eval()
    n_in = base.in_features
    x = torch.cat([torch.zeros(1, n_in), torch.eye(n_in)]).to(base.weight).unsqueeze(0)
    y = module(x)[0]
    module.train(was_training)
    folded = nn.Linear(n_in, base.out_features, bias=True,
                       device=base.weight.device, dtype=base.weight.dtype)
    folded.weight.copy_((y[1:] - y[0]).T)
    folded.bias.copy_(y[0])
    if base.bias is None and torch.count_nonzero(folded.bias) == 0:
        folded.bias = None
    return folded


def grouped_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A 1x1 grouped convolution over tokens: ``weight`` is (groups, out/g, in/g)."""
    g, out_g, in_g = weight.shape
    y = torch.einsum("...gi,goi->...go", x.unflatten(-1, (g, in_g)), weight).flatten(-2)
    return y + bias if bias is not None else y

