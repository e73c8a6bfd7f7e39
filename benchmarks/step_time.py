"""One training step (forward, backward, AdamW) per method on a tiny ViT, on the CPU.

Also runs our LoRA against HF peft's LoRA on the same timm model, interleaved in one process so
that both see the same machine state, and reports the ratio. Memory is the training state a
step keeps alive: trainable parameters, their gradients and AdamW moments, plus the tensors
autograd saves for backward (unique storages, parameters excluded) -- deterministic, unlike RSS.

    python benchmarks/step_time.py [--steps 10] [--rounds 5] [--json]

``--study`` instead times every method against the same method written the study's way
(``study_blocks.py``: explicit-attention blocks with the study's insertion points), both with
the same weights and the same trained parameters, rounds alternating which runs first, and a
second copy of the study-way model as the noise bar (its ratio to the first is pure noise):

    python benchmarks/step_time.py --study [--steps 1] [--rounds 12] [--json]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

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


def alternating(steps: dict[str, Step], n_steps: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per step of each contender in every round; odd rounds run them in reverse order."""
    for step in steps.values():
        step.seconds(2)  # warm-up: allocator, kernels
    samples: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(rounds):
        for key in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
            samples[key].append(steps[key].seconds(n_steps))
    return samples


def quartiles(values: list[float]) -> list[float]:
    """The first and third quartiles: the middle half of the rounds, robust to a load spike."""
    if len(values) < 2:
        return [values[0], values[0]]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return [q[0], q[2]]


def study_comparison(base: torch.nn.Module, n_steps: int, rounds: int, rank: int) -> dict:
    """Per method: ours against the study-way model, and the study-way model against a copy of
    itself. Order per round: ours, study, self (reversed in odd rounds), so ours and the self copy
    take the same places around the study-way model. Ratios are per round (a load spike hits one
    round), summarised by their median and quartiles; use many short rounds, an even number."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import study_blocks

    stock = set(base.state_dict())
    results, skipped = {}, {}
    for name in peft_core.methods():
        if name in study_blocks.UNSUPPORTED:
            skipped[name] = study_blocks.UNSUPPORTED[name]
            print(f"{name:15s} skipped: {skipped[name]}", flush=True)
            continue
        hp = {"lora_bottleneck": rank} if name == "lora" else {}
        ours_model = peft_core.apply(copy.deepcopy(base), name, **hp)
        study_model = study_blocks.study_model(copy.deepcopy(base), name, **hp)
        study_blocks.copy_from_ours(study_model, ours_model, name, stock)
        self_model = copy.deepcopy(study_model)
        ours, study, self_ = Step(ours_model), Step(study_model), Step(self_model)
        trained = sum(p.numel() for p in ours.params)
        assert trained == sum(p.numel() for p in study.params), f"{name}: trains a different count"
        with torch.no_grad():  # the same function, or the timing compares different work
            same = torch.allclose(ours_model.eval()(ours.x), study_model.eval()(ours.x), atol=1e-4)
        assert same, f"{name}: the study-way model does not compute ours"
        ours_model.train(), study_model.train()
        t = alternating({"ours": ours, "study": study, "self": self_}, n_steps, rounds)
        ratio = [o / s for o, s in zip(t["ours"], t["study"])]
        noise = [c / s for c, s in zip(t["self"], t["study"])]
        r = results[name] = {"ours_ms": 1000 * statistics.median(t["ours"]),
                             "study_ms": 1000 * statistics.median(t["study"]),
                             "ratio": statistics.median(ratio), "ratio_iqr": quartiles(ratio),
                             "self_ratio": statistics.median(noise), "self_iqr": quartiles(noise),
                             "ratio_rounds": ratio, "self_rounds": noise,
                             "ours_memory_mb": ours.memory_mb(), "study_memory_mb": study.memory_mb(),
                             "trained": trained}
        # The noise bar: how far from 1 the middle half of the self-comparison's rounds strays.
        r["noise"] = max(abs(q - 1) for q in r["self_iqr"])
        r["verdict"] = ("within noise" if abs(r["ratio"] - 1) <= r["noise"]
                        else "ours faster" if r["ratio"] < 1 else "ours slower")
        print(f"{name:15s} ours {r['ours_ms']:6.1f} ms  study {r['study_ms']:6.1f} ms  "
              f"ours/study {r['ratio']:.3f} [{r['ratio_iqr'][0]:.3f}, {r['ratio_iqr'][1]:.3f}]  "
              f"self {r['self_ratio']:.3f} [{r['self_iqr'][0]:.3f}, {r['self_iqr'][1]:.3f}]  "
              f"{r['verdict']:12s}  {r['ours_memory_mb']:.1f} vs {r['study_memory_mb']:.1f} MB",
              flush=True)
    return {"methods": results, "skipped": skipped}


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
    parser.add_argument("--study", action="store_true",
                        help="time every method against the same method written the study's way")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    base = base_model()
    if args.study:
        study = study_comparison(base, args.steps, args.rounds, args.rank)
        if args.json:
            print(json.dumps({"vit": VIT, "batch": BATCH, "threads": torch.get_num_threads(),
                              "steps": args.steps, "rounds": args.rounds, **study}, sort_keys=True))
        return
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
