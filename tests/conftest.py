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
    from search.cluster.local import free_port
    from search.mlflow_server import start_mlflow_server, wait_until_serving
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    proc = start_mlflow_server(f"sqlite:///{root / 'mlflow.db'}", port, root / "artifacts", root / "server.log")
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(uri, 120, proc, root / "server.log")
    except TimeoutError:
        os.killpg(proc.pid, 9)
        raise
    yield uri
    os.killpg(proc.pid, 9)
    proc.wait()


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory, minivtab):
    """A finished one-cell study (linear on digits, one epoch) with its own sqlite MLflow store."""
    from tests.studies import run_study
    return run_study({
        "name": "tiny-study", "backbone": "tiny_vit_b16_in21k", "data_root": str(minivtab),
        "datasets": ["digits"], "methods": ["linear"],
        "train": {"epoch": 1, "warmup_epoch": 0, "pretrained": False},
        "spaces": {"linear": {"lr": {"grid": [0.01]}}},
        "search": {"sampler": "grid", "num_samples": "grid", "max_concurrent": 1}},
        tmp_path_factory.mktemp("tiny_study"))


@pytest.fixture
def base_study(minivtab):
    """A small valid study mapping (digits; linear and lora) that bad-input tests mutate."""
    return {
        "name": "bad", "backbone": "tiny_vit_b16_in21k", "data_root": str(minivtab),
        "datasets": ["digits"], "methods": ["linear", "lora"],
        "train": {"epoch": 3, "warmup_epoch": 0, "pretrained": False},
        "spaces": {"linear": {"lr": {"loguniform": [0.001, 0.05]}},
                   "lora": {"lr": {"loguniform": [0.0001, 0.01]}, "lora_bottleneck": {"choice": [1, 8]}}},
        "search": {"sampler": "tpe", "num_samples": 2, "asha": {"grace_period": 1, "max_t": 3}},
    }
