"""Any timm ViT by its name (``timm/<model>``): its normalisation from timm's pretrained config,
its weights from a local file or the local Hugging Face cache (offline); every method attaches
to it or refuses in one line."""
import copy
import functools

import pytest
import timm
import torch
from safetensors.torch import save_file

import peft_core
from peft_core.backbones import get_backbone
from peft_core.train import TrainConfig, weights_file

TINY = "timm/vit_tiny_patch16_224.augreg_in21k"
# no class token, a register token, pooled with fc_norm, MLPs 5x wide
POOLED = "timm/vit_wee_patch16_reg1_gap_256.sbb_in1k"
# blocks that are not timm's Block (attention and MLP side by side, differential attention)
PARALLEL = "timm/vit_dpwee_patch16_reg1_gap_256.sbb_in1k"


def test_a_timm_name_is_that_timm_model_with_its_pretrained_config():
    spec = get_backbone("timm/vit_small_patch16_224.augreg_in21k")
    assert (spec.mean, spec.std, spec.img_size) == ((0.5,) * 3, (0.5,) * 3, 224)  # augreg: 0.5, not ImageNet's
    assert spec.hf_hub_id == "timm/vit_small_patch16_224.augreg_in21k"
    model = peft_core.build_backbone("timm/vit_small_patch16_224.augreg_in21k", num_classes=7)
    assert type(model) is timm.models.vision_transformer.VisionTransformer
    assert (model.embed_dim, len(model.blocks), model.head.out_features) == (384, 12, 7)
    assert get_backbone(POOLED).img_size == 256
    assert TrainConfig(backbone=TINY, pretrained=False).backbone == TINY
    mae = get_backbone("vit_base_mae")  # the study's MAE backbone: ViT-B/16, ImageNet statistics
    assert mae.timm_name.startswith("vit_base_patch16_224") and mae.mean == (0.485, 0.456, 0.406)


@pytest.mark.parametrize("name, message", [
    ("timm/vit_nonexistent_patch16", "timm has no model 'vit_nonexistent_patch16'"),
    ("timm/resnet18", "timm's 'resnet18' is a ResNet, not a VisionTransformer"),
    ("timm/vit_tiny_patch16_224.no_such_tag", "Invalid pretrained tag"),
])
def test_a_timm_name_that_is_not_a_timm_vit_is_one_line(name, message):
    with pytest.raises(ValueError, match=message) as err:
        TrainConfig(backbone=name)
    assert "\n" not in str(err.value) and name in str(err.value)


def test_weights_come_from_the_local_hugging_face_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="not in the local Hugging Face cache; set checkpoint: PATH"):
        weights_file(TINY, None, pretrained=True)
    # the cache's layout, as `huggingface-cli download` leaves it
    repo = tmp_path / "models--timm--vit_tiny_patch16_224.augreg_in21k"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    torch.manual_seed(3)
    pretrained = timm.create_model("vit_tiny_patch16_224", num_classes=21843).state_dict()
    save_file({k: v.contiguous() for k, v in pretrained.items()}, str(snapshot / "model.safetensors"))

    found = weights_file(TINY, None, pretrained=True)
    assert found == snapshot / "model.safetensors"
    model = peft_core.build_backbone(TINY, num_classes=4, checkpoint=found)
    for key, value in model.state_dict().items():
        if not key.startswith("head."):  # the head is fresh: 4 classes, not 21,843
            torch.testing.assert_close(value, pretrained[key], rtol=0, atol=0)


@functools.cache
def _base(name: str):
    torch.manual_seed(0)
    return peft_core.build_backbone(name, num_classes=3).eval()


@pytest.mark.parametrize("backbone", [POOLED, PARALLEL])
@pytest.mark.parametrize("method", sorted(peft_core.methods()))
def test_every_method_attaches_to_an_unusual_vit_or_refuses_in_one_line(method, backbone):
    base = _base(backbone)
    x = torch.randn(2, 3, *base.patch_embed.img_size)
    try:
        model = peft_core.apply(copy.deepcopy(base), method).train()
    except ValueError as err:
        assert str(err).startswith(f"method '{method}' ") and "\n" not in str(err)
        return
    out = model(x)
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_what_a_pooled_vit_without_class_token_supports():
    """SSF's last scale/shift follows fc_norm there; prompts go after its register token;
    FacT, whose cores assume MLPs 4x wide, refuses this model's 5x MLPs."""
    base = _base(POOLED)
    assert base.cls_token is None and base.num_prefix_tokens == 1
    ssf = peft_core.apply(copy.deepcopy(base), "ssf")
    assert hasattr(ssf.fc_norm, "delta") and isinstance(ssf.norm, torch.nn.Identity)
    x = torch.randn(2, 3, *base.patch_embed.img_size)
    with torch.no_grad():
        for p in ssf.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
        before = ssf.eval()(x)
        torch.testing.assert_close(peft_core.merge(ssf)(x), before, rtol=1e-4, atol=1e-5)
    peft_core.apply(copy.deepcopy(base), "vpt_deep")(x)
    with pytest.raises(ValueError, match="method 'fact_tk' needs MLPs 4x the width \\(1024\\); this model's are 1280"):
        peft_core.apply(copy.deepcopy(base), "fact_tk")
    with pytest.raises(ValueError, match="method 'lora' cannot attach to this model \\(blocks: DiffParallelScalingBlock\\)"):
        peft_core.apply(copy.deepcopy(_base(PARALLEL)), "lora")
