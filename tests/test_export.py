"""Exports are plain timm models: ``merged.safetensors`` loads with ``strict=True`` into the stock
timm model its metadata names and gives the trained model's logits (CLIP: with the text head of
``classifier.safetensors`` on the normalised embedding); an export's paths are relative to it."""
import json
import shutil

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

import peft_core
from peft_core.checkpoint import save_adapter
from peft_core.train import TrainConfig, build_model
from search.models.export import _merge, trained_model

MERGEABLE = [name for name, info in peft_core.methods().items() if info["mergeable"]]


def trained(config: TrainConfig, num_classes: int) -> torch.nn.Module:
    """The model a run builds, with every trained tensor moved off its init (as training does)."""
    torch.manual_seed(config.seed)
    model = build_model(config, num_classes)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return model.eval()


@pytest.mark.parametrize("backbone", ["tiny_vit_b16_in21k", "tiny_clip"])
@pytest.mark.parametrize("method", MERGEABLE)
def test_merged_export_loads_strictly_into_stock_timm_with_the_trained_logits(method, backbone, tmp_path):
    clip = backbone == "tiny_clip"
    if peft_core.registry.role_of(method) == "zero_shot" and not clip:
        pytest.skip("zero-shot needs a text head: CLIP only")
    if clip:
        (tmp_path / "names.txt").write_text("cat\ndog\nbird\nfish\n")
    config = TrainConfig(method=method, backbone=backbone, pretrained=False, seed=7,
                         class_names=str(tmp_path / "names.txt") if clip else None)
    model = trained(config, 4)
    adapter = save_adapter(model, tmp_path / "adapter.safetensors")
    assert _merge(config, adapter, tmp_path)

    with safe_open(str(tmp_path / "merged.safetensors"), "pt") as f:
        meta = f.metadata()
    stock = timm.create_model(meta["timm_model"], pretrained=False, **json.loads(meta["timm_kwargs"]))
    stock.load_state_dict(load_file(str(tmp_path / "merged.safetensors")), strict=True)
    assert type(stock) is type(peft_core.build_backbone(backbone, 4))  # the stock class, nothing added
    x = torch.randn(3, 3, stock.patch_embed.img_size[0], stock.patch_embed.img_size[1])
    with torch.no_grad():
        expected, got = model(x), stock.eval()(x)
        if clip:  # timm's CLIP tower ends in the projection; the text head reads its unit vectors
            head = load_file(str(tmp_path / "classifier.safetensors"))
            got = F.linear(F.normalize(got, dim=-1), head["weight"], head["bias"])
        else:
            assert not (tmp_path / "classifier.safetensors").exists()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_every_seeds_export_moved_with_its_data_still_runs(minivtab, tmp_path, capsys):
    """``--seed all`` exports each seed's final run; config.yaml names the data relative to the
    export, so the tree holding both can move and the export still trains and predicts."""
    import yaml

    from search.cli import main
    from tests.studies import run_study
    tree = tmp_path / "tree"
    shutil.copytree(minivtab / "digits", tree / "data" / "digits")
    run_study({
        "name": "seeds", "backbone": "tiny_vit_b16_in21k", "data_root": "data",
        "datasets": ["digits"], "methods": ["linear"], "final": {"seeds": [3, 5]},
        "train": {"epoch": 1, "warmup_epoch": 0, "pretrained": False},
        "spaces": {"linear": {"lr": {"grid": [0.01]}}},
        "search": {"sampler": "grid", "num_samples": "grid", "max_concurrent": 1}}, tree, out="study")
    assert main(["export", str(tree / "study"), "--out", str(tree / "exported"), "--seed", "all"]) == 0
    folders = sorted(p.name for p in (tree / "exported").iterdir())
    assert folders == ["digits__linear__seed3", "digits__linear__seed5"]
    seeds = [json.loads((tree / "exported" / f / "metrics.json").read_text())["seed"] for f in folders]
    assert seeds == [3, 5]
    assert main(["export", str(tree / "study"), "--out", str(tmp_path / "one"), "--seed", "5"]) == 0
    assert json.loads((tmp_path / "one" / "digits__linear" / "metrics.json").read_text())["seed"] == 5
    assert main(["export", str(tree / "study"), "--out", str(tmp_path / "none"), "--seed", "4"]) == 2
    assert "no finished final run with seed 4; its final runs have seeds 3, 5" in capsys.readouterr().err

    moved = tmp_path / "moved" / "tree"
    shutil.copytree(tree, moved)
    shutil.rmtree(tree)  # nothing may point back at the original
    export = moved / "exported" / "digits__linear__seed5"
    assert yaml.safe_load((export / "config.yaml").read_text())["data_path"] == "../../data"
    capsys.readouterr()
    assert main(["train", "--config", str(export / "config.yaml")]) == 0
    rerun = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    exported = json.loads((export / "metrics.json").read_text())
    assert rerun["test_top1"] == pytest.approx(exported["test_top1"], abs=1e-9)
    image = next((moved / "data" / "digits").glob("images/*"))
    assert main(["predict", str(export), str(image)]) == 0
    assert capsys.readouterr().out.count("%") == 5
