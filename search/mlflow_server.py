"""Start an MLflow tracking server in place of this process (so stopping it by pid stops the
server): the cluster's ``mlflow-server`` and ``ui`` on a study's own store both use it."""
from __future__ import annotations

import os
import sys


def exec_mlflow_server(backend_store_uri: str, host: str, port: int, workers: int = 1,
                       artifacts_destination: str | None = None) -> None:
    """Never returns. With ``artifacts_destination`` the server also serves (proxies) artifacts;
    without, runs keep their own artifact locations (a study's local ``mlartifacts``)."""
    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri,
            "--host", host, "--port", str(port), "--workers", str(workers)]
    if artifacts_destination is not None:
        argv += ["--artifacts-destination", artifacts_destination, "--serve-artifacts"]
    os.execve(argv[0], argv, {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})


def wait_until_serving(uri: str, timeout_s: float = 120.0, proc=None, log=None) -> None:
    """Block until the server at ``uri`` answers ``/health``; TimeoutError (with the log's tail)
    when it does not in ``timeout_s`` or its process ``proc`` ended."""
    import time
    import urllib.request
    deadline = time.time() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=2):
                return
        except OSError:
            if time.time() > deadline or (proc is not None and proc.poll() is not None):
                tail = open(log).read()[-3000:] if log is not None else ""
                raise TimeoutError(f"MLflow server {uri} not serving\n{tail}") from None
            time.sleep(0.5)


def start_mlflow_server(backend_store_uri: str, port: int, artifacts_destination: str, log_file):
    """``peft-search mlflow-server`` as a child process in its own session (stop it with
    ``os.killpg(proc.pid, ...)``), serving on 127.0.0.1:``port`` once ``wait_until_serving``
    returns. For tests and benchmarks."""
    import subprocess
    return subprocess.Popen([sys.executable, "-m", "search.cli", "mlflow-server", "--port", str(port),
                             "--workers", "1", "--backend-store-uri", backend_store_uri,
                             "--artifacts-destination", str(artifacts_destination)],
                            stdout=open(log_file, "w"), stderr=subprocess.STDOUT, start_new_session=True)
