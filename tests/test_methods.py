"""Registry-wide checks: every registered method on every tiny backbone architecture and on a
backbone named by its timm name."""
import copy
import functools
import re

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

import peft_core
from peft_core.layers import InsertedModule, Wrapper
from peft_core.registry import Scalable, get_method

TINY_BACKBONES = [b for b in peft_core.backbone_names() if b.startswith("tiny_")]
# Besides the named ones: a backbone a user names by its timm name (random init here).
BACKBONES = TINY_BACKBONES + ["timm/vit_tiny_patch16_224.augreg_in21k"]

METHODS = sorted(peft_core.methods())
MERGEABLE = [m for m in METHODS if peft_core.methods()[m]["mergeable"]]
UNMERGEABLE = [m for m in METHODS if m not in MERGEABLE]


@functools.cache
def _base(backbone: str) -> VisionTransformer:
    torch.manual_seed(1)
    return peft_core.build_backbone(backbone, num_classes=5).eval()


def fresh(backbone: str) -> VisionTransformer:
    return copy.deepcopy(_base(backbone))


def images(model, n=3):
    return torch.randn(n, 3, *model.patch_embed.img_size, generator=torch.Generator().manual_seed(7))


def perturb_trainable(model, std=0.1):
    """Move every trained tensor away from its init so that merge has something to fold."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * std)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("method", METHODS)
def test_forward_backward_and_only_declared_params_get_grads(method, backbone):
    model = peft_core.apply(fresh(backbone), method).train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    out = model(images(model))
    assert out.shape == (3, 5) and torch.isfinite(out).all()
    if not trainable:  # zero_shot trains nothing
        assert method == "zero_shot" and not out.requires_grad
        return
    out.logsumexp(-1).sum().backward()
    got_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert got_grad == trainable
    head = {n for n in trainable if n.startswith("head.")}
    assert head == {"head.weight", "head.bias"}
    assert (peft_core.count_inserted(model) > 0) == (method not in ("linear", "zero_shot"))


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("method", METHODS)
def test_zero_init_methods_leave_the_output_unchanged(method, backbone):
    base = fresh(backbone)
    x = images(base)
    with torch.no_grad():
        before = base(x)
        after = peft_core.apply(copy.deepcopy(base), method).eval()(x)
    if get_method(method).identity_at_init:
        torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)
    else:  # random inits (ssf, random adapters, prompts) must move the output
        assert not torch.allclose(after, before, atol=1e-6)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("method", MERGEABLE)
def test_merge_folds_into_a_plain_vit_with_equal_outputs(method, backbone):
    stock_keys = set(fresh(backbone).state_dict())
    model = peft_core.apply(fresh(backbone), method)
    perturb_trainable(model)
    x = images(model)
    model.eval()
    with torch.no_grad():
        expected = model(x)
        merged = peft_core.merge(model)
        got = merged(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert peft_core.count_inserted(merged) == 0
    assert not any(isinstance(m, (InsertedModule, Wrapper)) for m in merged.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in merged.modules())
    assert set(merged.state_dict()) == stock_keys  # SSF's patch shift on CLIP: in pos_embed
    assert peft_core.config_of(merged) is None


@pytest.mark.parametrize("method", UNMERGEABLE)
def test_unmergeable_methods_say_why(method):
    model = peft_core.apply(fresh("tiny_vit_b16_in21k"), method)
    with pytest.raises(ValueError, match=f"method '{method}' cannot be merged: .+"):
        peft_core.merge(model)


def test_merged_lora_state_dict_loads_into_a_stock_model():
    model = peft_core.apply(fresh("tiny_vit_b16_in21k"), "lora", lora_bottleneck=4)
    perturb_trainable(model)
    merged = peft_core.merge(model.eval())
    stock = fresh("tiny_vit_b16_in21k")
    stock.load_state_dict(merged.state_dict(), strict=True)
    x = images(stock)
    with torch.no_grad():
        torch.testing.assert_close(stock(x), merged(x))


@pytest.mark.parametrize("method", ["lora", "adaptformer", "fact_tk", "convpass", "repadapter"])
def test_merge_factor_scales_inserted_modules(method):
    base = fresh("tiny_vit_b16_in21k")
    model = peft_core.apply(copy.deepcopy(base), method)
    perturb_trainable(model)
    model.eval()
    x = images(model)
    with torch.no_grad():
        tuned = model(x)
        peft_core.set_merge_factor(model, 0.0)
        off = model(x)
        base.head.load_state_dict(model.head.state_dict())
        torch.testing.assert_close(off, base(x), rtol=1e-5, atol=1e-6)
        peft_core.set_merge_factor(model, 1.0)
        torch.testing.assert_close(model(x), tuned)


def test_vqt_queries_do_not_change_what_the_other_tokens_compute():
    base = fresh("tiny_vit_b16_in21k")
    model = peft_core.apply(copy.deepcopy(base), "vqt", vqt_num=4).eval()
    x = images(base)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), base.forward_features(x))
        # With the combining weights at [1, 0, ..., 0] the head sees the plain CLS feature.
        model.vqt.weight.zero_()
        model.vqt.weight[0] = 1.0
        torch.testing.assert_close(model(x), base(x))


def test_vpt_shallow_study_mode_drops_prompts_after_block_0():
    base = fresh("tiny_vit_b16_in21k")
    x = images(base)
    study = peft_core.apply(copy.deepcopy(base), "vpt_shallow", vpt_num=3).eval()
    original = peft_core.apply(copy.deepcopy(base), "vpt_shallow", vpt_num=3, vpt_original=True).eval()
    original.blocks[0].vpt_prompts.load_state_dict(study.blocks[0].vpt_prompts.state_dict())
    seen = []
    study.blocks[1].register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
    original.blocks[1].register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
    with torch.no_grad():
        out_study, out_original = study(x), original(x)
    tokens = base.patch_embed.num_patches + base.num_prefix_tokens
    assert seen == [tokens, tokens + 3]
    assert out_study.shape == out_original.shape and not torch.allclose(out_study, out_original)


def test_selective_tuning_trains_exactly_the_listed_blocks():
    model = peft_core.apply(fresh("tiny_vit_b16_in21k"), "block_tune", block_index=[1])
    names = {n for n, p in model.named_parameters() if p.requires_grad and "head" not in n}
    assert names and all(n.startswith("blocks.1.") for n in names)
    model = peft_core.apply(fresh("tiny_vit_b16_in21k"), "attn_tune", attention_index=[0],
                            attention_type="proj")
    names = {n for n, p in model.named_parameters() if p.requires_grad and "head" not in n}
    assert names == {"blocks.0.attn.proj.weight", "blocks.0.attn.proj.bias"}


def test_deepcopied_model_keeps_its_own_hooks_and_shared_factors():
    # Ray workers and WiSE copy models: hooks and shared factors must follow the copy.
    for method in ("vpt_deep", "fact_tk", "vqt"):
        model = peft_core.apply(fresh("tiny_vit_b16_in21k"), method).eval()
        twin = copy.deepcopy(model)
        perturb_trainable(twin)
        x = images(model)
        with torch.no_grad():
            a = model(x)
            b = twin(x)
        assert not torch.allclose(a, b), method
        with torch.no_grad():
            torch.testing.assert_close(model(x), a)


SCALABLE = ["adaptformer", "convpass", "fact_tk", "fact_tt", "lora", "lora_p_adapter", "rand_h_adapter",
            "rand_p_adapter", "repadapter", "zero_adapter"]


def test_merge_factor_is_a_hyper_parameter_of_exactly_the_scalable_methods():
    table = peft_core.methods()
    assert [m for m in METHODS if "merge_factor" in table[m]["hyperparameters"]] == SCALABLE
    assert [m for m in METHODS if issubclass(get_method(m), Scalable)] == SCALABLE


@pytest.mark.parametrize("method", SCALABLE)
def test_apply_puts_the_merge_factor_on_every_inserted_module(method):
    base = fresh("tiny_vit_b16_in21k")
    model = peft_core.apply(copy.deepcopy(base), method, merge_factor=0.0)
    assert {m.merge_factor for m in model.modules() if isinstance(m, InsertedModule)} == {0.0}
    perturb_trainable(model)
    model.eval()
    x = images(model)
    with torch.no_grad():
        base.head.load_state_dict(model.head.state_dict())
        torch.testing.assert_close(model(x), base(x), rtol=1e-5, atol=1e-6)
        peft_core.set_merge_factor(model, 1.0)
        assert not torch.allclose(model(x), base(x), atol=1e-4)


def test_count_inserted_leaves_out_the_classifier_by_identity_not_by_name():
    model = peft_core.apply(fresh("tiny_vit_b16_in21k"), "linear")
    model.heads_gain = nn.Parameter(torch.ones(7))  # trainable, outside the classifier
    assert peft_core.count_inserted(model) == 7


def _vit_without_blocks() -> VisionTransformer:
    return VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=0, num_heads=2, num_classes=3)


@pytest.mark.parametrize("method", ["adaptformer", "convpass", "lora", "rand_h_adapter", "repadapter"])
def test_apply_refuses_a_method_that_found_nothing_to_train(method):
    with pytest.raises(ValueError, match=f"^method '{method}' trains nothing besides the head on this "
                                         f"model: its attach found nothing to adapt$"):
        peft_core.apply(_vit_without_blocks(), method)


def test_methods_that_train_nothing_on_purpose_still_apply():
    for method in ("linear", "zero_shot"):
        assert peft_core.count_inserted(peft_core.apply(_vit_without_blocks(), method)) == 0
    # SSF still finds the patch embedding and the final norm: a scale and a shift on each.
    assert peft_core.count_inserted(peft_core.apply(_vit_without_blocks(), "ssf")) == 4 * 32


@pytest.mark.parametrize("method, hp, error", [
    ("lora", {"lora_bottleneck": "8"}, "lora_bottleneck'='8' is invalid; allowed: int >= 1"),
    ("lora", {"lora_bottleneck": 8.5}, "lora_bottleneck'=8.5 is invalid"),
    ("lora", {"lora_bottleneck": True}, "lora_bottleneck'=True is invalid"),
    ("lora", {"lora_bottleneck": 0}, "lora_bottleneck'=0 is invalid; allowed: int >= 1"),
    ("attn_tune", {"attention_type": "qk"}, "allowed: one of qkv, proj, full"),
    ("attn_tune", {"attention_index": []}, "attention_index'=[] is invalid; allowed: list[int]"),
    ("attn_tune", {"attention_index": [True]}, "attention_index'=[True] is invalid"),
    ("convpass", {"convpass_xavier_init": 1}, "convpass_xavier_init'=1 is invalid; allowed: bool"),
])
def test_a_bad_hyper_parameter_is_one_error_naming_method_key_and_value(method, hp, error):
    with pytest.raises(ValueError, match=re.escape(f"method '{method}': hyper-parameter '") + ".*" + re.escape(error)):
        get_method(method).from_hp(**hp)


def test_hyper_parameters_take_the_forms_the_studys_files_write():
    assert get_method("lora").from_hp(lora_bottleneck=8.0).lora_bottleneck == 8  # YAML's 8.0
    assert get_method("attn_tune").from_hp(attention_index=(1, 2)).attention_index == [1, 2]  # a tuple
    assert get_method("attn_tune").from_hp(attention_index=5).attention_index == [5]  # one block
    assert get_method("adaptformer").from_hp(adapter_scaler=1).adapter_scaler == 1.0
