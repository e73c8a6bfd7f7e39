"""The three study architectures by name, and weights from local files only."""
import pytest
import torch
from safetensors.torch import save_file
from timm.layers import LayerScale, QuickGELU

import peft_core


def meta(name):
    with torch.device("meta"):
        return peft_core.build_backbone(name, num_classes=10)


@pytest.mark.parametrize("name", ["vit_b16_in21k", "tiny_vit_b16_in21k"])
def test_in21k_vit_structure(name):
    m = meta(name)
    assert m.patch_embed.proj.bias is not None and isinstance(m.norm_pre, torch.nn.Identity)
    assert not isinstance(m.blocks[0].ls1, LayerScale)


@pytest.mark.parametrize("name", ["dinov2_vitb14", "tiny_dinov2"])
def test_dinov2_has_layerscale(name):
    m = meta(name)
    assert isinstance(m.blocks[0].ls1, LayerScale) and isinstance(m.blocks[0].ls2, LayerScale)


@pytest.mark.parametrize("name", ["clip_vitb16", "tiny_clip"])
def test_clip_tower_is_prenorm_without_patch_bias_with_quickgelu(name):
    m = meta(name)
    assert isinstance(m.norm_pre, torch.nn.LayerNorm)
    assert m.patch_embed.proj.bias is None
    assert isinstance(m.blocks[0].mlp.act, QuickGELU)


def test_full_size_shapes():
    assert meta("vit_b16_in21k").patch_embed.img_size == (224, 224)
    assert meta("dinov2_vitb14").patch_embed.grid_size == (16, 16)
    assert meta("clip_vitb16").embed_dim == 768


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_checkpoint_loads_through_timm(tmp_path, suffix):
    source = peft_core.build_backbone("tiny_clip", num_classes=7)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("head")}
    path = tmp_path / f"tiny{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    loaded = peft_core.build_backbone("tiny_clip", num_classes=3, checkpoint=path)
    for key, value in state.items():
        torch.testing.assert_close(loaded.state_dict()[key], value, msg=key)
    assert loaded.head.out_features == 3


def test_missing_or_mismatched_checkpoint_is_one_line(tmp_path):
    with pytest.raises(ValueError, match="checkpoint file not found: .*nope.safetensors"):
        peft_core.build_backbone("tiny_clip", 3, checkpoint=tmp_path / "nope.safetensors")
    other = peft_core.build_backbone("tiny_vit_b16_in21k", 3)
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(ValueError) as info:
        peft_core.build_backbone("tiny_clip", 3, checkpoint=path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_torch_checkpoint_is_checked_against_the_backbone_without_reading_its_tensors(tmp_path):
    from peft_core.backbones import check_checkpoint
    model = peft_core.build_backbone("tiny_vit_b16_in21k", 3)
    torch.save({"model": model.state_dict()}, tmp_path / "wrapped.pth")  # mapped, then unwrapped
    torch.save(model.state_dict(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    for name in ("wrapped.pth", "legacy.pt"):
        check_checkpoint("tiny_vit_b16_in21k", tmp_path / name)
    with pytest.raises(ValueError, match="wrapped.pth does not fit backbone 'tiny_clip'"):
        check_checkpoint("tiny_clip", tmp_path / "wrapped.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "wrapped.pth").read_bytes()[:4096])
    with pytest.raises(ValueError, match="cut.pth does not fit .*not a readable torch.save file"):
        check_checkpoint("tiny_vit_b16_in21k", tmp_path / "cut.pth")
