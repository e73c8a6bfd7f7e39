"""Mid-training checkpoints: trainable parameters, optimizer, scheduler and RNG state, and the
best-validation trainable parameters when a run selects its weights on validation.

Tensors go to ``state.safetensors``, everything else to ``state.json``; nothing is unpickled on
load. A resumed run continues exactly as if it had never stopped.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

TENSORS, META = "state.safetensors", "state.json"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def _params_of(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trainable tensors of a checkpoint file (keys ``param.<name>``), by parameter name."""
    return {k[len("param."):]: v for k, v in tensors.items() if k.startswith("param.")}


def copy_trainable(model: torch.nn.Module, tensors: dict[str, torch.Tensor], what: str) -> None:
    """Copy exactly the model's trainable tensors; anything missing or extra is an error."""
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    if set(tensors) != expected:
        raise ValueError(f"{what} does not match the model: "
                         f"{len(set(tensors) ^ expected)} trainable tensors differ")
    with torch.no_grad():
        for name in expected:
            params[name].copy_(tensors[name])


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    np_state = np.random.get_state()
    meta = {"python": _jsonable(random.getstate()),
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    return tensors, meta


def _jsonable(obj):
    return [_jsonable(o) for o in obj] if isinstance(obj, (tuple, list)) else obj


def _tupled(obj):
    return tuple(_tupled(o) for o in obj) if isinstance(obj, list) else obj


def save(folder: Path, model, optimizer, scheduler, progress: dict[str, Any],
         best: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a checkpoint into ``folder`` (created); ``progress`` is any JSON-able run state,
    ``best`` the trainable tensors of the best validation epoch so far (when selecting on it).
    A run with nothing to train (zero_shot) has no optimizer and no scheduler: None."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"param.{n}": t.contiguous() for n, t in trainable_state(model).items()}
    tensors.update({f"best.{n}": t.contiguous() for n, t in (best or {}).items()})
    opt = optimizer.state_dict() if optimizer is not None else {"state": {}, "param_groups": []}
    for index, state in opt["state"].items():
        for key, value in state.items():
            tensors[f"opt.{index}.{key}"] = value.detach().contiguous().cpu()
    rng_tensors, rng_meta = _rng_state()
    tensors.update(rng_tensors)
    save_file({k: v.cpu() for k, v in tensors.items()}, str(folder / TENSORS))
    meta = {"progress": progress, "param_groups": opt["param_groups"], "rng": rng_meta,
            "scheduler": {k: v for k, v in scheduler.state_dict().items() if _is_json(v)} if scheduler else {}}
    (folder / META).write_text(json.dumps(meta))
    return folder


def _is_json(value) -> bool:
    try:
        json.dumps(value)
        return True
    except TypeError:
        return False


def load(folder: Path, model, optimizer, scheduler) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Restore a checkpoint written by ``save``; returns its ``progress`` and ``best`` tensors.

    A missing, truncated or mismatched checkpoint is a one-line ValueError naming the path.
    """
    folder = Path(folder)
    try:
        tensors = load_file(str(folder / TENSORS))
        meta = json.loads((folder / META).read_text())
    except (OSError, SafetensorError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"corrupt or missing checkpoint {folder}: {type(err).__name__}") from None
    copy_trainable(model, _params_of(tensors), f"checkpoint {folder}")
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, name = key.split(".", 2)
            opt_state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict({**scheduler.state_dict(), **meta["scheduler"]})
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    random.setstate(_tupled(meta["rng"]["python"]))
    np_state = meta["rng"]["numpy"]
    np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))
    best = {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")}
    return meta["progress"], best


def save_adapter(model: torch.nn.Module, path: Path, metadata: dict[str, Any] | None = None) -> Path:
    """The trained tensors (method + head) as safetensors; ``metadata`` stored as JSON strings."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {n: t.contiguous().cpu() for n, t in trainable_state(model).items()}
    save_file(tensors, str(path), metadata=_file_metadata(metadata))
    return path


def _file_metadata(metadata: dict[str, Any] | None) -> dict[str, str]:
    # "format" as torch's own files have it; it also keeps a file without tensors (zero_shot)
    # readable: safetensors writes an empty header it cannot read back.
    return {"format": "pt", **{k: json.dumps(v) for k, v in (metadata or {}).items()}}


def load_adapter(model: torch.nn.Module, path: Path) -> None:
    """Load ``save_adapter`` output, or the trained tensors of a checkpoint folder (a finished
    run's last one holds the weights it selected), strictly: exactly the model's trainable tensors."""
    path = Path(path)
    what = f"checkpoint {path}" if path.is_dir() else f"adapter {path}"
    try:
        tensors = load_file(str(path / TENSORS if path.is_dir() else path))
    except (OSError, SafetensorError) as err:
        raise ValueError(f"corrupt or missing {what}: {type(err).__name__}") from None
    copy_trainable(model, _params_of(tensors) if path.is_dir() else tensors, what)


def adapter_from_checkpoint(folder: Path, out: Path, metadata: dict[str, Any] | None = None) -> Path:
    """The trained tensors of a mid-training checkpoint as a standalone adapter file."""
    try:
        tensors = load_file(str(Path(folder) / TENSORS))
    except (OSError, SafetensorError) as err:
        raise ValueError(f"corrupt or missing checkpoint {folder}: {type(err).__name__}") from None
    params = _params_of(tensors)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(params, str(out), metadata=_file_metadata(metadata))
    return out
