"""A study whose MLflow store is a real PostgreSQL server (started here on a temporary folder,
127.0.0.1, a free port; stopped at the end), logged through an MLflow server as the compose
cluster does, and its report read back from it."""
import csv
import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from search.cli import main
from search.cluster.local import free_port
from search.mlflow_server import start_mlflow_server, wait_until_serving

BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))


def as_postgres(*argv, **kw):
    """PostgreSQL refuses to run as root: its tools run as the package's own user."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run(prefix + list(argv), check=True, capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture
def postgres():
    if not BIN or not shutil.which("runuser"):
        pytest.skip("needs Debian's postgresql package (make test installs it)")
    bin_dir, port = BIN[-1], free_port()
    # The server's user must reach its folder: not under pytest's root-only tmp_path.
    root = Path(tempfile.mkdtemp(prefix="peft-pg-"))
    root.chmod(0o755)
    data = root / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    try:
        as_postgres(f"{bin_dir}/initdb", "-D", str(data), "-U", "postgres", "--auth=trust")
        as_postgres(f"{bin_dir}/pg_ctl", "-D", str(data), "-w", "-l", str(data / "server.log"), "start",
                    "-o", f"-h 127.0.0.1 -p {port} -k {data}")
        try:
            as_postgres(f"{bin_dir}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow")
            yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
        finally:
            as_postgres(f"{bin_dir}/pg_ctl", "-D", str(data), "-m", "immediate", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_study_on_postgresql_and_its_report(postgres, minivtab, tmp_path):
    import ray
    port = free_port()
    server = start_mlflow_server(postgres, port, tmp_path / "artifacts", tmp_path / "mlflow.log")
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(uri, 180, server, tmp_path / "mlflow.log")
        study_file = tmp_path / "study.yaml"
        study_file.write_text(yaml.safe_dump({
            "name": "pg-study", "backbone": "tiny_vit_b16_in21k", "data_root": str(minivtab),
            "datasets": ["digits"], "methods": ["linear", "bitfit"],
            "train": {"epoch": 1, "warmup_epoch": 0, "pretrained": False},
            "spaces": {"linear": {"lr": {"grid": [0.01]}}, "bitfit": {"lr": {"grid": [0.01]}}},
            "search": {"sampler": "grid", "num_samples": "grid", "max_concurrent": 2},
            "mlflow": {"tracking_uri": uri}}))
        try:
            assert main(["run", str(study_file), "--out", str(tmp_path / "out")]) == 0
        finally:
            ray.shutdown()
        assert main(["report", str(tmp_path / "out"), "--out", str(tmp_path / "report")]) == 0
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 9)
        server.wait()
    rows = {r["method"]: r for r in csv.DictReader(open(tmp_path / "report" / "datasets.csv"))}
    assert set(rows) == {"linear", "bitfit"}
    assert all(0.0 <= float(r["digits"]) <= 100.0 for r in rows.values())
    assert int(rows["bitfit"]["params"]) > 0
    # the runs live in PostgreSQL: ask the database itself
    count = as_postgres(f"{BIN[-1]}/psql", postgres, "-tAc", "select count(*) from runs").stdout.strip()
    assert int(count) == 2 + 2 + 2  # per cell: its parent run, one tuning trial, one final run
