"""Bad input: one-line ValueErrors naming the offending name and the allowed values."""
import pytest
import torch
from torch import nn

import peft_core


@pytest.fixture
def vit():
    return peft_core.build_backbone("tiny_vit_b16_in21k", num_classes=3)


def one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_method_lists_the_allowed_ones(vit):
    msg = one_line_error(peft_core.apply, vit, "loraa")
    assert "'loraa'" in msg and "lora" in msg and "vpt_deep" in msg and "allowed" in msg


def test_unknown_hyperparameter_names_it_and_the_allowed_keys(vit):
    msg = one_line_error(peft_core.apply, vit, "lora", lora_rank=4)
    assert "'lora_rank'" in msg and "lora_bottleneck" in msg and "merge_factor" in msg


@pytest.mark.parametrize("method,hp,allowed", [
    ("lora", {"lora_bottleneck": 0}, "int >= 1"),
    ("lora", {"lora_bottleneck": 2.5}, "int >= 1"),
    ("lora", {"lora_bottleneck": "8"}, "int >= 1"),
    ("adaptformer", {"adapter_scaler": -1.0}, "float >= 0.0"),
    ("convpass", {"convpass_xavier_init": "yes"}, "bool"),
    ("attn_tune", {"attention_type": "kv"}, "one of qkv, proj, full"),
    ("vpt_deep", {"vpt_num": 0}, "int >= 1"),
    ("block_tune", {"block_index": []}, "list"),
])
def test_out_of_range_values_name_key_value_and_allowed(vit, method, hp, allowed):
    msg = one_line_error(peft_core.apply, vit, method, **hp)
    key, value = next(iter(hp.items()))
    assert f"'{key}'={value!r}" in msg and allowed in msg and method in msg


def test_block_index_out_of_range(vit):
    msg = one_line_error(peft_core.apply, vit, "block_tune", block_index=[7])
    assert "block_index" in msg and "7" in msg and "[0, 1]" in msg


def test_repadapter_groups_must_divide_the_rank(vit):
    msg = one_line_error(peft_core.apply, vit, "repadapter", repadapter_bottleneck=3)
    assert "repadapter_group=2" in msg and "repadapter_bottleneck=3" in msg


def test_not_a_vit():
    msg = one_line_error(peft_core.apply, nn.Sequential(nn.Linear(2, 2)), "lora")
    assert "VisionTransformer" in msg and "Sequential" in msg


def test_applying_twice_is_refused(vit):
    peft_core.apply(vit, "lora")
    msg = one_line_error(peft_core.apply, vit, "ssf")
    assert "'lora'" in msg and "'ssf'" in msg


def test_merge_of_a_plain_model(vit):
    assert "no PEFT method" in one_line_error(peft_core.merge, vit)


def test_aliases_resolve_to_the_study_keys(vit):
    peft_core.apply(vit, "lora", rank=4)
    assert peft_core.config_of(vit).lora_bottleneck == 4
    assert vit.blocks[0].attn.qkv.delta.down.out_features == 4


def test_unknown_backbone():
    msg = one_line_error(peft_core.build_backbone, "resnet50", 10)
    assert "'resnet50'" in msg and "vit_b16_in21k" in msg


def test_state_is_not_shared_between_models():
    # A reused Ray worker builds many models: nothing may leak from one apply into the next.
    a = peft_core.apply(peft_core.build_backbone("tiny_vit_b16_in21k", 3), "bitfit")
    b = peft_core.apply(peft_core.build_backbone("tiny_vit_b16_in21k", 3), "ln")
    assert peft_core.count_inserted(a) != peft_core.count_inserted(b)
    assert all(n.endswith("bias") for n, p in a.named_parameters() if p.requires_grad and "head" not in n)
    assert torch.is_grad_enabled()
