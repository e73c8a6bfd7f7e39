"""Two Ray nodes, one study submitted through the Jobs API: how busy are the nodes?

Starts a head and a worker node on this machine (``ray start``, token auth on, one CPU slot
each so the slots match the machine's 2 cores), submits a mini-VTAB study with
``peft-search submit`` and reads the study folder afterwards:

- busy fraction = time inside trials / (wall time x slots), over the study's trial phase (first
  trial start to last trial end) and over the whole job (submit to end); target >= 0.85;
- submit-to-first-trial latency (seconds from the submit call to the first trial's start).

    python benchmarks/cluster_busy.py [--data data/minivtab] [--trials 6] [--epochs 8] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

from peft_core.data.minivtab import build_minivtab
from search.cluster import jobs as cluster
from search.cluster.local import LocalCluster
from search.study_folder import read_trials


def write_study(folder: Path, data: Path, trials: int, epochs: int) -> Path:
    study = {"name": "cluster-busy", "backbone": "fmnist_vit_tiny", "data_root": str(data),
             "datasets": ["digits_rot", "fashion_unseen"], "methods": ["lora"],
             "train": {"epoch": epochs, "warmup_epoch": 1, "eval_freq": 1},
             "spaces": {"lora": {"lr": {"loguniform": [1e-3, 1e-2]}, "lora_bottleneck": {"choice": [4, 8]}}},
             "search": {"sampler": "random", "num_samples": trials, "max_concurrent": 2},
             "final": {"seeds": [42]}, "resources": {"cpu": 1},
             "storage_path": str(folder / "study")}
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def measure(data: Path, trials: int, epochs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp, LocalCluster(workers=1, cpus=1) as local:
        study_file = write_study(Path(tmp), data, trials, epochs)
        os.environ.update({k: local.env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")})
        submitted = time.time()
        job_id, study_dir = cluster.submit(local.address, study_file, requirements=[])
        final = cluster.follow(local.address, job_id, out=sys.stderr)
        ended = time.time()
        if final != "SUCCEEDED":
            raise SystemExit(f"job {job_id} ended {final}")
        records = list(read_trials(study_dir).values())
    first = min(r["started_at"] for r in records)
    last = max(r["ended_at"] for r in records)
    inside = sum(r["seconds"] for r in records)
    slots = 2
    nodes = {n for r in records for n in r.get("nodes", [])}
    return {"trials": len(records), "nodes_used": len(nodes), "slots": slots,
            "seconds_inside_trials": round(inside, 1), "trial_phase_s": round(last - first, 1),
            "job_wall_s": round(ended - submitted, 1),
            "busy_fraction_trial_phase": round(inside / ((last - first) * slots), 3),
            "busy_fraction_job": round(inside / ((ended - submitted) * slots), 3),
            "submit_to_first_trial_s": round(first - submitted, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/minivtab"))
    parser.add_argument("--trials", type=int, default=6, help="tuning trials per cell (2 cells)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not (args.data / "digits_rot").is_dir():
        build_minivtab(args.data)
    result = measure(args.data.resolve(), args.trials, args.epochs)
    if not args.json:
        for key, value in result.items():
            print(f"{key:28s} {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
