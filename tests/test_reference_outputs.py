"""Our methods against the study's own model code (PETL_Vision): same logits, same trained tensors.

Every case of the golden folder's ``index.json``, on each of its backbones: the stock timm ViT is
built from ``dims`` (plus the backbone's own arguments), loaded with the file's backbone tensors,
the method attached with the case's ``hyperparameters``, and the method's tensors loaded under the
study's names, which each method translates to ours (``MethodConfig.our_name``). Then the
eval-mode logits must match ``__logits__`` and the trained tensors must be exactly ``trainable``.

The folder is ``$PETL_GOLDEN_DIR``, else ``../shared/fixtures/petl_golden`` from the repo root.
A case whose method is not registered fails; a case the index marks with ``"skip": "<reason>"``
is skipped with that reason.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

import peft_core
from peft_core.registry import get_method

GOLDEN = Path(os.environ.get("PETL_GOLDEN_DIR")
              or Path(__file__).resolve().parents[1] / "../shared/fixtures/petl_golden")
INDEX = json.loads((GOLDEN / "index.json").read_text())
ARCH = "vit_base_patch16_224"  # the block structure every golden backbone shares (NOTICE.md)
INPUT, LOGITS = "__input__", "__logits__"

CASES = [(method, backbone) for method in INDEX["cases"] for backbone in INDEX["backbones"]]


def _stock_model(backbone: str, tensors: dict[str, torch.Tensor]):
    model = timm.create_model(ARCH, pretrained=False, **INDEX["dims"], **INDEX["backbones"][backbone])
    stock = {k: v for k, v in tensors.items() if k in model.state_dict()}
    model.load_state_dict(stock, strict=True)
    return model


def _study_view(model, stock: dict[str, torch.Tensor], method: str, study_keys: set[str]):
    """Every tensor of ``model`` under the study's name: the stock ones under the names they had
    before the method attached, the inserted ones under ``study_keys`` (translated by the method)."""
    ours = model.state_dict(keep_vars=True)
    stock_ids = {id(t) for t in stock.values()}
    inserted = {name: t for name, t in ours.items() if id(t) not in stock_ids}
    translated = {get_method(method).our_name(key): key for key in study_keys}
    assert set(translated) == set(inserted), (
        f"study tensors translated to {sorted(set(translated) - set(inserted))} are not ours; "
        f"ours {sorted(set(inserted) - set(translated))} have no study tensor")
    return {**stock, **{key: inserted[name] for name, key in translated.items()}}


@pytest.mark.parametrize("method,backbone", CASES, ids=[f"{m}-{b}" for m, b in CASES])
def test_method_reproduces_the_study(method, backbone):
    case = INDEX["cases"][method]
    if case.get("skip"):
        pytest.skip(case["skip"])
    tensors = load_file(GOLDEN / backbone / f"{method}.safetensors")
    model = _stock_model(backbone, tensors)
    stock = model.state_dict(keep_vars=True)
    peft_core.apply(model, method, **case["hyperparameters"])

    study_keys = set(tensors) - set(stock) - {INPUT, LOGITS}
    view = _study_view(model, stock, method, study_keys)
    with torch.no_grad():
        for key in study_keys:
            # A tensor may differ only in layout (a 1x1 conv kernel kept as a matrix here).
            assert view[key].numel() == tensors[key].numel(), key
            view[key].copy_(tensors[key].reshape(view[key].shape))
        logits = model.eval().forward_head(model.forward_features(tensors[INPUT]))
    torch.testing.assert_close(logits, tensors[LOGITS], atol=1e-5, rtol=0)

    trained = {key for key, t in view.items() if t.requires_grad}
    assert trained == set(case["trainable"][backbone])


def test_adapter_layerscale_once_makes_a_zero_init_adapter_the_identity_on_layerscale():
    layerscale = next(b for b, args in INDEX["backbones"].items() if args.get("init_values"))
    tensors = load_file(GOLDEN / layerscale / "linear.safetensors")
    base = _stock_model(layerscale, tensors).eval()
    with torch.no_grad():
        before = base(tensors[INPUT])
        once = peft_core.apply(_stock_model(layerscale, tensors), "lora_p_adapter",
                               adapter_layerscale_once=True).eval()(tensors[INPUT])
        study = peft_core.apply(_stock_model(layerscale, tensors),
                                "lora_p_adapter").eval()(tensors[INPUT])
    torch.testing.assert_close(once, before)
    assert not torch.allclose(study, before, atol=1e-4)  # the study's LayerScale acts twice
