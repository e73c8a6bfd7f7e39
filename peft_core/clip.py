"""CLIP's image tower with a classifier built from class-name text embeddings (SPEC 4.3).

The open_clip model's image tower is converted to timm's ``VisionTransformer`` layout by timm's
own converter, which puts CLIP's image projection in ``head``. As in the study, ``head`` becomes
``Sequential(projection, TextHead)``: the text head L2-normalises the image embedding, then a
Linear whose rows are the class names' text embeddings (prompt templates filled in, encoded, each
normalised, averaged, renormalised) times exp(logit_scale), bias zero. Both are the classifier:
every method that trains the head trains the projection too (the study trains every parameter
named "head"), and inserted-parameter counts leave both out. The text tower only builds that
head, which is cached as safetensors keyed by the text tower's weights, the class names and the
templates; then it is dropped.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .backbones import BACKBONES, build_backbone, get_backbone, load_state
from .data.imagenet import INFO

OPEN_CLIP_CONFIGS = Path(__file__).parent / "clip_configs"  # models open_clip lacks (tiny_clip's)
CLASS_NAME_SETS = {"imagenet": INFO / "imagenet_classnames.txt"}  # OpenAI's ImageNet-1K names
TEMPLATE_SETS = {"openai": INFO / "openai_imagenet_templates.txt"}  # CLIP paper's 80 prompts


class TextHead(nn.Linear):
    """The study's text-built classifier: the image embedding L2-normalised, then Linear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.normalize(x, dim=-1))


def _lines(source: str | Path | Sequence[str], builtin: dict[str, Path], what: str) -> list[str]:
    """A built-in set by name, a text file (one entry per line), or the entries themselves."""
    if isinstance(source, (str, Path)):
        path = builtin.get(str(source), Path(source))
        if not path.is_file():
            raise ValueError(f"{what} file not found: {path}; or one of: {', '.join(builtin)}")
        entries = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    else:
        entries = [str(entry) for entry in source]
    if not entries:
        raise ValueError(f"{what}: {source!r} is empty")
    return entries


def read_class_names(source: str | Path | Sequence[str]) -> list[str]:
    """``"imagenet"`` (the 1000 OpenAI names), a file with one name per line in label order, or a list."""
    return _lines(source, CLASS_NAME_SETS, "class names")


def read_templates(source: str | Path | Sequence[str] = "openai") -> list[str]:
    """``"openai"`` (CLIP's 80 ImageNet prompts), a file with one template per line, or a list;
    ``{}`` marks where the class name goes."""
    templates = _lines(source, TEMPLATE_SETS, "prompt templates")
    for template in templates:
        if template.count("{}") != 1 or template.replace("{}", "").count("{"):
            raise ValueError(f"prompt template {template!r} must hold exactly one '{{}}' for the class name")
    return templates


def _open_clip():
    import open_clip  # a heavy import, needed only to build a text head

    shipped = {p.stem for p in OPEN_CLIP_CONFIGS.glob("*.json")}
    if not shipped <= set(open_clip.list_models()):
        open_clip.add_model_config(OPEN_CLIP_CONFIGS)
    return open_clip


def load_open_clip(backbone: str, checkpoint: str | Path | None = None) -> tuple[nn.Module, object]:
    """The open_clip model (both towers, eval mode) whose image tower ``backbone`` is, and its
    tokenizer. Weights from a local open_clip / OpenAI checkpoint file, or random without one."""
    spec = get_backbone(backbone)
    if spec.open_clip is None:
        clips = [name for name, b in BACKBONES.items() if b.open_clip]
        raise ValueError(f"backbone '{backbone}' has no CLIP text tower; a text head needs one of: "
                         f"{', '.join(clips)}")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise ValueError(f"checkpoint file not found: {checkpoint}")
    open_clip = _open_clip()
    try:
        model = open_clip.create_model(spec.open_clip, pretrained=str(checkpoint) if checkpoint else None)
    except (RuntimeError, KeyError, ValueError, OSError, SafetensorError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"checkpoint {checkpoint} does not fit open_clip model '{spec.open_clip}': "
                         f"{first}") from None
    return model.eval(), open_clip.get_tokenizer(spec.open_clip)


@torch.no_grad()
def text_head_weights(clip_model: nn.Module, tokenizer, class_names: Sequence[str],
                      templates: Sequence[str], device: str | torch.device = "cpu") -> torch.Tensor:
    """(classes, embed): per class the templates filled with its name, encoded, each normalised,
    averaged and renormalised (open_clip's own zero-shot classifier), times exp(logit_scale)."""
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    clip_model.to(device)
    weights = build_zero_shot_classifier(clip_model, tokenizer, list(class_names), list(templates),
                                         num_classes_per_batch=10, device=device)
    return (weights.T * clip_model.logit_scale.exp()).float().cpu()


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "peft-search" / "clip-heads"


