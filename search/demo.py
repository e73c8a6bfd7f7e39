"""``make demo`` until the search service lands: the study's methods on its three backbones.

Prints, for every method, its inserted parameters on ViT-B/16 IN-21K, DINOv2 ViT-B/14 and the
CLIP ViT-B/16 tower (counted on the meta device: no weights, no memory), then checks on a tiny
ViT that every mergeable method folds into plain weights with unchanged outputs.
"""
from __future__ import annotations

import torch

import peft_core

from .commands import count_params

_BACKBONES = ["vit_b16_in21k", "dinov2_vitb14", "clip_vitb16"]


def _merge_check(method: str) -> float:
    """Max |output difference| between the model with ``method`` attached and its merge."""
    torch.manual_seed(0)
    model = peft_core.apply(peft_core.build_backbone("tiny_vit_b16_in21k", 10), method)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))  # trained-looking weights, not the init
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        return (peft_core.merge(model)(x) - before).abs().max().item()


def run_demo() -> int:
    table = peft_core.methods()
    print(f"{'method':15s}" + "".join(f"{b:>16s}" for b in _BACKBONES) + "   merge")
    for name, info in table.items():
        counts = [count_params(name, b, 100, {})["inserted_params"] for b in _BACKBONES]
        merge = f"ok (max diff {_merge_check(name):.1e})" if info["mergeable"] else "-"
        print(f"{name:15s}" + "".join(f"{c:>16,d}" for c in counts) + f"   {merge}", flush=True)
    print("\nCounts use each method's default hyper-parameters; `peft-search params --method M "
          "--set key=value` for others, `peft-search methods` for the paper's grids.")
    return 0
