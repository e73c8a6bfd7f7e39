"""Commands over ``peft_core`` alone (no Ray, no MLflow): ``methods``, ``params``, ``train``,
``data``, ``schema``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from .errors import RunFailed
from .study_folder import check_writable


def register(sub) -> None:
    p = sub.add_parser("methods", help="list every method: what it trains, hyper-parameters, grid")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=methods)

    p = sub.add_parser("params", help="inserted-parameter count of a method on a backbone")
    p.add_argument("--method", required=True)
    p.add_argument("--backbone", default="vit_b16_in21k")
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a hyper-parameter, e.g. --set lora_bottleneck=8 (repeatable)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=params)

    p = sub.add_parser("train", help="one run: tune phase (train/val) or final phase (train+val/test)")
    p.add_argument("--config", action="append", required=True, type=Path, metavar="FILE",
                   help="run YAML; repeat to merge (a PETL_Vision default + method file pair)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key, e.g. --set lr=0.01 (repeatable)")
    p.add_argument("--out", type=Path, help="folder for the adapter (safetensors) and resolved config")
    p.add_argument("--check", action="store_true",
                   help="validate and print the resolved configuration (and the grid the files list); no training")
    p.set_defaults(func=train)

    p = sub.add_parser("data", help="build the bundled mini-VTAB tasks in the VTAB-1K layout")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=data)

    p = sub.add_parser("schema", help="the study file's JSON schema (for an editor's YAML language server)")
    p.set_defaults(func=schema)


def _format_grid(grid: dict) -> str:
    return " x ".join(f"{k} {{{', '.join(map(str, v))}}}" for k, v in grid.items()) or "lr/wd only"


def methods(args: argparse.Namespace) -> int:
    import peft_core
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
    import torch

    import peft_core
    with torch.device("meta"):
        model = peft_core.build_backbone(backbone, num_classes)
        head = {id(p) for p in model.get_classifier().parameters()}
        total = sum(p.numel() for p in model.parameters() if id(p) not in head)
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


def train(args: argparse.Namespace) -> int:
    from peft_core.checkpoint import save_adapter
    from peft_core.run_config import load_train_config
    from peft_core.train import TrainingDiverged, check_inputs, train as train_run
    if args.check:
        return check_train_config(args.config, args.set)
    config = load_train_config(args.config, args.set)
    if args.out is not None:
        if (args.out / "adapter.safetensors").exists():
            raise ValueError(f"{args.out} already holds a run; choose another --out")
        check_writable(args.out, "--out")
    try:
        check_inputs(config)
    except ValueError as err:  # name the config file(s), as a config error does
        raise ValueError(f"{' + '.join(map(str, args.config))}: {err}") from None
    try:
        result = train_run(config, progress=True)
    except TrainingDiverged as err:
        raise RunFailed(str(err)) from None
    summary = {**result.metrics, "status": result.status, "method": config.method,
               "inserted_params": result.inserted_params, "seconds": round(result.seconds, 3)}
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=True))
        save_adapter(result.model, args.out / "adapter.safetensors",
                     {"method": config.method, "hp": config.hp, "backbone": config.backbone})
        (args.out / "metrics.json").write_text(json.dumps(summary, sort_keys=True))
    print(json.dumps(summary, sort_keys=True))
    return 0


def check_train_config(paths: list[Path], overrides: list[str]) -> int:
    """``train --check``: the run the files describe, resolved (the study's flags to a method, its
    keys to ours), and the grid they list with its size; every point validated, nothing run."""
    import math

    from peft_core.run_config import merged_values, resolve_grid
    config, grid = resolve_grid(*merged_values(paths, overrides))
    resolved = config.to_dict()
    for key, points in grid.items():  # the grid's keys as the lists they are
        (resolved["hp"] if key in resolved["hp"] else resolved)[key] = points
    print(yaml.safe_dump(resolved, sort_keys=True), end="")
    size = math.prod(len(points) for points in grid.values())
    print(f"# method {config.method}; " + (f"grid of {size} points: " + ", ".join(
        f"{k} x{len(v)}" for k, v in grid.items()) if grid else "one point (no grid)"))
    return 0


def data(args: argparse.Namespace) -> int:
    from peft_core.data.minivtab import build_minivtab
    print(build_minivtab(args.out))
    return 0


def schema(args: argparse.Namespace) -> int:
    from .study import study_schema
    print(json.dumps(study_schema(), indent=2, sort_keys=True))
    return 0
