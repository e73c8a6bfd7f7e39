"""The study's backbones, built by name, tiny look-alikes for tests, and any timm ViT by its name.

Each name maps to a stock timm architecture (never a fork) and its keyword arguments; a name
``timm/<timm model name>`` (``timm/vit_small_patch16_224.augreg_in21k``) is that timm model, with
the normalisation and image size of its pretrained config. Weights come from a local file
(npz / pth / safetensors) through timm's own converter or, for a timm name, from the local
Hugging Face cache: nothing is downloaded at run time.
"""
from __future__ import annotations

import functools
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy
import timm
import timm.models.vision_transformer as vit_module
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file as load_safetensors
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models.vision_transformer import VisionTransformer

_CHECKPOINT_SUFFIXES = (".npz", ".pth", ".pt", ".bin", ".safetensors")


@dataclass(frozen=True)
class Backbone:
    timm_name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    description: str = ""
    default_checkpoint: Path | None = None  # weights shipped with the project
    open_clip: str | None = None  # the open_clip model this is the image tower of (text heads)
    hf_hub_id: str | None = None  # where its weights sit in the local Hugging Face cache
    native_img_size: int = 224  # the architecture's own input size (kwargs may change it)

    @property
    def img_size(self) -> int:
        return self.kwargs.get("img_size", self.native_img_size)


_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_TINY = dict(embed_dim=48, depth=2, num_heads=3)
WEIGHTS = Path(__file__).parent / "weights"

BACKBONES: dict[str, Backbone] = {
    "vit_b16_in21k": Backbone("vit_base_patch16_224.augreg_in21k", mean=(0.5,) * 3, std=(0.5,) * 3,
                              description="ViT-B/16 pretrained on ImageNet-21K"),
    "dinov2_vitb14": Backbone("vit_base_patch14_dinov2.lvd142m", dict(img_size=224),
                              description="DINOv2 ViT-B/14 (LayerScale)"),
    # The study's MAE backbone (pretrained_weights: vit_base_mae): ViT-B/16, class token, the MAE
    # file (mae_pretrain_vit_base.pth) through timm's converter.
    "vit_base_mae": Backbone("vit_base_patch16_224.mae", description="MAE ViT-B/16 (ImageNet-1K, self-supervised)"),
    "clip_vitb16": Backbone("vit_base_patch16_clip_quickgelu_224.openai", mean=_CLIP_MEAN,
                            std=_CLIP_STD, description="CLIP ViT-B/16 image tower (QuickGELU)",
                            open_clip="ViT-B-16-quickgelu"),
    # Really pretrained, shipped (peft_core/pretrain.py, weights/MODEL_CARD.md): mini-VTAB on a CPU.
    "fmnist_vit_tiny": Backbone("vit_base_patch16_224",
                                dict(img_size=32, patch_size=8, embed_dim=128, depth=6, num_heads=4),
                                mean=(0.5,) * 3, std=(0.5,) * 3,
                                description="tiny ViT pretrained on 5 Fashion-MNIST classes",
                                default_checkpoint=WEIGHTS / "fmnist_vit_tiny.safetensors"),
    # Same structure, tiny width/depth/image: for tests on a CPU.
    "tiny_vit_b16_in21k": Backbone("vit_base_patch16_224", dict(img_size=32, patch_size=8, **_TINY),
                                   mean=(0.5,) * 3, std=(0.5,) * 3, description="tiny ViT (test)"),
    # LayerScale at 1.0, not DINOv2's 1e-5: at 1e-5 a random-init model maps every image to
    # the same output, which would hide a method that changes nothing.
    "tiny_dinov2": Backbone("vit_base_patch14_dinov2",
                            dict(img_size=28, patch_size=7, init_values=1.0, **_TINY),
                            description="tiny DINOv2-style ViT with LayerScale (test)"),
    # Its open_clip twin (clip_configs/peft-tiny-clip.json) has a tiny text tower for text heads.
    "tiny_clip": Backbone("vit_base_patch16_clip_quickgelu_224", dict(img_size=32, patch_size=8, **_TINY),
                          mean=_CLIP_MEAN, std=_CLIP_STD, description="tiny CLIP-style tower (test)",
                          open_clip="peft-tiny-clip"),
}


