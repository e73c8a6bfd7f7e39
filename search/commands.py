"""The bodies of the CLI's sub-commands (argument parsing lives in ``cli``)."""
from __future__ import annotations

import argparse
import json

import torch

import peft_core


def _format_grid(grid: dict) -> str:
    return " x ".join(f"{k} {{{', '.join(map(str, v))}}}" for k, v in grid.items()) or "lr/wd only"


def methods(args: argparse.Namespace) -> int:
    table = peft_core.methods()
    if args.json:
        print(json.dumps(table, sort_keys=True))
        return 0
    rows = [("method", "trains (besides the head)", "hyper-parameters (default)", "paper grid")]
    for name, info in table.items():
        hps = ", ".join(f"{k}={v['default']}" for k, v in info["hyperparameters"].items()) or "-"
        rows.append((name, info["trains"], hps, _format_grid(info["grid"])))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3])
    return 0


def count_params(method: str, backbone: str, num_classes: int, hp: dict) -> dict:
    """Inserted parameters of ``method`` on ``backbone``, counted on the meta device (no memory)."""
    with torch.device("meta"):
        model = peft_core.build_backbone(backbone, num_classes)
        total = sum(p.numel() for n, p in model.named_parameters() if "head" not in n)
        peft_core.apply(model, method, **hp)
    config = peft_core.config_of(model).to_dict()
    inserted = peft_core.count_inserted(model)
    return {"method": method, "backbone": backbone, "hyperparameters": config,
            "inserted_params": inserted, "backbone_params": total,
            "percent": round(100.0 * inserted / total, 4)}


def params(args: argparse.Namespace) -> int:
    result = count_params(args.method, args.backbone, args.num_classes, args.set)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(f"{result['method']} on {result['backbone']}: {result['inserted_params']:,} inserted "
              f"parameters ({result['percent']:.2f}% of {result['backbone_params']:,})")
    return 0


def demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    return run_demo()
