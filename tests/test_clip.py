"""CLIP domain shift (SPEC 4.3, 4.4): the text-built head, ImageNet few-shot and OOD sets, the
validation-selected checkpoint, and WiSE. A tiny random open_clip model stands in for ViT-B/16
through the same code path; images are tiny synthetic folders."""
import copy
import functools
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import peft_core
import peft_core.clip as clip
from peft_core.checkpoint import load_adapter
from peft_core.data.imagenet import (class_mask, domain_set, imagenet_synsets, subset_indices,
                                     write_fewshot_lists)
from peft_core.data.loaders import DataSpec, build_datasets
from peft_core.evaluation import evaluate, evaluate_domains, save_predictions
from peft_core.train import TrainConfig, build_model, train, transforms_for
from peft_core.wise import WiSE

NAMES = ["dog", "cat", "tree", "car", "boat"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}.", "a {} in the wild."]
TIMM_INFO = Path(timm.__file__).parent / "data" / "_info"
# In ImageNet-R and -A both: every domain-shift folder below can hold them.
SHARED_CLASSES = [6, 11, 13, 22]
NO_WISE = {"ssf", "vpt_shallow", "vpt_deep", "vqt"}  # inserted modules without a merge_factor


@pytest.fixture(autouse=True)
def _head_cache(tmp_path_factory, monkeypatch):
    """One text-head cache for the module, never the user's."""
    cache = tmp_path_factory.getbasetemp() / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache / "peft-search" / "clip-heads"


@functools.cache
def _text_head_model():
    torch.manual_seed(3)
    return clip.build_clip_classifier("tiny_clip", NAMES, TEMPLATES).eval()


def text_head_model():
    return copy.deepcopy(_text_head_model())


def images(n=4, seed=7):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def write_images(folder: Path, count: int, seed: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = [folder / f"{i}.png" for i in range(count)]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    return paths


# --- the text-built head -------------------------------------------------------------------

def test_clip_text_head_equals_open_clips_image_text_similarity(tmp_path):
    torch.manual_seed(0)
    reference, tokenizer = clip.load_open_clip("tiny_clip")
    torch.save(reference.state_dict(), tmp_path / "open_clip.pt")  # "pretrained" weights, local
    torch.manual_seed(1)  # other random weights: everything must come from the file
    model = clip.build_clip_classifier("tiny_clip", NAMES, TEMPLATES, tmp_path / "open_clip.pt").eval()
    x = images()
    with torch.no_grad():
        image = reference.encode_image(x, normalize=True)
        text = torch.stack([reference.encode_text(tokenizer([t.format(n) for t in TEMPLATES]),
                                                  normalize=True).mean(0) for n in NAMES])
        text = text / text.norm(dim=-1, keepdim=True)
        expected = image @ text.T * reference.logit_scale.exp()
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    assert torch.count_nonzero(model.head[1].bias) == 0 and model.num_classes == len(NAMES)
    # A stock timm tower whose head is (projection, text head), as the study's: the text tower is gone.
    stock = peft_core.build_backbone("tiny_clip", num_classes=len(NAMES))
    assert set(model.state_dict()) == set(stock.state_dict()) - {"head.weight", "head.bias"} | {
        "head.0.weight", "head.1.weight", "head.1.bias"}
    torch.save({"visual.conv1.weight": torch.zeros(1)}, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match=f"checkpoint {tmp_path / 'broken.pt'} does not fit open_clip "
                                         f"model 'peft-tiny-clip'"):
        clip.build_clip_classifier("tiny_clip", NAMES, TEMPLATES, tmp_path / "broken.pt")


def test_clip_vitb16_tower_keeps_the_spec_counts_with_its_text_head():
    """The real architecture (random weights): open_clip ViT-B-16 -> timm's CLIP ViT-B/16."""
    model = clip.build_clip_classifier("clip_vitb16", NAMES[:2], TEMPLATES[:1])
    assert model.head[0].weight.shape == (512, 768) and model.head[1].weight.shape == (2, 512)
    assert peft_core.count_inserted(peft_core.apply(copy.deepcopy(model), "ln")) == 39_936
    assert peft_core.count_inserted(peft_core.apply(model, "full")) == 85_799_424  # the head: projection too


def test_clip_text_head_is_cached_by_text_tower_names_and_templates(tmp_path, monkeypatch):
    torch.manual_seed(0)
    first = clip.build_clip_classifier("tiny_clip", NAMES, TEMPLATES, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("peft-tiny-clip-*.safetensors"))) == 1

    def no_text_tower(*args, **kwargs):
        raise AssertionError("the cached head should have been used")

    monkeypatch.setattr(clip, "text_head_weights", no_text_tower)
    torch.manual_seed(0)
    again = clip.build_clip_classifier("tiny_clip", NAMES, TEMPLATES, cache_dir=tmp_path)
    torch.testing.assert_close(again.head[1].weight, first.head[1].weight, rtol=0, atol=0)
    monkeypatch.undo()
    torch.manual_seed(0)
    clip.build_clip_classifier("tiny_clip", NAMES[:3], TEMPLATES, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("peft-tiny-clip-*.safetensors"))) == 2


