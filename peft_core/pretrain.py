"""Pretrain the shipped tiny ViT on the Fashion-MNIST classes that mini-VTAB never asks about.

No ViT weights can be downloaded on these machines, so the project ships a small backbone that
has really been pretrained: supervised on Fashion-MNIST classes 0-4 (t-shirt, trouser,
pullover, dress, coat), 30,000 images. Writes a safetensors checkpoint (no head) and a model card.

    python -m peft_core.pretrain --out peft_core/weights/fmnist_vit_tiny.safetensors
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.scheduler import CosineLRScheduler

from .backbones import build_backbone, get_backbone
from .data.builtin import fashion_mnist
from .data.minivtab import PRETRAIN_CLASSES

BACKBONE = "fmnist_vit_tiny"


def _tensors(split: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = fashion_mnist(split)
    keep = np.isin(labels, PRETRAIN_CLASSES)
    x = torch.from_numpy(images[keep]).float().div(255).unsqueeze(1)
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    return x.expand(-1, 3, -1, -1).contiguous(), torch.from_numpy(labels[keep])


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 2-pixel shifts and horizontal flips."""
    pad = F.pad(x, (2, 2, 2, 2))
    dy, dx = torch.randint(0, 5, (2,), generator=gen).tolist()
    x = pad[..., dy:dy + x.shape[-2], dx:dx + x.shape[-1]]
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def pretrain(out: Path, epochs: int, batch_size: int, lr: float, seed: int) -> dict:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    size = get_backbone(BACKBONE).img_size
    train_x, train_y = _tensors("train", size)
    test_x, test_y = _tensors("test", size)
    model = build_backbone(BACKBONE, num_classes=len(PRETRAIN_CLASSES), drop_path_rate=0.1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = CosineLRScheduler(opt, t_initial=epochs, warmup_t=1, warmup_lr_init=1e-5, lr_min=1e-5)
    start = time.time()
    for epoch in range(epochs):
        sched.step(epoch)
        model.train()
        order = torch.randperm(len(train_x), generator=gen)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[i:i + batch_size]
            loss = F.cross_entropy(model(_augment(train_x[idx], gen)), train_y[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        acc = evaluate(model, test_x, test_y)
        print(f"epoch {epoch + 1}/{epochs} loss {loss.item():.3f} test top-1 {acc:.2f} "
              f"({time.time() - start:.0f}s)", file=sys.stderr, flush=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("head.")}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out), metadata={"backbone": BACKBONE, "classes": str(PRETRAIN_CLASSES)})
    return {"test_top1": acc, "seconds": time.time() - start,
            "sha256": hashlib.sha256(out.read_bytes()).hexdigest(), "bytes": out.stat().st_size}


@torch.no_grad()
def evaluate(model, x, y, batch_size: int = 1000) -> float:
    model.eval()
    correct = sum((model(x[i:i + batch_size]).argmax(-1) == y[i:i + batch_size]).sum().item()
                  for i in range(0, len(x), batch_size))
    return 100.0 * correct / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "weights" / f"{BACKBONE}.safetensors")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = pretrain(args.out, args.epochs, args.batch_size, args.lr, args.seed)
    print(result)


if __name__ == "__main__":
    main()
