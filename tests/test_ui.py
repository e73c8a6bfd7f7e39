"""`peft-search ui`: the MLflow UI on a study's own store, served on 127.0.0.1."""
import json
import os
import signal
import subprocess
import sys
import urllib.request

from search.cluster.local import free_port
from search.mlflow_server import wait_until_serving


def test_ui_serves_the_studys_own_store(tiny_study):
    study_dir = tiny_study
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    ui = subprocess.Popen([sys.executable, "-m", "search.cli", "ui", str(study_dir), "--port", str(port)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          start_new_session=True)
    try:
        first = ui.stdout.readline()
        assert f"http://127.0.0.1:{port}/#/experiments/" in first, first
        experiment_id = first.split("#/experiments/")[1].split("/")[0]
        assert "workflowType=machine_learning" in first, first  # MLflow 3 UI: model training, not GenAI
        base = f"http://127.0.0.1:{port}"
        wait_until_serving(base, 120, ui)
        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=tiny-study") as r:
            experiment = json.load(r)["experiment"]
        assert experiment["experiment_id"] == experiment_id
        # a model-training experiment: the UI opens on its runs, not on the GenAI overview
        assert {"key": "mlflow.experimentKind", "value": "custom_model_development"} in experiment["tags"]
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
