"""The bodies of the CLI's sub-commands (argument parsing lives in ``cli``)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml

import peft_core
from peft_core.checkpoint import save_adapter
from peft_core.run_config import load_train_config
from peft_core.train import TrainingDiverged, train as train_run


class RunFailed(Exception):
    """A run started and failed (e.g. its loss diverged): exit code 1, not a usage error."""


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


def train(args: argparse.Namespace) -> int:
    config = load_train_config(args.config, args.set)
    if args.out is not None and (args.out / "adapter.safetensors").exists():
        raise ValueError(f"{args.out} already holds a run; choose another --out")
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


def run(args: argparse.Namespace) -> int:
    from .driver import run_study, summarize
    study_dir = run_study(args.study, args.out)
    _print_status(summarize(study_dir), study_dir)
    return 0


def resume(args: argparse.Namespace) -> int:
    from .driver import resume_study, summarize
    study_dir = resume_study(args.study_dir)
    _print_status(summarize(study_dir), study_dir)
    return 0


def status(args: argparse.Namespace) -> int:
    from .driver import load_study_dir, summarize
    load_study_dir(args.study_dir)  # a clear error when it is not a study folder
    summary = summarize(args.study_dir)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        _print_status(summary, args.study_dir)
    return 0


def _print_status(summary: dict, study_dir: Path) -> None:
    print(f"{study_dir}: cells {summary['cells_done']}/{len(summary['cells'])} done, trials "
          f"{summary['trials_finished']} finished ({summary['trials_pruned']} pruned, "
          f"{summary['trials_failed']} failed), {summary['trials_running']} running, "
          f"{summary['budget']['epochs']} epochs, {summary['budget']['seconds']:.0f} s")
    print(f"{'cell':32s} {'trials':>7s} {'best val':>9s} {'test top-1':>11s}  best params")
    for cell, info in summary["cells"].items():
        best = "-" if info["best_val"] is None else f"{info['best_val']:.2f}"
        tests = [t for t in info["test_top1"] if t is not None]
        test = "-" if not tests else f"{sum(tests) / len(tests):.2f}"
        print(f"{cell:32s} {info['trials']:>3d}/{info['budget']:<3d} {best:>9s} {test:>11s}  "
              f"{info['best_params'] or ''}")


def export(args: argparse.Namespace) -> int:
    from .export import export_study
    for cell, info in export_study(args.study_dir, args.out).items():
        merged = " + merged weights" if info["merged"] else ""
        print(f"{cell}: {info['folder']} (test top-1 {info.get('test_top1', float('nan')):.2f}{merged})")
    return 0


def report(args: argparse.Namespace) -> int:
    from .report import report as make_report
    if args.study_dir is not None:
        from .driver import load_study_dir
        study, uri = load_study_dir(args.study_dir)
        experiment = study.experiment
    elif args.tracking_uri and args.experiment:
        uri, experiment = args.tracking_uri, args.experiment
    else:
        raise ValueError("give STUDY_DIR, or --tracking-uri and --experiment")
    result = make_report(uri, experiment, args.out)
    other = f", other datasets: {', '.join(result['datasets'])}" if result.get("datasets") else ""
    print(f"{args.out}: VTAB-1K table of {result['rows']} methods{other}; missing: "
          f"{', '.join(result['missing']) or 'nothing'}")
    return 0


def import_petl(args: argparse.Namespace) -> int:
    from .importer import import_petl as run_import
    from .tracking import check_tracking_server
    check_tracking_server(args.tracking_uri)
    written = run_import(args.tune_output, args.tracking_uri, args.experiment)
    print(f"imported {len(written)} cells, {sum(written.values())} runs into experiment '{args.experiment}'")
    return 0


def data(args: argparse.Namespace) -> int:
    from peft_core.data.minivtab import build_minivtab
    print(build_minivtab(args.out))
    return 0


def demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    return run_demo()
