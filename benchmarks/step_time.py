"""One training step (forward, backward, AdamW) per method on a tiny ViT, on the CPU.

Also runs our LoRA against HF peft's LoRA on the same timm model, interleaved in one process so
that both see the same machine state, and reports the ratio. Memory is the training state a
step keeps alive: trainable parameters, their gradients and AdamW moments, plus the tensors
autograd saves for backward (unique storages, parameters excluded) -- deterministic, unlike RSS.

    python benchmarks/step_time.py [--steps 10] [--rounds 5] [--json]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import timm
import torch

import peft_core

VIT = dict(img_size=64, patch_size=8, embed_dim=192, depth=6, num_heads=3, num_classes=10)
BATCH = 32


def base_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_base_patch16_224", pretrained=False, **VIT)


class Step:
    """A ready training step for one model: call it to run forward, backward and AdamW."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.train()
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=1e-3, weight_decay=1e-4)
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(BATCH, 3, 64, 64, generator=g)
        self.y = torch.randint(0, 10, (BATCH,), generator=g)

    def __call__(self) -> torch.Tensor:
        self.opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()
        return loss

    def seconds(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            self()
        return (time.perf_counter() - start) / steps

    def memory_mb(self) -> float:
        param_ptrs = {p.untyped_storage().data_ptr() for p in self.model.parameters()}
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            if storage.data_ptr() not in param_ptrs:
                saved[storage.data_ptr()] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = torch.nn.functional.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        state = sum(p.numel() * p.element_size() for p in self.params) * 4  # p, grad, 2 moments
        return (sum(saved.values()) + state) / 2**20


def interleaved(steps: dict[str, Step], n_steps: int, rounds: int) -> dict[str, float]:
    """Median seconds per step, measuring the contenders in turn, ``rounds`` times."""
    for step in steps.values():
        step.seconds(2)  # warm-up: allocator, kernels
    samples: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for key, step in steps.items():
            samples[key].append(step.seconds(n_steps))
    return {k: statistics.median(v) for k, v in samples.items()}


def hf_peft_lora(rank: int) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model
    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.1, target_modules=["qkv"],
                        modules_to_save=["head"])
    return get_peft_model(base_model(), config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    base = base_model()
    results = {}
    full = Step(peft_core.apply(copy.deepcopy(base), "full"))
    for name in peft_core.methods():
        if name == "zero_shot":
            continue  # trains nothing: no training step
        hp = {"lora_bottleneck": args.rank} if name == "lora" else {}
        step = Step(peft_core.apply(copy.deepcopy(base), name, **hp))
        timing = interleaved({"method": step, "full": full}, args.steps, args.rounds)
        results[name] = {"step_ms": 1000 * timing["method"], "vs_full": timing["method"] / timing["full"],
                         "memory_mb": step.memory_mb(),
                         "inserted": peft_core.count_inserted(step.model)}
        print(f"{name:15s} {results[name]['step_ms']:8.1f} ms  {results[name]['vs_full']:5.2f}x full  "
              f"{results[name]['memory_mb']:7.1f} MB  {results[name]['inserted']:>9,d} params", flush=True)

    ours = Step(peft_core.apply(copy.deepcopy(base), "lora", lora_bottleneck=args.rank))
    theirs = Step(hf_peft_lora(args.rank))
    assert sum(p.numel() for p in ours.params) == sum(p.numel() for p in theirs.params)
    timing = interleaved({"ours": ours, "hf_peft": theirs}, args.steps, 2 * args.rounds)
    lora = {"ours_ms": 1000 * timing["ours"], "hf_peft_ms": 1000 * timing["hf_peft"],
            "ratio": timing["ours"] / timing["hf_peft"],
            "ours_memory_mb": ours.memory_mb(), "hf_peft_memory_mb": theirs.memory_mb()}
    print(f"LoRA r={args.rank}: ours {lora['ours_ms']:.1f} ms vs HF peft {lora['hf_peft_ms']:.1f} ms "
          f"-> {lora['ratio']:.3f}x; memory {lora['ours_memory_mb']:.1f} vs {lora['hf_peft_memory_mb']:.1f} MB")
    if args.json:
        print(json.dumps({"vit": VIT, "batch": BATCH, "threads": torch.get_num_threads(),
                          "methods": results, "lora_vs_hf_peft": lora}, sort_keys=True))


if __name__ == "__main__":
    main()