def test_clip_shipped_class_names_templates_and_errors(tmp_path):
    names = clip.read_class_names("imagenet")
    assert len(names) == 1000 and names[0] == "tench" and len(imagenet_synsets()) == 1000
    assert len(clip.read_templates("openai")) == 80
    (tmp_path / "names.txt").write_text("red fox\n\nkit fox\n")
    assert clip.read_class_names(tmp_path / "names.txt") == ["red fox", "kit fox"]
    with pytest.raises(ValueError, match="exactly one '{}'"):
        clip.read_templates(["a photo"])
    with pytest.raises(ValueError, match="has no CLIP text tower.*tiny_clip"):
        clip.build_clip_classifier("tiny_vit_b16_in21k", NAMES)
    with pytest.raises(ValueError, match="class names file not found"):
        clip.read_class_names(tmp_path / "nope.txt")


@pytest.mark.parametrize("method", sorted(peft_core.methods()))
def test_clip_projection_trains_with_the_text_head_as_in_the_study(method):
    """The study's head is (projection, text head) and it trains every parameter named "head":
    the projection trains in every method that trains the head, and counts leave it out."""
    model = peft_core.apply(text_head_model(), method).train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert ({"head.0.weight", "head.1.weight", "head.1.bias"} <= trainable) == (method != "zero_shot")
    out = model(images())
    assert out.shape == (4, len(NAMES)) and torch.isfinite(out).all()
    # Inserted-parameter counts are those of the plain CLIP tower (SPEC 3).
    plain = peft_core.apply(peft_core.build_backbone("tiny_clip", len(NAMES)), method)
    assert peft_core.count_inserted(model) == peft_core.count_inserted(plain)


# --- ImageNet few-shot lists and the domain-shift sets -------------------------------------

def test_ood_r_and_a_masks_are_exactly_timms_200_classes():
    synsets = imagenet_synsets()
    for name in ("imagenet_r", "imagenet_a"):
        mask = class_mask(name)
        listed = [int(i) for i in (TIMM_INFO / f"{name}_indices.txt").read_text().split()]
        assert mask.shape == (1000,) and mask.sum() == 200
        assert torch.nonzero(mask).flatten().tolist() == sorted(listed) == subset_indices(name)
        wnids = (TIMM_INFO / f"{name}_synsets.txt").read_text().split()
        assert [synsets[i] for i in listed] == wnids
        logits = torch.randn(64, 1000, generator=torch.Generator().manual_seed(1))
        labels = torch.tensor(listed[:64])
        result = evaluate(lambda x: x, [(logits, labels)], mask, device="cpu", keep_outputs=True)
        assert mask[result["logits"].argmax(-1)].all() and not mask[logits.argmax(-1)].all()
        assert result["n"] == 64 and np.isfinite(result["loss"])
    for name in ("imagenet", "imagenet_v2", "imagenet_sketch"):
        assert class_mask(name) is None


def domain_folders(root: Path) -> dict[str, Path]:
    """Tiny ImageNet val / V2 / Sketch / R / A folders of the shared classes, 2 images each."""
    synsets = imagenet_synsets()
    roots = {name: root / name for name in ("imagenet", "imagenet_v2", "imagenet_sketch",
                                            "imagenet_r", "imagenet_a")}
    for seed, (name, folder) in enumerate(roots.items()):
        for index in SHARED_CLASSES:
            sub = str(index) if name == "imagenet_v2" else synsets[index]
            write_images(folder / sub, 2, seed * 100 + index)
    return roots


