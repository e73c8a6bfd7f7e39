import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def minivtab(tmp_path_factory):
    """mini-VTAB digits and digits_rot written in the processed VTAB-1K layout."""
    from peft_core.data.minivtab import build_minivtab
    return build_minivtab(tmp_path_factory.mktemp("minivtab"), ["digits", "digits_rot"])


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server over HTTP on 127.0.0.1 (started by ``peft-search
    mlflow-server``), stopped by pid at the end."""
    import subprocess
    import sys
    import time
    import urllib.request
    from search.cluster.local import free_port
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "search.cli", "mlflow-server", "--port", str(port),
                             "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                             "--artifacts-destination", str(root / "artifacts")],
                            stdout=open(root / "server.log", "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2):
                break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"MLflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield uri
    os.killpg(proc.pid, 9)
    proc.wait()
