"""Cluster commands: ``submit`` (Ray Jobs API), ``jobs``, ``mlflow-server``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import RunFailed


def register(sub) -> None:
    p = sub.add_parser("submit", help="submit a study to a Ray cluster through the Ray Jobs API")
    p.add_argument("study", type=Path, metavar="STUDY.yaml", nargs="?")
    p.add_argument("--resume", type=Path, metavar="STUDY_DIR",
                   help="continue the study in this folder (its storage_path on the cluster) instead")
    p.add_argument("--address", help="the cluster's dashboard, http://HEAD:8265 (default: $RAY_ADDRESS)")
    p.add_argument("--storage-path", help="the study folder on storage every node mounts (default: the study's)")
    p.add_argument("--requirements", default="project", metavar="project|none|FILE",
                   help="pip packages for the job: the project's own (default), none (the cluster's image "
                        "has the project installed), or a requirements file")
    p.add_argument("--follow", action="store_true", help="print the job's log until it ends")
    p.set_defaults(func=submit)

    p = sub.add_parser("jobs", help="status, logs or stop of a submitted study's job")
    p.add_argument("action", choices=("status", "logs", "stop", "list"))
    p.add_argument("job_id", nargs="?", metavar="JOB_ID")
    p.add_argument("--address", help="the cluster's dashboard, http://HEAD:8265 (default: $RAY_ADDRESS)")
    p.add_argument("--follow", action="store_true", help="logs: keep printing until the job ends")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=jobs)

    p = sub.add_parser("mlflow-server", help="an MLflow tracking server for a cluster's studies")
    p.add_argument("--backend-store-uri", default="sqlite:///mlflow.db",
                   help="sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB")
    p.add_argument("--artifacts-destination", default="./mlartifacts", help="folder or object-store URI")
    p.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 to serve other machines)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=mlflow_server)


def submit(args: argparse.Namespace) -> int:
    from . import jobs as cluster
    if args.requirements == "project":
        requirements = None
    elif args.requirements == "none":
        requirements = []
    else:
        requirements = cluster.read_requirements(Path(args.requirements))
    if (args.study is None) == (args.resume is None):
        raise ValueError("submit: give a STUDY.yaml to start, or --resume STUDY_DIR to continue one (not both)")
    job_id, study_dir = cluster.submit(args.address, args.study, args.storage_path, requirements, resume=args.resume)
    print(f"submitted {job_id}\nstudy folder {study_dir}\nwatch: peft-search jobs logs {job_id} --follow | "
          f"peft-search status {study_dir}", flush=True)
    if args.follow:
        final = cluster.follow(args.address, job_id)
        if final != "SUCCEEDED":
            raise RunFailed(f"job {job_id} ended {final}")
    return 0


def jobs(args: argparse.Namespace) -> int:
    from . import jobs as cluster
    if args.action == "list":
        for job in cluster.client(args.address).list_jobs():
            lines = job.entrypoint.splitlines() or [""]  # a check job's is a whole script: its first line
            print(f"{job.submission_id or job.job_id}  {job.status.value:9s}  {lines[0]}{' ...' if len(lines) > 1 else ''}")
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
    from ..mlflow_server import exec_mlflow_server
    print(f"MLflow tracking server at http://{args.host}:{args.port} (store {args.backend_store_uri})",
          flush=True)
    exec_mlflow_server(args.backend_store_uri, args.host, args.port, args.workers, args.artifacts_destination)
    return 0  # not reached
