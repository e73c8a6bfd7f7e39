"""``peft-search``: one entry point, one sub-command per job. Errors are one line, exit code 2."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

from . import commands

_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def parse_assignments(pairs: list[str]) -> dict[str, Any]:
    """``["k=v", ...]`` -> dict, each value read as YAML (so 8 -> int, true -> bool, [1,2] -> list)."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got '{pair}'")
        try:
            values[key] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ValueError(f"--set {key}: cannot read value '{raw}'") from None
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peft-search", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("methods", help="list every method: what it trains, hyper-parameters, grid")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=commands.methods)

    p = sub.add_parser("params", help="inserted-parameter count of a method on a backbone")
    p.add_argument("--method", required=True)
    p.add_argument("--backbone", default="vit_b16_in21k")
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a hyper-parameter, e.g. --set lora_bottleneck=8 (repeatable)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=commands.params)

    p = sub.add_parser("train", help="one run: tune phase (train/val) or final phase (train+val/test)")
    p.add_argument("--config", action="append", required=True, type=Path, metavar="FILE",
                   help="run YAML; repeat to merge (a PETL_Vision default + method file pair)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key, e.g. --set lr=0.01 (repeatable)")
    p.add_argument("--out", type=Path, help="folder for the adapter (safetensors) and resolved config")
    p.set_defaults(func=commands.train)

    p = sub.add_parser("run", help="run a study: every cell's search, then its final runs")
    p.add_argument("study", type=Path, metavar="STUDY.yaml")
    p.add_argument("--out", type=Path, help="study folder (default: runs/<name>)")
    p.set_defaults(func=commands.run)

    p = sub.add_parser("resume", help="continue an interrupted study without rerunning finished trials")
    p.add_argument("study_dir", type=Path, metavar="STUDY_DIR")
    p.set_defaults(func=commands.resume)

    p = sub.add_parser("status", help="cells, trials running/done/pruned/failed, best per cell, budget")
    p.add_argument("study_dir", type=Path, metavar="STUDY_DIR")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=commands.status)

    p = sub.add_parser("export", help="per cell: runnable YAML, adapter, merged weights")
    p.add_argument("study_dir", type=Path, metavar="STUDY_DIR")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=commands.export)

    p = sub.add_parser("report", help="the study's tables (CSV, Markdown, LaTeX) and figures (PNG)")
    p.add_argument("study_dir", type=Path, nargs="?", metavar="STUDY_DIR")
    p.add_argument("--tracking-uri")
    p.add_argument("--experiment")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--compare-to", type=Path, metavar="STUDY_DIR",
                   help="another study folder: adds delta columns (ours - theirs)")
    p.add_argument("--compare-tracking-uri", help="with --compare-experiment: compare to an MLflow experiment")
    p.add_argument("--compare-experiment")
    p.add_argument("--top-k", type=int, default=1000, help="K of the prediction-overlap analysis")
    p.set_defaults(func=commands.report)

    p = sub.add_parser("import-petl", help="import the study's released tune_output into MLflow")
    p.add_argument("tune_output", type=Path, metavar="TUNE_OUTPUT_DIR")
    p.add_argument("--tracking-uri", required=True)
    p.add_argument("--experiment", required=True)
    p.set_defaults(func=commands.import_petl)

    p = sub.add_parser("data", help="build the bundled mini-VTAB tasks in the VTAB-1K layout")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=commands.data)

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
        else:
            p.add_argument("--alphas", default=",".join(map(str, [round(0.1 * i, 1) for i in range(11)])),
                           help="comma-separated, in [0, 1] (default 0,0.1,...,1)")
        p.set_defaults(func=getattr(commands, name))

    p = sub.add_parser("submit", help="submit a study to a Ray cluster through the Ray Jobs API")
    p.add_argument("study", type=Path, metavar="STUDY.yaml")
    p.add_argument("--address", help="the cluster's dashboard, http://HEAD:8265 (default: $RAY_ADDRESS)")
    p.add_argument("--storage-path", help="the study folder on storage every node mounts (default: the study's)")
    p.add_argument("--requirements", default="project", metavar="project|none|FILE",
                   help="pip packages for the job: the project's own (default), none (the cluster's image "
                        "has the project installed), or a requirements file")
    p.add_argument("--follow", action="store_true", help="print the job's log until it ends")
    p.set_defaults(func=commands.submit)

    p = sub.add_parser("jobs", help="status, logs or stop of a submitted study's job")
    p.add_argument("action", choices=("status", "logs", "stop", "list"))
    p.add_argument("job_id", nargs="?", metavar="JOB_ID")
    p.add_argument("--address", help="the cluster's dashboard, http://HEAD:8265 (default: $RAY_ADDRESS)")
    p.add_argument("--follow", action="store_true", help="logs: keep printing until the job ends")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=commands.jobs)

    p = sub.add_parser("mlflow-server", help="an MLflow tracking server for a cluster's studies")
    p.add_argument("--backend-store-uri", default="sqlite:///mlflow.db",
                   help="sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB")
    p.add_argument("--artifacts-destination", default="./mlartifacts", help="folder or object-store URI")
    p.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 to serve other machines)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=commands.mlflow_server)

    p = sub.add_parser("demo", help="the embedded demo (see README)")
    p.set_defaults(func=commands.demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if hasattr(args, "set"):
            args.set = parse_assignments(args.set)
        return args.func(args)
    except commands.RunFailed as err:
        print(f"peft-search {args.command}: failed: {err}", file=sys.stderr)
        return 1
    except ValueError as err:
        print(f"peft-search {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