def _head_key(clip_model: nn.Module, class_names: Sequence[str], templates: Sequence[str]) -> str:
    """What the head depends on: the text tower's weights (with logit_scale), names, templates."""
    digest = hashlib.sha256(json.dumps([list(class_names), list(templates)]).encode())
    for name, tensor in sorted(clip_model.state_dict().items()):
        if not name.startswith("visual."):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def cached_text_head(clip_model: nn.Module, tokenizer, name: str, class_names: Sequence[str],
                     templates: Sequence[str], cache_dir: Path | None = None,
                     device: str | torch.device = "cpu") -> torch.Tensor:
    """``text_head_weights``, read from / written to ``cache_dir`` (default: ``default_cache_dir()``)."""
    key = _head_key(clip_model, class_names, templates)[:32]
    path = Path(cache_dir or default_cache_dir()) / f"{name}-{key}.safetensors"
    if path.is_file():
        try:
            return load_file(str(path))["weight"]
        except (OSError, KeyError, SafetensorError):
            pass  # unreadable: rebuilt and replaced below
    weight = text_head_weights(clip_model, tokenizer, class_names, templates, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # parallel trials share the cache
    save_file({"weight": weight.contiguous()}, str(partial), metadata={"open_clip": name})
    os.replace(partial, path)
    return weight


def attach_text_head(model: VisionTransformer, weight: torch.Tensor) -> VisionTransformer:
    """Turn a timm CLIP tower whose ``head`` is CLIP's projection into a text-head classifier:
    ``head = Sequential(projection, TextHead)``."""
    projection = model.head
    if projection.weight.shape[0] != weight.shape[1]:
        raise ValueError(f"text head width {weight.shape[1]} does not match the image projection "
                         f"width {projection.weight.shape[0]}")
    proj = nn.Linear(projection.in_features, projection.out_features, bias=False)
    proj.weight = projection.weight  # timm's converter gives the projection a zero bias: dropped
    text = TextHead(weight.shape[1], weight.shape[0]).to(projection.weight)
    with torch.no_grad():
        text.weight.copy_(weight)
        text.bias.zero_()
    model.head = nn.Sequential(proj, text)
    model.num_classes = weight.shape[0]
    return model


def build_clip_classifier(backbone: str, class_names: str | Path | Sequence[str],
                          templates: str | Path | Sequence[str] = "openai",
                          checkpoint: str | Path | None = None, *, cache_dir: Path | None = None,
                          device: str | torch.device = "cpu", **overrides) -> VisionTransformer:
    """The CLIP image tower of ``backbone`` (stock timm ViT) with the zero-shot text head.

    ``checkpoint``: a local open_clip / OpenAI CLIP file (``open_clip.create_model(name,
    pretrained=PATH)``); None: random weights (tests). ``device``: where the text tower encodes
    the prompts (once; then cached in ``cache_dir``). ``overrides`` go to timm (``drop_path_rate``).
    """
    names, prompts = read_class_names(class_names), read_templates(templates)
    clip_model, tokenizer = load_open_clip(backbone, checkpoint)
    model = build_backbone(backbone, num_classes=clip_model.visual.output_dim, **overrides)
    try:
        load_state(model, clip_model.state_dict())  # timm's OpenAI/open_clip CLIP converter
    except (KeyError, RuntimeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"open_clip model '{get_backbone(backbone).open_clip}' does not fit "
                         f"backbone '{backbone}': {first}") from None
    weight = cached_text_head(clip_model, tokenizer, get_backbone(backbone).open_clip, names, prompts,
                              cache_dir, device)
    return attach_text_head(model, weight)


def split_text_head(model: VisionTransformer) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A CLIP tower with a text head as timm's own layout plus the classifier apart.

    L2 normalisation sits between the projection and the text head, so the two cannot fold into
    one Linear. The first state dict is timm's CLIP image tower (the projection as ``head``, with
    the zero bias timm's converter gives it), loadable with ``strict=True`` into the stock model
    with ``num_classes`` = the embedding width; the second (``weight``, ``bias``) classifies its
    L2-normalised output. A model without a text head: its state dict and an empty classifier.
    """
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if not (isinstance(model.head, nn.Sequential) and isinstance(model.head[-1], TextHead)):
        return state, {}
    classifier = {"weight": state.pop("head.1.weight"), "bias": state.pop("head.1.bias")}
    projection = state.pop("head.0.weight")
    state["head.weight"], state["head.bias"] = projection, projection.new_zeros(projection.shape[0])
    return state, classifier
