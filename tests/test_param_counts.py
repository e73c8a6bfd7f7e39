"""Inserted-parameter counts on full-size backbones (meta device: no memory, no weights)."""
import copy
import functools
import itertools

import pytest
import torch

import peft_core

D, L = 768, 12  # ViT-B/16

# SPEC section 3: counts on ViT-B/16, trainable parameters whose name has no "head".
SPEC_VIT_B16 = [
    ("lora", {"lora_bottleneck": 1}, 36_864),
    ("bitfit", {}, 102_912),
    ("ln", {}, 38_400),
    ("difffit", {}, 140_544),
    ("ssf", {}, 205_824),
    ("vpt_deep", {"vpt_num": 100}, 921_600),
    ("vpt_shallow", {"vpt_num": 200}, 153_600),
    ("adaptformer", {"adapter_bottleneck": 32}, 599_424),
    ("rand_h_adapter", {"adapter_bottleneck": 8}, 313_536),
    ("repadapter", {"repadapter_bottleneck": 16}, 461_184),
    ("convpass", {"convpass_bottleneck": 8}, 327_552),
    ("fact_tt", {"fact_dim": 32}, 196_608),
    ("fact_tk", {"fact_dim": 64}, 369_664),
    ("full", {}, 85_798_656),
    ("linear", {}, 0),
]
SPEC_CLIP = [("ln", {}, 39_936), ("full", {}, 85_799_424)]


@functools.cache
def _meta_backbone(name: str):
    with torch.device("meta"):
        return peft_core.build_backbone(name, num_classes=47)


def count(method: str, backbone: str = "vit_b16_in21k", **hp) -> int:
    with torch.device("meta"):
        model = peft_core.apply(copy.deepcopy(_meta_backbone(backbone)), method, **hp)
    return peft_core.count_inserted(model)


@pytest.mark.parametrize("method,hp,expected", SPEC_VIT_B16, ids=[c[0] for c in SPEC_VIT_B16])
def test_spec_counts_vit_b16(method, hp, expected):
    assert count(method, **hp) == expected


@pytest.mark.parametrize("method,hp,expected", SPEC_CLIP, ids=[c[0] for c in SPEC_CLIP])
def test_spec_counts_clip_tower(method, hp, expected):
    assert count(method, "clip_vitb16", **hp) == expected


def _adapter(r, houlsby=False):
    return L * (2 if houlsby else 1) * (D * r + r + r * D + D)


# Closed forms per method (written from the method descriptions, not from the code).
FORMULAS = {
    "lora": lambda hp: L * hp["lora_bottleneck"] * (D + 3 * D),
    "adaptformer": lambda hp: _adapter(hp["adapter_bottleneck"]),
    "lora_p_adapter": lambda hp: _adapter(hp["adapter_bottleneck"]),
    "rand_p_adapter": lambda hp: _adapter(hp["adapter_bottleneck"]),
    "zero_adapter": lambda hp: _adapter(hp["adapter_bottleneck"]),
    "rand_h_adapter": lambda hp: _adapter(hp["adapter_bottleneck"], houlsby=True),
    "convpass": lambda hp: L * 2 * (_adapter(hp["convpass_bottleneck"]) // L
                                    + 9 * hp["convpass_bottleneck"] ** 2 + hp["convpass_bottleneck"]),
    "repadapter": lambda hp: L * 2 * (D * hp["repadapter_bottleneck"] + hp["repadapter_bottleneck"]
                                      + D * hp["repadapter_bottleneck"] // 2 + D),
    "fact_tt": lambda hp: 2 * D * hp["fact_dim"] + L * 12 * hp["fact_dim"] ** 2,
    "fact_tk": lambda hp: 2 * D * hp["fact_dim"] + hp["fact_dim"] ** 3 + hp["fact_dim"] * 12 * L,
    "vpt_shallow": lambda hp: hp["vpt_num"] * D,
    "vpt_deep": lambda hp: L * hp["vpt_num"] * D,
}


def grid_points(method):
    grid = peft_core.methods()[method]["grid"]
    keys = sorted(grid)
    if not keys:
        return []
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


@pytest.mark.parametrize("method", sorted(FORMULAS))
def test_counts_at_every_paper_grid_point(method):
    points = grid_points(method)
    assert points, f"{method} has no paper grid"
    for hp in points:
        assert count(method, **hp) == FORMULAS[method](hp), hp


def test_paper_grid_sizes_match_the_study():
    # SPEC 4.1: 516 tuning runs per task for 16 methods (the lr x wd grid has 4 points).
    study = ["adaptformer", "convpass", "fact_tk", "fact_tt", "lora", "lora_p_adapter",
             "rand_h_adapter", "repadapter", "vpt_shallow", "vpt_deep", "bitfit", "difffit",
             "full", "linear", "ln", "ssf"]
    lr_wd = 4
    runs = {m: lr_wd * max(len(grid_points(m)), 1) for m in study}
    assert sum(runs.values()) == 516
    assert 19 * sum(runs.values()) == 9_804
