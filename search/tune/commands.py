"""The tuning service's commands: ``run``, ``resume``, ``status``, ``demo``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("run", help="run a study: every cell's search, then its final runs")
    p.add_argument("study", type=Path, metavar="STUDY.yaml")
    p.add_argument("--out", type=Path, help="study folder (default: runs/<name>)")
    p.set_defaults(func=run)

    p = sub.add_parser("resume", help="continue an interrupted study without rerunning finished trials")
    p.add_argument("study_dir", type=Path, metavar="STUDY_DIR")
    p.set_defaults(func=resume)

    p = sub.add_parser("simulate", help="run a study on the study's released results instead of training")
    p.add_argument("study", type=Path, metavar="STUDY.yaml")
    p.add_argument("--replay", type=Path, required=True, metavar="TUNE_OUTPUT",
                   help="a PETL_Vision tune_output tree (<experiment>/<dataset>/<task>/<method>/)")
    p.add_argument("--trial-seconds", type=float, default=0.0, metavar="S", help="simulated duration of a trial")
    p.add_argument("--out", type=Path, help="study folder (default: runs/<name>)")
    p.set_defaults(func=simulate)

    p = sub.add_parser("status", help="cells, trials running/done/pruned/failed, best per cell, budget")
    p.add_argument("study_dir", type=Path, metavar="STUDY_DIR")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=status)

    p = sub.add_parser("demo", help="the embedded demo (see README)")
    p.set_defaults(func=demo)


def run(args: argparse.Namespace) -> int:
    from .driver import run_study
    return _finished(run_study(args.study, args.out))


def simulate(args: argparse.Namespace) -> int:
    from .driver import run_study
    from .replay import Replay
    return _finished(run_study(args.study, args.out, Replay.load(args.replay, args.trial_seconds)))


def resume(args: argparse.Namespace) -> int:
    from .driver import resume_study
    return _finished(resume_study(args.study_dir))


def _finished(study_dir: Path) -> int:
    """The status table; exit 0 only when every cell ended with its final runs, else 1 and one
    line per cell that did not, with its first error."""
    from .status import failed_cells, summarize
    summary = summarize(study_dir)
    print_status(summary, study_dir)
    failed = failed_cells(summary)
    for cell, error in failed.items():
        print(f"peft-search: cell {cell} failed: {error}", file=sys.stderr)
    return 1 if failed else 0


def status(args: argparse.Namespace) -> int:
    from ..study_folder import load_study_dir
    from .status import summarize
    load_study_dir(args.study_dir)  # a clear error when it is not a study folder
    summary = summarize(args.study_dir)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print_status(summary, args.study_dir)
    return 0


def print_status(summary: dict, study_dir: Path) -> None:
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


def demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    return run_demo()
