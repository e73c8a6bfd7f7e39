"""GPU throughput per method: ViT-B/16 at 224, batch 64, bf16 autocast (run only on a GPU).

Prints images/s and model-FLOPs utilisation (FLOPs of one real training step, counted by
torch's FlopCounterMode, over the GPU's dense bf16 peak) for every method, then the summed
throughput of 1, 2, 4 and 8 LoRA trials sharing the GPU as separate processes (how Ray packs
fractional-GPU trials).

    python benchmarks/gpu_step.py [--peak-tflops 989] [--seconds 20] [--json]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import peft_core

BATCH = 64


def make_step(method: str, hp: dict):
    model = peft_core.apply(peft_core.build_backbone("vit_b16_in21k", 100), method, **hp).cuda().train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, fused=True)
    x = torch.randn(BATCH, 3, 224, 224, device="cuda")
    y = torch.randint(0, 100, (BATCH,), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def measure(step, seconds: float) -> float:
    """Images per second over ``seconds`` after a warm-up."""
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        n += 1
    torch.cuda.synchronize()
    return n * BATCH / (time.perf_counter() - start)


def _worker(seconds: float, queue) -> None:
    queue.put(measure(make_step("lora", {"lora_bottleneck": 8}), seconds))


def shared(n: int, seconds: float) -> float:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(seconds, queue)) for _ in range(n)]
    for p in procs:
        p.start()
    rates = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200: 989)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_step.py needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    results = {}
    for method in peft_core.methods():
        if method == "zero_shot":
            continue
        step = make_step(method, {})
        with FlopCounterMode(display=False) as counter:
            step()
        rate = measure(step, args.seconds)
        flops = counter.get_total_flops() / BATCH
        results[method] = {"images_per_s": rate, "mfu": rate * flops / (args.peak_tflops * 1e12)}
        print(f"{method:15s} {rate:9.1f} img/s  MFU {100 * results[method]['mfu']:5.1f}%", flush=True)
        del step
        torch.cuda.empty_cache()
    sharing = {n: shared(n, args.seconds) for n in (1, 2, 4, 8)}
    for n, rate in sharing.items():
        print(f"{n} LoRA trials sharing the GPU: {rate:9.1f} img/s in total", flush=True)
    if args.json:
        print(json.dumps({"methods": results, "sharing": sharing, "gpu": torch.cuda.get_device_name()}))


if __name__ == "__main__":
    main()
