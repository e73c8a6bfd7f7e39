"""The aggregator's commands: ``report`` and ``import-petl``."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
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
    p.set_defaults(func=report)

    p = sub.add_parser("ui", help="the MLflow UI on a study's runs (its own store, or the URL of its server)")
    p.add_argument("study_dir", type=Path, metavar="STUDY_DIR")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=ui)

    p = sub.add_parser("import-petl", help="import the study's released tune_output into MLflow")
    p.add_argument("tune_output", type=Path, metavar="TUNE_OUTPUT_DIR")
    p.add_argument("--tracking-uri", required=True)
    p.add_argument("--experiment", required=True)
    p.set_defaults(func=import_petl)


def report(args: argparse.Namespace) -> int:
    from ..study_folder import tracking_source
    from .build import report as make_report
    if args.study_dir is not None:
        uri, experiment = tracking_source(args.study_dir)
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
    more = f" ... ({len(missing)} in all, see missing.txt)" if len(missing) > 5 else ""
    print(f"missing: {'; '.join(missing[:5])}{more}" if missing else "missing: nothing")
    return 0


def import_petl(args: argparse.Namespace) -> int:
    from ..mlflow_layout import check_tracking_server
    from .importer import import_petl as run_import
    check_tracking_server(args.tracking_uri)
    written = run_import(args.tune_output, args.tracking_uri, args.experiment)
    print(f"imported {len(written)} cells, {sum(written.values())} runs into experiment '{args.experiment}'")
    return 0


def ui(args: argparse.Namespace) -> int:
    """A study on a tracking server: print its experiment's URL. A study with its own store
    (sqlite, file): serve that store here and print the URL to open."""
    from mlflow.tracking import MlflowClient

    from ..mlflow_layout import experiment_page
    from ..mlflow_server import exec_mlflow_server
    from ..study_folder import tracking_source
    uri, experiment = tracking_source(args.study_dir)
    found = MlflowClient(uri).get_experiment_by_name(experiment)
    if found is None:
        raise ValueError(f"{args.study_dir}: no MLflow experiment '{experiment}' at {uri} yet")
    page = experiment_page(found.experiment_id)
    if uri.startswith(("http://", "https://")):
        print(f"{uri.rstrip('/')}/{page}  (the study logs to that server; nothing to start)")
        return 0
    print(f"MLflow UI on {uri}: open http://{args.host}:{args.port}/{page}  (Ctrl-C stops it)", flush=True)
    exec_mlflow_server(uri, args.host, args.port, artifacts_destination=str(Path(args.study_dir) / "mlartifacts"))
    return 0  # not reached
