"""The bodies of the CLI's sub-commands (argument parsing lives in ``cli``).

Heavy imports (torch, Ray, MLflow) happen inside the commands that need them, so that quick
commands such as ``jobs status`` answer at once."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml


class RunFailed(Exception):
    """A run started and failed (e.g. its loss diverged): exit code 1, not a usage error."""


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
    from peft_core.checkpoint import save_adapter
    from peft_core.run_config import load_train_config
    from peft_core.train import TrainingDiverged, train as train_run
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
    compare = args.compare_to
    if compare is None and (args.compare_tracking_uri or args.compare_experiment):
        if not (args.compare_tracking_uri and args.compare_experiment):
            raise ValueError("give --compare-tracking-uri and --compare-experiment together")
        compare = (args.compare_tracking_uri, args.compare_experiment)
    result = make_report(uri, experiment, args.out, compare_to=compare, top_k=args.top_k)
    print(f"{args.out}: tables {', '.join(result['tables']) or 'none'} (CSV, Markdown, LaTeX); "
          f"figures {', '.join(result['figures']) or 'none'}")
    missing = result["missing"]
    print(f"missing: {'; '.join(missing[:5])}{f' ... ({len(missing)} in all, see missing.txt)' if len(missing) > 5 else ''}"
          if missing else "missing: nothing")
    return 0


def import_petl(args: argparse.Namespace) -> int:
    from .importer import import_petl as run_import
    from .tracking import check_tracking_server
    check_tracking_server(args.tracking_uri)
    written = run_import(args.tune_output, args.tracking_uri, args.experiment)
    print(f"imported {len(written)} cells, {sum(written.values())} runs into experiment '{args.experiment}'")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    import tempfile

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
    import tempfile

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


def submit(args: argparse.Namespace) -> int:
    from . import cluster
    if args.requirements == "project":
        requirements = None
    elif args.requirements == "none":
        requirements = []
    else:
        requirements = cluster.read_requirements(Path(args.requirements))
    job_id, study_dir = cluster.submit(args.address, args.study, args.storage_path, requirements)
    print(f"submitted {job_id}\nstudy folder {study_dir}\nwatch: peft-search jobs logs {job_id} --follow | "
          f"peft-search status {study_dir}", flush=True)
    if args.follow:
        final = cluster.follow(args.address, job_id)
        if final != "SUCCEEDED":
            raise RunFailed(f"job {job_id} ended {final}")
    return 0


def jobs(args: argparse.Namespace) -> int:
    from . import cluster
    if args.action == "list":
        for job in cluster.client(args.address).list_jobs():
            print(f"{job.submission_id or job.job_id}  {job.status.value:9s}  {job.entrypoint}")
        return 0
    if not args.job_id:
        raise ValueError(f"jobs {args.action}: give a JOB_ID (peft-search jobs list shows them)")
    try:
        if args.action == "status":
            info = cluster.job_status(args.address, args.job_id)
            print(json.dumps(info, sort_keys=True) if args.json else
                  f"{info['job_id']}: {info['status']} {info['message'] or ''}".rstrip())
        elif args.action == "logs":
            if args.follow:
                cluster.follow(args.address, args.job_id)
            else:
                print(cluster.job_logs(args.address, args.job_id), end="")
        else:
            stopped = cluster.stop_job(args.address, args.job_id)
            print(f"{args.job_id}: {'stop requested' if stopped else 'already finished'}")
    except RuntimeError as err:  # the Jobs API answers an unknown id with an HTTP error
        raise ValueError(f"job {args.job_id}: {str(err).splitlines()[0]}") from None
    return 0


def mlflow_server(args: argparse.Namespace) -> int:
    """Replace this process by ``mlflow server`` (so stopping it by pid stops the server)."""
    import os
    import sys
    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", args.backend_store_uri,
            "--artifacts-destination", args.artifacts_destination, "--serve-artifacts",
            "--host", args.host, "--port", str(args.port), "--workers", str(args.workers)]
    print(f"MLflow tracking server at http://{args.host}:{args.port} (store {args.backend_store_uri})",
          flush=True)
    os.execve(argv[0], argv, {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    return 0  # not reached


def data(args: argparse.Namespace) -> int:
    from peft_core.data.minivtab import build_minivtab
    print(build_minivtab(args.out))
    return 0


def demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    return run_demo()