def test_ood_folder_layouts_are_labelled_in_imagenet_1k_space(tmp_path):
    roots = domain_folders(tmp_path)
    for name, folder in roots.items():
        dataset, mask = domain_set(name, folder)
        assert sorted(set(dataset.targets)) == SHARED_CLASSES, name
        assert (mask is None) == (name not in ("imagenet_r", "imagenet_a"))
    # ImageNet-V2 folders are class indices, not sorted strings: "10" is class 10.
    write_images(roots["imagenet_v2"] / "100", 1, 0)
    assert 100 in domain_set("imagenet_v2", roots["imagenet_v2"])[0].targets
    outside = imagenet_synsets()[0]  # tench: not among ImageNet-R's 200 classes
    write_images(roots["imagenet_r"] / outside, 1, 0)
    with pytest.raises(ValueError, match=f"{outside}: folder name is not a class of this set"):
        domain_set("imagenet_r", roots["imagenet_r"])
    with pytest.raises(ValueError, match="imagenet_sketch folder not found"):
        domain_set("imagenet_sketch", tmp_path / "nowhere")


def write_imagenet_folders(root: Path, train_per_class: int) -> None:
    """Tiny ImageNet train and val folders (WordNet-id sub-folders) of the shared classes."""
    synsets = imagenet_synsets()
    for index in SHARED_CLASSES:
        write_images(root / "train" / synsets[index], train_per_class, index)
        write_images(root / "val" / synsets[index], 2, 50 + index)


def test_ood_fewshot_lists_are_seeded_and_disjoint_per_class(tmp_path):
    write_imagenet_folders(tmp_path, 7)
    out = write_fewshot_lists(tmp_path / "train", tmp_path / "val", tmp_path / "lists", shots=4,
                              val_per_class=2, seed=1)
    lines = {name: (out / f"{name}.txt").read_text().splitlines() for name in ("train", "val", "test")}
    labels = {name: [int(line.rsplit(" ", 1)[1]) for line in rows] for name, rows in lines.items()}
    assert sorted(labels["train"]) == sorted(SHARED_CLASSES * 4)
    assert sorted(labels["val"]) == sorted(SHARED_CLASSES * 2) == sorted(labels["test"])
    assert not set(lines["train"]) & set(lines["val"])
    again = write_fewshot_lists(tmp_path / "train", tmp_path / "val", tmp_path / "again", shots=4,
                                val_per_class=2, seed=1)
    assert (again / "train.txt").read_text() == (out / "train.txt").read_text()  # same relative paths
    write_fewshot_lists(tmp_path / "train", tmp_path / "val", tmp_path / "other", shots=4,
                        val_per_class=2, seed=2)
    assert (tmp_path / "other" / "train.txt").read_text() != (out / "train.txt").read_text()
    train_set, val_set, num_classes = build_datasets(DataSpec("imagenet", out, "lists"), "tune", None)
    assert len(train_set) == 16 and len(val_set) == 8 and num_classes == max(SHARED_CLASSES) + 1
    with pytest.raises(ValueError, match="7 images, need 6 \\+ 2"):
        write_fewshot_lists(tmp_path / "train", tmp_path / "val", tmp_path / "x", shots=6, val_per_class=2)


def test_ood_randaugment_recipe_trains_a_clip_run_on_fewshot_lists(tmp_path):
    write_imagenet_folders(tmp_path, 6)
    lists = write_fewshot_lists(tmp_path / "train", tmp_path / "val", tmp_path / "lists", shots=4,
                                val_per_class=2)
    (tmp_path / "one_template.txt").write_text("a photo of a {}.\n")
    config = TrainConfig(method="lora", backbone="tiny_clip", pretrained=False, class_names="imagenet",
                         templates=str(tmp_path / "one_template.txt"), data="fs-imagenet",
                         data_path=str(lists), data_format="lists", transform="randaugment",
                         normalize=True, phase="final", final_acc_hp=False, epoch=2, warmup_epoch=1,
                         batch_size=8, eval_freq=1, early_patience=10)
    train_tf, eval_tf = transforms_for(config)
    image = Image.open(next((tmp_path / "train").rglob("*.png")))
    assert train_tf(image).shape == eval_tf(image).shape == (3, 32, 32)
    assert not torch.equal(train_tf(image), train_tf(image))  # augmented afresh every time
    torch.testing.assert_close(eval_tf(image), eval_tf(image))
    result = train(config)
    assert [h["epoch"] for h in result.history] == [1, 2] and "test_top1" in result.metrics
    assert result.model.num_classes == 1000 and result.selected_epoch in (1, 2)


