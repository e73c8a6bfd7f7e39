"""Exact frozen-feature cache for linear probing.

When only the head trains, the backbone is a fixed function of the image (no augmentation, eval
mode): compute its pre-logit features once and train the head on them. Batches use the same
per-epoch order as image training, so the head equals what uncached training gives -- when the
backbone computes the same in train mode, i.e. without drop-path or dropout. The study trains the
head under a train-mode backbone (drop-path 0.1: noisy features), so by default the cache is used
only where it is exact; ``feature_cache: true`` asks for it by name (faster, another baseline).
"""
from __future__ import annotations

import torch
from timm.layers import DropPath

from .api import config_of


def cacheable(model: torch.nn.Module) -> bool:
    """Default: on for linear probing (nothing but the head trains) on a backbone whose training
    forward has no randomness, so cached eval-mode features are exactly what training sees."""
    config = config_of(model)
    return config is not None and config.name == "linear" and not stochastic(model)


def stochastic(model: torch.nn.Module) -> bool:
    """Whether the training forward draws at random (drop-path or dropout with a rate)."""
    return any((isinstance(m, DropPath) and m.drop_prob > 0) or (isinstance(m, torch.nn.Dropout) and m.p > 0)
               for m in model.modules())


class FeatureCache:
    def __init__(self, model, train_set, eval_sets: dict, batch_size: int, device) -> None:
        """``eval_sets``: evaluation datasets by name (``val``, ``test``)."""
        head = {id(p) for p in model.get_classifier().parameters()}
        if any(p.requires_grad and id(p) not in head for p in model.parameters()):
            raise ValueError("feature_cache needs a frozen backbone (only the head may train)")
        self.train = self._features(model, train_set, batch_size, device)
        self.eval = {name: self._features(model, data, batch_size, device) for name, data in eval_sets.items()}

    @staticmethod
    @torch.no_grad()
    def _features(model, dataset, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        model.eval()
        feats, labels = [], []
        for x, y in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
            x = x.to(device)
            feats.append(model.forward_head(model.forward_features(x), pre_logits=True))
            labels.append(torch.as_tensor(y).to(device))
        return torch.cat(feats), torch.cat(labels)

    def train_batches(self, batches, epoch: int):
        feats, labels = self.train
        return ((feats[idx], labels[idx]) for idx in batches.indices(epoch))

    def eval_batches(self, name: str, batch_size: int):
        feats, labels = self.eval[name]
        return ((feats[i:i + batch_size], labels[i:i + batch_size]) for i in range(0, len(labels), batch_size))
