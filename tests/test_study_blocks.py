"""The study-way models of ``benchmarks/study_blocks.py`` (the speed peer of ``step_time.py
--study``) are the study's computation: loaded with the golden tensors under the study's own names
(``strict=True``), they reproduce the study's logits and train exactly its trained set; loaded
with our weights they reproduce our logits; their attention is the explicit one.

The golden folder is ``$PETL_GOLDEN_DIR``, else ``../shared/fixtures/petl_golden`` from the repo
root; without it the golden cases skip.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

import peft_core

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("study_blocks", ROOT / "benchmarks" / "study_blocks.py")
study_blocks = sys.modules.setdefault("study_blocks", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(study_blocks)

GOLDEN = Path(os.environ.get("PETL_GOLDEN_DIR") or ROOT / "../shared/fixtures/petl_golden")
INDEX = json.loads((GOLDEN / "index.json").read_text()) if (GOLDEN / "index.json").exists() else None
ARCH = "vit_base_patch16_224"
CASES = [(m, b) for m in INDEX["cases"] for b in INDEX["backbones"]] if INDEX else []
# Every method but the unsupported ones, with small sizes (fact_tk's default rank is 16).
METHODS = [m for m in peft_core.methods() if m not in study_blocks.UNSUPPORTED]


@pytest.mark.skipif(INDEX is None, reason=f"no golden folder at {GOLDEN}")
@pytest.mark.parametrize("method,backbone", CASES, ids=[f"{m}-{b}" for m, b in CASES])
def test_study_way_model_reproduces_the_study(method, backbone):
    case = INDEX["cases"][method]
    tensors = load_file(GOLDEN / backbone / f"{method}.safetensors")
    model = timm.create_model(ARCH, pretrained=False, **INDEX["dims"], **INDEX["backbones"][backbone])
    study_blocks.study_model(model, method, **case["hyperparameters"])
    model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("__")}, strict=True)
    with torch.no_grad():
        logits = model.eval()(tensors["__input__"])
    torch.testing.assert_close(logits, tensors["__logits__"], atol=1e-4, rtol=0)
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trained == set(case["trainable"][backbone])


def _vit(**extra):
    torch.manual_seed(0)
    return timm.create_model(ARCH, pretrained=False, img_size=32, patch_size=8, embed_dim=48,
                             depth=3, num_heads=3, num_classes=5, **extra)


@pytest.mark.parametrize("method", METHODS)
def test_study_way_model_with_our_weights_computes_ours(method, monkeypatch):
    hp = {"fact_dim": 8} if method == "fact_tk" else {}
    base = _vit()
    ours = copy.deepcopy(base)
    stock = {id(p) for p in ours.parameters()}
    peft_core.apply(ours, method, **hp)
    with torch.no_grad():  # every inserted tensor away from its init, so none is a no-op
        for p in ours.parameters():
            if id(p) not in stock:
                p.add_(0.1 * torch.randn_like(p))
    study = study_blocks.study_model(copy.deepcopy(base), method, **hp)
    study_blocks.copy_from_ours(study, ours, method, set(base.state_dict()))
    study = copy.deepcopy(study)  # the copy reads its own tensors (hooks included)
    assert (sum(p.numel() for p in study.parameters() if p.requires_grad)
            == sum(p.numel() for p in ours.parameters() if p.requires_grad))

    def no_fused(*args, **kwargs):
        raise AssertionError("the study-way attention is explicit, not SDPA")

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = ours.eval()(x)
        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", no_fused)
        got = study.eval()(x)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
