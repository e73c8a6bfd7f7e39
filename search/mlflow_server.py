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
