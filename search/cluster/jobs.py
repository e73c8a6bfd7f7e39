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


def project_python() -> str:
    """The Python versions the installed project declares (``requires-python``)."""
    return importlib.metadata.metadata("peft-search").get("Requires-Python") or ""


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
    stage_code(folder)
    (folder / STUDY_FILE).write_text(yaml.safe_dump(mapping, sort_keys=False))
    return {**mapping, "name": study.name}, mapping["storage_path"]


def stage_code(folder: Path) -> None:
    """The project's code and spaces, the job's working directory."""
    for name in SHIPPED:
        source = PROJECT_ROOT / name
        if source.is_dir():
            shutil.copytree(source, folder / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(source, folder / name)


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


def submit(address: str | None, study_file: Path | None, storage_path: str | None = None,
           requirements: list[str] | None = None, entrypoint_num_cpus: float = 0,
           resume: Path | None = None) -> tuple[str, str]:
    """Submit ``study_file`` (or, with ``resume``, continue the study in that folder on the
    cluster's storage); returns (job id, study dir on the cluster). The cluster's job environment
    is checked first: nothing is uploaded when it cannot run the study."""
    staging = Path(tempfile.mkdtemp(prefix="peft-search-job-"))
    try:
        if resume is None:
            mapping, study_dir = stage_job(Path(study_file), storage_path, staging)
            name, command = mapping["name"], f"run {STUDY_FILE} --out {study_dir}"
        else:
            study_dir = str(check_resumable(resume))
            stage_code(staging)
            name, command = Path(study_dir).name, f"resume {study_dir}"
        jobs = client(address)
        requirements = project_requirements() if requirements is None else requirements
        check_job_environment(jobs, requirements)
        job_id = jobs.submit_job(
            entrypoint=f"python -m search.cli {command}",
            submission_id=f"peft-search-{re.sub(r'[^A-Za-z0-9_-]', '-', name)}-{time.strftime('%Y%m%d-%H%M%S')}",
            runtime_env=runtime_env(staging, requirements),
            metadata={"study": name, "study_dir": study_dir, "resume": str(resume is not None)},
            entrypoint_num_cpus=entrypoint_num_cpus)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # the upload is done once submit_job returns
    return job_id, study_dir


def check_resumable(study_dir: Path) -> Path:
    """A folder this machine sees must be a study folder; one only the cluster sees is the job's
    to check (``resume`` there refuses in one line what is not a study)."""
    from ..study_folder import SEARCH_STATE
    study_dir = Path(study_dir).resolve()
    if study_dir.exists() and not (study_dir / SEARCH_STATE).is_file():
        raise ValueError(f"--resume {study_dir}: not a study folder (no {SEARCH_STATE})")
    return study_dir


# Run by the job environment's own python before a study is uploaded: whether that python fits
# the project's, and which requirements it lacks, has at a version that does not fit, or cannot
# import. The standard library only (and packaging where pip brought it), so it answers even in
# an environment that lacks everything.
_CHECK_SCRIPT = """
import importlib, importlib.metadata as md, json, re, sys
try:
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
except ImportError:
    Requirement = SpecifierSet = None
needed, python = json.loads(sys.argv[1]), sys.version.split()[0]
wrong = []
floor = re.fullmatch(r">=\\s*(\\d+)\\.(\\d+)", needed["python"].strip())
if (python not in SpecifierSet(needed["python"]) if SpecifierSet is not None else
        bool(floor) and sys.version_info[:2] < (int(floor[1]), int(floor[2]))):
    wrong.append(f"python {python} (needs {needed['python']})")
normal = lambda name: re.sub(r"[-_.]+", "-", name).lower()
modules = {}
for module, dists in md.packages_distributions().items():
    for dist in dists:
        modules.setdefault(normal(dist), []).append(module)
for req in needed["requirements"]:
    name = re.match(r"[A-Za-z0-9_.-]+", req).group(0)
    try:
        version = md.version(name)
    except md.PackageNotFoundError:
        wrong.append(f"{name} (missing)")
        continue
    if Requirement is not None and not Requirement(req).specifier.contains(version, prereleases=True):
        wrong.append(f"{name} {version} (needs {Requirement(req).specifier})")
        continue
    tops = sorted(m for m in modules.get(normal(name), []) if not m.startswith("_"))
    top = next((m for m in tops if normal(m) == normal(name)), tops[0] if tops else None)
    try:
        if top is not None:
            importlib.import_module(top)
    except Exception as err:
        wrong.append(f"{name} {version} (import {top} fails: {type(err).__name__})")
print("PEFT_SEARCH_CHECK " + json.dumps({"python": python, "wrong": wrong}))
"""
CHECK_TIMEOUT_S = 900  # a check with pip requirements installs them first (Ray caches that for the job)


def check_job_environment(jobs, requirements: list[str]) -> None:
    """Run ``_CHECK_SCRIPT`` as a job of its own, with the study job's pip environment and no
    code uploaded; one line naming what is missing, and how to fix it, when the study could not run."""
    import json
    import shlex
    needed = {"requirements": project_requirements(), "python": project_python()}
    env: dict = {"env_vars": dict(JOB_ENV)}
    if requirements:
        env["pip"] = {"packages": requirements, "pip_check": False}
    job_id = jobs.submit_job(entrypoint=f"python -c {shlex.quote(_CHECK_SCRIPT)} {shlex.quote(json.dumps(needed))}",
                             submission_id=f"peft-search-check-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
                             runtime_env=env, metadata={"check": "job environment"})
    deadline = time.time() + CHECK_TIMEOUT_S
    while str(jobs.get_job_status(job_id).value) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        if time.time() > deadline:
            jobs.stop_job(job_id)
            raise ValueError(f"the cluster did not run the environment check job {job_id} in {CHECK_TIMEOUT_S} s")
        time.sleep(0.5)
    logs = jobs.get_job_logs(job_id)
    found = [line for line in logs.splitlines() if line.startswith("PEFT_SEARCH_CHECK ")]
    fix = ("submit with --requirements project (pip installs them for the job), or start the cluster's "
           "nodes from an environment with peft-search installed (docker/Dockerfile's image)")
    if not found:
        last = next((line for line in reversed(logs.splitlines()) if line.strip()), "no output")
        raise ValueError(f"the cluster's job environment cannot run the study's python ({last.strip()}); {fix}")
    wrong = json.loads(found[-1].split(" ", 1)[1])["wrong"]
    if wrong:
        raise ValueError(f"the cluster's job environment lacks {', '.join(wrong)}; {fix}")


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
