"""Commands on a study's trained models: ``export``, ``predict``, ``evaluate``, ``wise``."""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

DEFAULT_ALPHAS = ",".join(map(str, [round(0.1 * i, 1) for i in range(11)]))


def register(sub) -> None:
    p = sub.add_parser("export", help="per cell: runnable YAML, adapter, merged weights")
    p.add_argument("study_dir", type=Path, metavar="STUDY_DIR")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=_seed_choice, default=None, metavar="N|all",
                   help="the final run of seed N, or every seed's (folders <cell>__seed<N>); "
                        "default: each cell's first seed")
    p.set_defaults(func=export)

    p = sub.add_parser("predict", help="an exported cell's top-5 classes for each image")
    p.add_argument("export_dir", type=Path, metavar="EXPORT_DIR", help="a cell folder written by export")
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGE")
    p.set_defaults(func=predict)

    for name, text in (("evaluate", "a trained final run on more test sets (domain shift), logged under that run"),
                       ("wise", "WiSE: the run between its zero-shot start and itself, alpha 0..1, on test sets")):
        p = sub.add_parser(name, help=text)
        source = p.add_mutually_exclusive_group(required=True)
        source.add_argument("--run", metavar="RUN_ID", help="a final run in MLflow (with --tracking-uri)")
        source.add_argument("--export", type=Path, metavar="DIR", help="a cell folder written by export")
        p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"))
        p.add_argument("--data", action="append", required=True, metavar="NAME=FOLDER",
                       help="imagenet, imagenet_v2, imagenet_sketch, imagenet_r or imagenet_a (repeatable)")
        p.add_argument("--batch-size", type=int, default=256)
        p.add_argument("--json", action="store_true")
        if name == "evaluate":
            p.add_argument("--predictions", action="store_true",
                           help="also keep logits and labels as predictions/<NAME>.npz (report: overlap)")
            p.set_defaults(func=evaluate)
        else:
            p.add_argument("--alphas", default=DEFAULT_ALPHAS, help="comma-separated, in [0, 1] (default 0,0.1,...,1)")
            p.set_defaults(func=wise)


def _seed_choice(value: str) -> int | str:
    if value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seed: '{value}' is neither a seed (an integer) nor 'all'") from None


def export(args: argparse.Namespace) -> int:
    from .export import export_study
    for info in export_study(args.study_dir, args.out, args.seed):
        merged = " + merged weights" if info["merged"] else ""
        print(f"{info['cell']} (seed {info['seed']}): {info['folder']} "
              f"(test top-1 {info.get('test_top1', float('nan')):.2f}{merged})")
    return 0


def predict(args: argparse.Namespace) -> int:
    from .predict import predict as classify
    for path, top in classify(args.export_dir, args.images):
        print(f"{path}: " + ", ".join(f"{name} {p:.1f}%" for name, p in top))
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_run, load_run, parse_sets
    sets = parse_sets(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        run = load_run(args.run, args.export, args.tracking_uri, Path(tmp))
        results = evaluate_run(run, sets, args.batch_size, args.predictions)
    if args.json:
        print(json.dumps(results, sort_keys=True))
    for name, r in results.items() if not args.json else ():
        print(f"{name:16s} top-1 {r['top1']:6.2f}  top-5 {r['top5']:6.2f}  ({r['n']} images)")
    print(f"logged under run {run.run_id}" if run.run_id else "not logged: the export names no MLflow run")
    return 0


def wise(args: argparse.Namespace) -> int:
    from .evaluate import load_run, parse_sets, wise_run
    sets = parse_sets(args.data)
    try:
        alphas = [float(a) for a in args.alphas.split(",")]
    except ValueError:
        raise ValueError(f"--alphas {args.alphas}: expected numbers separated by commas") from None
    if not all(0.0 <= a <= 1.0 for a in alphas):
        raise ValueError(f"--alphas {args.alphas}: every alpha must be in [0, 1]")
    with tempfile.TemporaryDirectory() as tmp:
        run = load_run(args.run, args.export, args.tracking_uri, Path(tmp))
        curve = wise_run(run, sets, alphas, args.batch_size)
    if args.json:
        print(json.dumps({str(a): v for a, v in curve.items()}, sort_keys=True))
        return 0
    names = list(sets)
    print("alpha  " + "  ".join(f"{n:>16s}" for n in names))
    for alpha, scores in curve.items():
        print(f"{alpha:5.2f}  " + "  ".join(f"{scores[n]:16.2f}" for n in names))
    return 0