def backbone_names() -> list[str]:
    return list(BACKBONES)


TIMM_PREFIX = "timm/"


def get_backbone(name: str) -> Backbone:
    if name.startswith(TIMM_PREFIX):
        return _timm_backbone(name)
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone '{name}'; allowed: {', '.join(BACKBONES)}, "
                         f"or {TIMM_PREFIX}<a timm ViT's name>") from None


@functools.lru_cache(maxsize=None)
def _timm_backbone(name: str) -> Backbone:
    """``timm/<model>[.<tag>]``: timm's model, checked to be a ``VisionTransformer`` (built on the
    meta device: no memory, no weights), with its pretrained config's mean, std and input size."""
    model_name = name[len(TIMM_PREFIX):]
    architecture, _ = timm.models.split_model_name_tag(model_name)
    if not timm.is_model(architecture):
        raise ValueError(f"unknown backbone '{name}': timm has no model '{architecture}'")
    try:
        with torch.device("meta"):
            model = timm.create_model(model_name, pretrained=False)
    except RuntimeError as err:  # an unknown pretrained tag
        raise ValueError(f"backbone '{name}': {str(err).splitlines()[0]}") from None
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"backbone '{name}': timm's '{architecture}' is a {type(model).__name__}, "
                         f"not a VisionTransformer")
    cfg = model.pretrained_cfg
    return Backbone(model_name, mean=tuple(cfg.get("mean", IMAGENET_DEFAULT_MEAN)),
                    std=tuple(cfg.get("std", IMAGENET_DEFAULT_STD)), description=f"timm's {model_name}",
                    hf_hub_id=cfg.get("hf_hub_id"), native_img_size=cfg.get("input_size", (3, 224, 224))[-1])


