"""``peft-search``: one entry point, one sub-command per job. Errors are one line, exit code 2.

Each sub-package registers its own commands: ``core_commands`` (methods, params, train, data,
schema), ``tune`` (run, simulate, resume, status, demo), ``models`` (export, predict, evaluate,
wise), ``report`` (report, ui, import-petl), ``cluster`` (submit, jobs, mlflow-server)."""
from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from . import core_commands
from .cluster import commands as cluster_commands
from .errors import RunFailed
from .models import commands as model_commands
from .report import commands as report_commands
from .tune import commands as tune_commands


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
    for commands in (core_commands, tune_commands, model_commands, report_commands, cluster_commands):
        commands.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if hasattr(args, "set"):
            args.set = parse_assignments(args.set)
        return args.func(args)
    except RunFailed as err:
        print(f"peft-search {args.command}: failed: {err}", file=sys.stderr)
        return 1
    except ValueError as err:
        print(f"peft-search {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
