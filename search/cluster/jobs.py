"""Submit a study to a running Ray cluster through the Ray Jobs API, and manage its jobs.

The job ships the project's code and the study (includes merged, every path absolute) as its
working directory, and the project's requirements as its pip environment; it runs
``peft-search run`` on the cluster, whose driver writes the study folder at ``storage_path``.
"""
from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# What a job needs of the project: its packages and the spaces a study may include.
SHIPPED = ("peft_core", "search", "spaces", "pyproject.toml")
STUDY_FILE = "submitted_study.yaml"
JOB_ENV = {"HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


def project_requirements() -> list[str]:
    """The installed project's declared dependencies (extras left out)."""
    try:
        requires = importlib.metadata.requires("peft-search") or []
    except importlib.metadata.PackageNotFoundError:
        raise ValueError("peft-search is not installed (pip install -e .); cannot list its requirements") from None
    return [r for r in requires if "extra ==" not in r]


def read_requirements(path: Path) -> list[str]:
    if not path.is_file():
        raise ValueError(f"--requirements: file not found: {path}")
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def stage_job(study_file: Path, storage_path: str | None, folder: Path) -> tuple[dict, str]:
    """Write the job's working directory into ``folder``; returns (study mapping, study dir).

    Validates the study as ``run`` would, except the data, which may exist on the cluster only.
    """
    from ..study import StudyError, load_study, portable_mapping
    study = load_study(study_file, check_data=False)
    mapping = portable_mapping(study_file)
    if storage_path is not None:
        mapping["storage_path"] = str(Path(storage_path).resolve())
    if not mapping.get("storage_path"):
        raise StudyError(f"{study_file}: storage_path: not set; a study on a cluster needs a folder every node "
                         "mounts (NFS, a shared volume): set it in the study or pass --storage-path")
    for name in SHIPPED:
        source = PROJECT_ROOT / name
        if source.is_dir():
            shutil.copytree(source, folder / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(source, folder / name)
    (folder / STUDY_FILE).write_text(yaml.safe_dump(mapping, sort_keys=False))
    return {**mapping, "name": study.name}, mapping["storage_path"]


def runtime_env(folder: Path, requirements: list[str]) -> dict:
    env: dict = {"working_dir": str(folder), "env_vars": dict(JOB_ENV)}
    if requirements:
        env["pip"] = {"packages": requirements, "pip_check": False}
    return env


def client(address: str | None):
    """A Jobs API client; a wrong address or a missing token is one clear line."""
    from ray.job_submission import JobSubmissionClient
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        os.environ.setdefault("RAY_AUTH_MODE", "token")  # a Ray client sends no token without it
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not address:
        raise ValueError("no cluster address: pass --address http://HEAD:8265 or set RAY_ADDRESS")
    try:
        return JobSubmissionClient(address)
    except ConnectionError as err:
        raise ValueError(f"cannot reach the Ray dashboard at {address}: {str(err).splitlines()[0]}") from None
    except Exception as err:  # ray.exceptions.AuthenticationError and kin: keep the first line
        if "auth" in type(err).__name__.lower() or "token" in str(err).lower():
            raise ValueError(f"{address}: the cluster refused the token; set RAY_AUTH_TOKEN (or "
                             "RAY_AUTH_TOKEN_PATH) to the cluster's token (ray get-auth-token on the head)") from None
        raise


def submit(address: str | None, study_file: Path, storage_path: str | None = None,
           requirements: list[str] | None = None, entrypoint_num_cpus: float = 0) -> tuple[str, str]:
    """Submit ``study_file``; returns (job id, study dir on the cluster)."""
    staging = Path(tempfile.mkdtemp(prefix="peft-search-job-"))
    try:
        mapping, study_dir = stage_job(Path(study_file), storage_path, staging)
        jobs = client(address)
        name = re.sub(r"[^A-Za-z0-9_-]", "-", mapping["name"])
        job_id = jobs.submit_job(
            entrypoint=f"python -m search.cli run {STUDY_FILE} --out {study_dir}",
            submission_id=f"peft-search-{name}-{time.strftime('%Y%m%d-%H%M%S')}",
            runtime_env=runtime_env(staging, project_requirements() if requirements is None else requirements),
            metadata={"study": mapping["name"], "study_dir": study_dir},
            entrypoint_num_cpus=entrypoint_num_cpus)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # the upload is done once submit_job returns
    return job_id, study_dir


def follow(address: str | None, job_id: str, out=sys.stdout) -> str:
    """Stream the job's log (the Jobs API's log websocket) until the job ends; returns its final
    status."""
    import asyncio
    jobs = client(address)

    async def stream() -> None:
        async for chunk in jobs.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    asyncio.run(stream())
    return str(jobs.get_job_status(job_id).value)


def job_status(address: str | None, job_id: str) -> dict:
    info = client(address).get_job_info(job_id)
    return {"job_id": job_id, "status": str(info.status.value), "message": info.message,
            "entrypoint": info.entrypoint, "metadata": info.metadata or {},
            "start_time": info.start_time, "end_time": info.end_time, "driver_node_id": info.driver_node_id}


def job_logs(address: str | None, job_id: str) -> str:
    return client(address).get_job_logs(job_id)


def stop_job(address: str | None, job_id: str) -> bool:
    return client(address).stop_job(job_id)
