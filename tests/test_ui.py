"""`peft-search ui`: the MLflow UI on a study's own store, served on 127.0.0.1."""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import yaml

from search.cli import main
from search.cluster.local import free_port


def test_ui_serves_the_studys_own_store(tmp_path, minivtab, capsys):
    import ray
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump({
        "name": "ui-study", "backbone": "tiny_vit_b16_in21k", "data_root": str(minivtab),
        "datasets": ["digits"], "methods": ["linear"],
        "train": {"epoch": 1, "warmup_epoch": 0, "pretrained": False},
        "spaces": {"linear": {"lr": {"grid": [0.01]}}},
        "search": {"sampler": "grid", "num_samples": "grid", "max_concurrent": 1}}))
    study_dir = tmp_path / "out"
    try:
        assert main(["run", str(study_file), "--out", str(study_dir)]) == 0
    finally:
        ray.shutdown()
    capsys.readouterr()
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    ui = subprocess.Popen([sys.executable, "-m", "search.cli", "ui", str(study_dir), "--port", str(port)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          start_new_session=True)
    try:
        first = ui.stdout.readline()
        assert f"http://127.0.0.1:{port}/#/experiments/" in first, first
        experiment_id = first.split("#/experiments/")[1].split()[0]
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2):
                    break
            except OSError:
                assert time.time() < deadline and ui.poll() is None, ui.stdout.read()[-2000:]
                time.sleep(0.5)
        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=ui-study") as r:
            assert json.load(r)["experiment"]["experiment_id"] == experiment_id
        request = urllib.request.Request(f"{base}/api/2.0/mlflow/runs/search", method="POST",
                                         data=json.dumps({"experiment_ids": [experiment_id]}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request) as r:
            tags = [{t["key"]: t["value"] for t in run["data"]["tags"]} for run in json.load(r)["runs"]]
        phases = sorted(t["phase"] for t in tags)
        assert phases == ["cell", "final", "tune"], phases  # one cell, one trial, one final run
    finally:
        os.killpg(ui.pid, signal.SIGKILL)
        ui.wait()
