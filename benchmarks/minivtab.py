"""mini-VTAB with the shipped pretrained tiny ViT: the study's protocol on a CPU, shortened.

For every task and method: tune lr in {1e-3, 1e-2} (wd 1e-4) on train800 -> val200, keep the
best last-epoch val top-1, retrain it on train800val200 and report test top-1 at the last
epoch (never selected on test). ``scratch`` is full fine-tuning from a random init. Also times
a linear-probe trial (the study's 100 epochs) with and without the frozen-feature cache.

    python benchmarks/minivtab.py --data data/minivtab [--epochs 10] [--json]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from peft_core.data.minivtab import TASKS, build_minivtab
from peft_core.train import TrainConfig, train

METHODS = ["linear", "full", "lora", "adaptformer", "rand_h_adapter", "ssf", "vpt_deep", "scratch"]


def run(task: str, method: str, data: Path, epochs: int, lr: float, phase: str) -> float:
    scratch = method == "scratch"
    config = TrainConfig(method="full" if scratch else method, pretrained=not scratch, data=task,
                         data_path=str(data), phase=phase, epoch=epochs,
                         warmup_epoch=min(epochs - 1, max(1, epochs // 10)), lr=lr, wd=1e-4)
    return train(config).metrics[f"{'val' if phase == 'tune' else 'test'}_top1"]


def cell(task: str, method: str, data: Path, epochs: int) -> dict:
    val = {lr: run(task, method, data, epochs, lr, "tune") for lr in (1e-3, 1e-2)}
    best = max(val, key=val.get)
    return {"lr": best, "val_top1": val[best], "test_top1": run(task, method, data, epochs, best, "final")}


def cache_speedup(data: Path) -> dict:
    times = {}
    for cached in (True, False):
        config = TrainConfig(method="linear", data="digits", data_path=str(data), epoch=100,
                             warmup_epoch=10, drop_path_rate=0.0, feature_cache=cached)
        start = time.perf_counter()
        result = train(config)
        times["cached" if cached else "uncached"] = (time.perf_counter() - start, result.metrics["val_top1"])
    return {"cached_s": times["cached"][0], "uncached_s": times["uncached"][0],
            "speedup": times["uncached"][0] / times["cached"][0],
            "val_top1": [times["cached"][1], times["uncached"][1]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/minivtab"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--cache-only", action="store_true", help="only time the feature cache")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    build_minivtab(args.data, args.tasks)
    cache = cache_speedup(args.data)
    print(f"feature cache: linear probe 100 epochs {cache['uncached_s']:.1f}s -> {cache['cached_s']:.1f}s "
          f"({cache['speedup']:.1f}x), val top-1 {cache['val_top1']}", flush=True)
    if args.cache_only:
        return
    table = {}
    print("| method | " + " | ".join(args.tasks) + " | mean |\n|---|" + "---|" * (len(args.tasks) + 1))
    for method in args.methods:
        table[method] = {task: cell(task, method, args.data, args.epochs) for task in args.tasks}
        scores = [table[method][t]["test_top1"] for t in args.tasks]
        print(f"| {method} | " + " | ".join(f"{s:.1f}" for s in scores)
              + f" | {sum(scores) / len(scores):.1f} |", flush=True)
    if args.json:
        print(json.dumps({"epochs": args.epochs, "cache": cache, "table": table}, sort_keys=True))


if __name__ == "__main__":
    main()
