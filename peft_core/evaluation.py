"""Evaluation: top-1, top-5 and loss over labelled batches, optionally among a subset of classes.

One loop for everything that scores a model: validation and test in ``train``, and the
domain-shift sets (ImageNet val, -V2, -Sketch, -R, -A) of a finished run.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data.imagenet import domain_set


@torch.no_grad()
def evaluate(model: Callable[[torch.Tensor], torch.Tensor], loader: Iterable,
             class_mask: torch.Tensor | None = None, *, device: torch.device | str | None = None,
             autocast: Callable = contextlib.nullcontext, keep_outputs: bool = False) -> dict[str, Any]:
    """``{"top1", "top5", "loss", "n"}``: accuracies in percent and mean cross-entropy over the
    ``(images, labels)`` batches of ``loader``, and how many images there were. ``device``:
    where batches go (default: the model's, or the CPU for a plain function).

    ``class_mask``: bools over the model's classes; logits of the others become -inf, so an image
    is scored among the marked classes only (ImageNet-R and -A: their 200). ``keep_outputs``: also
    ``logits`` (as scored, i.e. masked) and ``labels``, CPU tensors, for a predictions file.
    """
    if isinstance(model, nn.Module):
        model.eval()
        device = device or next(model.parameters()).device
    device = device or "cpu"
    total, loss, top1, top5 = 0, 0.0, 0, 0
    outputs: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    for x, y in loader:
        x, y = x.to(device), torch.as_tensor(y).to(device)
        with autocast():
            logits = model(x)
        logits = logits.float()
        if class_mask is not None:
            logits = logits.masked_fill(~class_mask.to(logits.device), float("-inf"))
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        k = min(5, logits.shape[1])
        hits = logits.topk(k, dim=1).indices == y[:, None]
        top1 += hits[:, 0].sum().item()
        top5 += hits.any(dim=1).sum().item()
        total += len(y)
        if keep_outputs:
            outputs.append(logits.cpu())
            labels.append(y.cpu())
    if not total:
        raise ValueError("nothing to evaluate: the loader gave no images")
    result: dict[str, Any] = {"top1": 100.0 * top1 / total, "top5": 100.0 * top5 / total,
                              "loss": loss / total, "n": total}
    if keep_outputs:
        result.update(logits=torch.cat(outputs), labels=torch.cat(labels))
    return result


def save_predictions(path: Path, result: Mapping[str, Any]) -> Path:
    """An ``evaluate(..., keep_outputs=True)`` result as ``.npz`` with arrays ``logits``, ``labels``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, logits=result["logits"].numpy(), labels=result["labels"].numpy())
    return path


def evaluate_domains(model: nn.Module, roots: Mapping[str, Path], transform, batch_size: int = 512,
                     device: torch.device | str | None = None, num_workers: int = 0,
                     keep_outputs: bool = False) -> dict[str, dict[str, Any]]:
    """``evaluate`` on each domain-shift set (``imagenet``, ``imagenet_v2``, ``imagenet_sketch``,
    ``imagenet_r``, ``imagenet_a``) found at ``roots[name]``; R and A scored among their classes."""
    results = {}
    for name, root in roots.items():
        dataset, mask = domain_set(name, Path(root), transform)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
        results[name] = evaluate(model, loader, mask, device=device, keep_outputs=keep_outputs)
    return results