# --- zero-shot and validation-selected runs ------------------------------------------------

def write_run_data(root: Path, model, transform, shift: int) -> list[int]:
    """16 images listed in train/val/test; val and test labelled with ``model``'s predictions,
    train with those plus ``shift`` (0: the same labels)."""
    paths = write_images(root / "img", 16, 0)
    x = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        predicted = model.eval()(x).argmax(-1).tolist()
    rel = [p.relative_to(root) for p in paths]
    num_classes = model.num_classes
    for name, labels in (("val", predicted), ("test", predicted),
                         ("train", [(c + shift) % num_classes for c in predicted])):
        (root / f"{name}.txt").write_text("".join(f"{p} {c}\n" for p, c in zip(rel, labels)))
    return predicted


def test_clip_zero_shot_run_evaluates_val_and_test_without_training(tmp_path):
    (tmp_path / "names.txt").write_text("\n".join(NAMES) + "\n")
    (tmp_path / "templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    config = TrainConfig(method="zero_shot", backbone="tiny_clip", pretrained=False,
                         class_names=str(tmp_path / "names.txt"), templates=str(tmp_path / "templates.txt"),
                         data="toy", data_path=str(tmp_path), data_format="lists", phase="final",
                         final_acc_hp=False, epoch=3, warmup_epoch=0, seed=5)
    torch.manual_seed(config.seed)
    zero_shot = build_model(config, len(NAMES))
    write_run_data(tmp_path, zero_shot, transforms_for(config)[1], shift=0)
    reports = []
    result = train(config, report=lambda metrics, folder: reports.append((metrics, folder)))
    assert result.inserted_params == 0 and result.metrics["epoch"] == 0 and len(reports) == 1
    assert result.metrics["val_top1"] == result.metrics["test_top1"] == 100.0
    for (a, b) in zip(result.model.state_dict().values(), zero_shot.state_dict().values()):
        assert torch.equal(a, b)


def peaked_run(root: Path) -> TrainConfig:
    """A final run selecting on val whose val top-1 peaks at epoch 1 of 4: val labels are the
    untrained model's predictions (epochs 1 and 2 train at the warm-up lr, ~0, as in the study's
    schedule; the tie at epoch 2 is no new best), train labels differ."""
    (root / "one_template.txt").write_text("a photo of a {}.\n")
    config = TrainConfig(method="lora", backbone="tiny_clip", pretrained=False, class_names="imagenet",
                         templates=str(root / "one_template.txt"), data="toy",
                         data_path=str(root / "data"), data_format="lists", phase="final",
                         final_acc_hp=False, epoch=4, warmup_epoch=1, lr=0.05, batch_size=8,
                         eval_freq=1, drop_path_rate=0.0, seed=0)
    torch.manual_seed(config.seed)  # train() builds the same model after seeding
    write_run_data(root / "data", build_model(config, 1000), transforms_for(config)[1], shift=1)
    return config


