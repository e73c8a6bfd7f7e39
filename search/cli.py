"""``peft-search``: one entry point, one sub-command per job. Errors are one line, exit code 2."""
from __future__ import annotations

import argparse
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
    p.set_defaults(func=commands.report)

    p = sub.add_parser("import-petl", help="import the study's released tune_output into MLflow")
    p.add_argument("tune_output", type=Path, metavar="TUNE_OUTPUT_DIR")
    p.add_argument("--tracking-uri", required=True)
    p.add_argument("--experiment", required=True)
    p.set_defaults(func=commands.import_petl)

    p = sub.add_parser("data", help="build the bundled mini-VTAB tasks in the VTAB-1K layout")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=commands.data)

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