def cached_weights(hf_hub_id: str) -> Path | None:
    """The backbone's weights file in the local Hugging Face cache, if it is there (no network)."""
    from huggingface_hub import try_to_load_from_cache
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(hf_hub_id, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def build_backbone(name: str, num_classes: int, checkpoint: str | Path | None = None,
                   **overrides: Any) -> VisionTransformer:
    """A stock timm ViT for backbone ``name`` with a fresh ``num_classes`` head.

    ``checkpoint``: a local weights file (npz / pth / safetensors) loaded strictly: every
    backbone tensor must be present and fit; only a head of another class count is dropped.
    Without it the weights are random.
    """
    spec = get_backbone(name)
    kwargs = {**spec.kwargs, **overrides, "num_classes": num_classes}
    model = timm.create_model(spec.timm_name, pretrained=False, **kwargs)
    if checkpoint is not None:
        load_checkpoint(model, Path(checkpoint), name)
    return model


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise ValueError(f"checkpoint file not found: {path}")
    if path.suffix not in _CHECKPOINT_SUFFIXES:
        raise ValueError(f"checkpoint {path}: unsupported format '{path.suffix}'; "
                         f"allowed: {', '.join(_CHECKPOINT_SUFFIXES)}")


def _does_not_fit(path: Path, name: str, err: Exception) -> ValueError:
    # torch's "Error(s) in loading state_dict for ...:" heads the line that says what is wrong
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    detail = next((line for line in lines if not line.endswith(":")), lines[0] if lines else type(err).__name__)
    return ValueError(f"checkpoint {path} does not fit backbone '{name}': {detail}")


_LOAD_ERRORS = (RuntimeError, KeyError, ValueError, OSError, SafetensorError)
_TORCH_READ_ERRORS = (RuntimeError, OSError, EOFError, KeyError, ValueError, pickle.UnpicklingError)


def check_checkpoint(name: str, path: str | Path, header: bool = True) -> None:
    """Fail before any training when a weights file is missing, of an unknown format, or (with
    ``header``) does not fit backbone ``name``. A safetensors file's header, or a torch file
    memory-mapped (its tensors are not read), gives tensor names and shapes; they go through the
    same conversion and strict load as ``load_checkpoint``, into the backbone built on the meta
    device, so no memory is used. An ``.npz`` (converted by timm from its arrays) must open as one."""
    path = Path(path)
    _check_file(path)
    if not header:
        return
    if path.suffix == ".npz":
        _check_npz(path)
        return
    try:
        shapes = _tensor_shapes(path)
        with torch.device("meta"):
            model = build_backbone(name, num_classes=2)
            load_state(model, {key: torch.empty(shape) for key, shape in shapes.items()})
    except _LOAD_ERRORS as err:
        raise _does_not_fit(path, name, err) from None


def _tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    if path.suffix == ".safetensors":
        with safe_open(str(path), "pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    state = _mapped_torch_file(path)
    return {key: tuple(t.shape) for key, t in _unwrapped(state).items() if isinstance(t, torch.Tensor)}


def _mapped_torch_file(path: Path) -> Any:
    """A torch.save file, memory-mapped (its tensors are not read); torch's legacy format, which
    cannot be mapped, is read whole. Unreadable: one line saying so."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except _TORCH_READ_ERRORS as err:
        problem = err
        if "mmap" in str(err):
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except _TORCH_READ_ERRORS as legacy:
                problem = legacy
    detail = str(problem).strip().splitlines()[0] if str(problem).strip() else ""
    raise ValueError(f"not a readable torch.save file ({type(problem).__name__}{': ' + detail if detail else ''})")


def _check_npz(path: Path) -> None:
    try:
        arrays = numpy.load(path, allow_pickle=False)
        if not isinstance(arrays, numpy.lib.npyio.NpzFile):
            raise ValueError("one array, not an archive of named arrays")
        with arrays:
            if not arrays.files:
                raise ValueError("no arrays in it")
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        detail = "not a zip archive" if "pickled" in str(err) else str(err).splitlines()[0]
        raise ValueError(f"checkpoint {path} is not a readable .npz archive: {detail}") from None


def _unwrapped(state: Any) -> Any:
    """Training scripts save ``{"state_dict": ...}`` or ``{"model": ...}`` around the weights."""
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            return state[key]
    return state


def load_checkpoint(model: VisionTransformer, path: Path, name: str = "") -> None:
    """Load a local weights file into ``model`` through timm's own key conversion."""
    _check_file(path)
    try:
        if path.suffix == ".npz":  # big_vision / original ViT release: timm reads it itself
            vit_module._load_weights(model, str(path))
            return
        if path.suffix == ".safetensors":
            state = load_safetensors(str(path))
        else:
            state = _unwrapped(torch.load(path, map_location="cpu", weights_only=True))
        load_state(model, state)
    except _LOAD_ERRORS as err:
        raise _does_not_fit(path, name, err) from None


def load_state(model: VisionTransformer, state: dict[str, torch.Tensor]) -> None:
    """Load a state dict in any layout timm converts (timm, OpenAI / open_clip CLIP, DINOv2, ...).

    Strict: every backbone tensor must be present and fit; only a head of another class count is
    dropped (the model keeps its fresh one). Raises KeyError / RuntimeError otherwise.
    """
    state = vit_module.checkpoint_filter_fn(state, model)
    own = model.state_dict()
    for key in [k for k in state if k.startswith("head.")]:
        if key not in own or state[key].shape != own[key].shape:
            del state[key]  # a head for other classes: the model keeps its fresh one
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        raise KeyError(f"missing keys {missing[:3]}, unexpected keys {unexpected[:3]}")