def test_ood_evaluation_of_a_run_uses_the_checkpoint_selected_on_val(tmp_path):
    config = peaked_run(tmp_path)
    kept = {}

    def report(metrics, folder):
        kept[metrics["epoch"]] = shutil.copytree(folder, tmp_path / f"epoch{metrics['epoch']}")

    result = train(config, report=report)
    val = [h["val_top1"] for h in result.history]
    assert val[0] == val[1] == 100.0 and max(val[2:]) < 100.0, val
    assert result.selected_epoch == result.metrics["selected_epoch"] == 1 < config.epoch
    assert [("test_top1" in h) for h in result.history] == [False, False, False, True]
    assert result.metrics["test_top1"] == 100.0  # epoch 1's weights, not epoch 4's

    def run_model(folder):
        torch.manual_seed(config.seed)  # the random "pretrained" backbone of the run
        model = build_model(config, 1000)
        load_adapter(model, folder)
        return model

    selected, last, epoch3 = run_model(kept[1]), run_model(kept[4]), run_model(kept[3])
    for a, b in zip(result.model.state_dict().values(), selected.state_dict().values()):
        assert torch.equal(a, b)
    roots = domain_folders(tmp_path / "ood")
    eval_tf = transforms_for(config)[1]
    scores = {name: evaluate_domains(model, roots, eval_tf, batch_size=8, keep_outputs=True)
              for name, model in (("selected", selected), ("last", last))}
    for name in roots:
        assert torch.equal(scores["last"][name]["logits"], scores["selected"][name]["logits"])
        assert scores["last"][name]["n"] == 2 * len(SHARED_CLASSES)
    later = evaluate_domains(epoch3, {"imagenet": roots["imagenet"]}, eval_tf, keep_outputs=True)
    assert not torch.equal(later["imagenet"]["logits"], scores["selected"]["imagenet"]["logits"])
    saved = np.load(save_predictions(tmp_path / "pred.npz", scores["last"]["imagenet_r"]))
    assert saved["logits"].shape == (8, 1000) and saved["labels"].tolist() == sorted(SHARED_CLASSES * 2)


# --- WiSE --------------------------------------------------------------------------------

def perturb_trainable(model, std=0.1):
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * std)


@pytest.mark.parametrize("method", sorted(peft_core.methods()))
def test_wise_gives_zero_shot_at_0_and_fine_tuned_at_1(method):
    zero_shot = text_head_model()
    x = images()
    model = peft_core.apply(text_head_model(), method).eval()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    perturb_trainable(model)
    if method in NO_WISE:
        with pytest.raises(ValueError, match=f"method '{method}' has no WiSE"):
            WiSE(model, start)
        return
    with torch.no_grad():
        expected_0, expected_1 = zero_shot(x), model(x)
        wise = WiSE(model, start)
        at_0, at_half, at_1 = (wise.at(alpha)(x) for alpha in (0.0, 0.5, 1.0))
    torch.testing.assert_close(at_0, expected_0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(at_1, expected_1, rtol=0, atol=0)
    if method != "zero_shot":  # it trains nothing: every alpha is the same model
        assert not torch.allclose(at_half, at_0, atol=1e-4) and not torch.allclose(at_half, at_1, atol=1e-4)


def test_wise_interpolates_weights_or_scales_inserted_modules_by_method_kind():
    for method, interpolates_all in (("full", True), ("bitfit", True), ("difffit", True), ("lora", False)):
        model = peft_core.apply(text_head_model(), method)
        wise = WiSE(model, model.state_dict())
        assert (wise.interpolated == set(model.state_dict())) == interpolates_all, method
        assert interpolates_all or wise.interpolated == {"head.0.weight", "head.1.weight", "head.1.bias"}  # projection too
    model = peft_core.apply(text_head_model(), "lora", lora_bottleneck=2)
    with pytest.raises(ValueError, match="zero-shot state does not match"):
        WiSE(model, text_head_model().state_dict())
    with pytest.raises(ValueError, match="alpha=1.5 is invalid"):
        WiSE(model, model.state_dict()).at(1.5)


def test_ood_selecting_run_resumes_exactly_and_stops_on_patience(tmp_path):
    config = peaked_run(tmp_path)
    saved = tmp_path / "epoch2"

    def keep_epoch_2(metrics, folder):
        if metrics["epoch"] == 2:  # best (epoch 1) and current weights differ here
            shutil.copytree(folder, saved)

    full_run = train(config, report=keep_epoch_2)
    resumed = train(config, resume_from=saved)
    assert resumed.history == full_run.history and resumed.selected_epoch == full_run.selected_epoch == 1
    for (name, a), b in zip(full_run.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    # epoch 2 ties (patience counts only strictly worse results), epoch 3 is worse: stop there
    stopped = train(TrainConfig(**{**config.to_dict(), "early_patience": 1}))
    assert stopped.status == "early_stopped" and [h["epoch"] for h in stopped.history] == [1, 2, 3]
    assert stopped.metrics["selected_epoch"] == 1 and stopped.metrics["test_top1"] == 100.0
