"""The driver at the study's full scale (issue #12): ``spaces/vtab1k.yaml`` replayed against a peer.

Ours: ``peft-search simulate`` on the full VTAB-1K study (304 cells, 9,804 tuning trials and
304 final runs: the paper's grids), zero-second trials, the real driver (Ray Tune, per-cell
samplers, MLflow on SQLite). The released results of 3 tasks are all this repository has, so the
benchmark writes a ``tune_output`` tree for all 19 tasks in the release's layout (a seeded random
val top-1 per grid point): the driver's cost does not depend on the values.

Peer: what a user assembles by hand -- Ray Tune with Ray's own ``OptunaSearch``,
``ASHAScheduler`` and ``MLflowLoggerCallback`` (SQLite store), the same number of no-op function
trials, the same ``max_concurrent``, one CPU per trial and actor reuse (as ours; without it each
no-op trial starts a Python process, seconds on this machine).

Each side runs in its own process (its peak RSS is the driver's own), in the order given; the
other order and a side against itself show the noise. From MLflow's run end times, the same
source for both: wall time, seconds per trial over the first and the last 1,000 trials; then the
study folder's size and, for ours, ``peft-search status`` on the finished study.

    python benchmarks/driver_scale.py --order ours,peer [--tasks K] [--json]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "spaces" / "vtab1k.yaml"
WINDOW = 1000
MAX_CONCURRENT = 1


def planned_trials(study_file: Path) -> int:
    """Tuning trials (the grids) and one final run per cell."""
    from search.space import grid_points
    from search.study import load_study
    study = load_study(study_file, check_data=False)
    return sum(len(grid_points(study.space(cell.method)) or [{}]) + 1 for cell in study.cells())


def study_file(work: Path, tasks: int) -> Path:
    """vtab1k.yaml on its first ``tasks`` tasks, ``MAX_CONCURRENT``, MLflow on SQLite in ``work``."""
    datasets = yaml.safe_load(STUDY.read_text())["datasets"][:tasks]
    path = work / "study.yaml"
    path.write_text(yaml.safe_dump({"include": [str(STUDY)], "datasets": datasets,
                                    "search": {"max_concurrent": MAX_CONCURRENT},
                                    "mlflow": {"tracking_uri": f"sqlite:///{work / 'mlflow.db'}"}}))
    return path


def write_release(study_path: Path, out: Path) -> None:
    """A tune_output tree covering every cell of the study."""
    from search.space import grid_points
    from search.study import load_study
    study = load_study(study_path, check_data=False)
    rng = random.Random(0)
    for cell in study.cells():
        folder = out / "default_vtab" / "processed_vtab" / cell.dataset / cell.method
        folder.mkdir(parents=True)
        points = grid_points(study.space(cell.method)) or [{}]
        with (folder / "tune_summary.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["param_set", "train_loss", "train_top1", "train_top5", "val_loss", "val_top1", "val_top5"])
            for point in points:
                writer.writerow([repr(point), 0.1, 99.0, 100.0, 0.5, round(rng.uniform(10, 90), 1), 100.0])
        (folder / "final_result.json").write_text(json.dumps({"avg_acc": 50.0, "best_tune": points[-1]}))
        with (folder / "final_summary.csv").open("w", newline="") as f:
            csv.writer(f).writerows([["run_idx", "train_loss", "train_top1", "train_top5", "test_loss",
                                      "test_top1", "test_top5"], [0, 0.1, 99.0, 100.0, 1.0, 50.0, 90.0]])


def run_ours(work: Path, tasks: int) -> dict:
    study = study_file(work, tasks)
    write_release(study, work / "release")
    from search.cli import main
    from search.tune.status import summarize
    start = time.time()
    code = main(["simulate", str(study), "--replay", str(work / "release"), "--out", str(work / "study")])
    wall = time.time() - start
    began = time.perf_counter()
    summarize(work / "study")  # what `peft-search status` computes
    status_s = time.perf_counter() - began
    return {"exit": code, "wall_s": wall, "status_s": status_s,
            "end_times": end_times(f"sqlite:///{work / 'mlflow.db'}", "vtab1k")}


def run_peer(work: Path, tasks: int) -> dict:
    trials = planned_trials(study_file(work, tasks))
    import ray
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    def no_op(config):
        tune.report({"val_top1": random.uniform(10, 90), "epoch": 100})

    space = {"lr": tune.choice([1e-3, 1e-2]), "wd": tune.choice([1e-4, 1e-3]),
             "bottleneck": tune.choice([1, 2, 4, 8, 16, 32, 64]), "scaler": tune.choice([0.01, 0.1, 1.0, 10.0])}
    uri = f"sqlite:///{work / 'mlflow.db'}"
    ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    start = time.time()
    tuner = tune.Tuner(
        tune.with_resources(no_op, {"cpu": 1}), param_space=space,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(OptunaSearch(metric="val_top1", mode="max", seed=0), MAX_CONCURRENT),
            scheduler=ASHAScheduler(metric="val_top1", mode="max", time_attr="epoch", max_t=100, grace_period=10),
            num_samples=trials, reuse_actors=True),  # as ours: a finished trial's actor takes the next
        run_config=tune.RunConfig(name="peer", storage_path=str(work / "ray"), verbose=0,
                                  callbacks=[MLflowLoggerCallback(tracking_uri=uri, experiment_name="peer")]))
    tuner.fit()
    wall = time.time() - start
    ray.shutdown()
    return {"exit": 0, "wall_s": wall, "end_times": end_times(uri, "peer")}


def end_times(uri: str, experiment: str) -> list[float]:
    """End times (s) of every trial's MLflow run, sorted: a trial is done when its run is."""
    from mlflow.tracking import MlflowClient
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    ends, token = [], None
    while True:
        page = client.search_runs([experiment_id], "attributes.status != 'RUNNING'", max_results=5000, page_token=token)
        ends += [r.info.end_time / 1000 for r in page if r.data.tags.get("phase") != "cell" and r.info.end_time]
        token = page.token
        if not token:
            return sorted(ends)


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def side(name: str, tasks: int) -> dict:
    """One side in this process: its numbers, peak RSS of the driver, the folder's size."""
    work = Path(tempfile.mkdtemp(prefix=f"driver-scale-{name}-"))
    try:
        result = (run_ours if name == "ours" else run_peer)(work, tasks)
        ends = result.pop("end_times")
        window = min(WINDOW, len(ends) // 2)
        per_trial = lambda part: (part[-1] - part[0]) / (len(part) - 1)  # noqa: E731
        return {**result, "side": name, "trials": len(ends), "window": window,
                "s_per_trial_first": per_trial(ends[:window]), "s_per_trial_last": per_trial(ends[-window:]),
                # the shape between them: s/trial in each whole window, in order
                "s_per_trial_by_window": [round(per_trial(ends[i:i + window]), 4)
                                          for i in range(0, len(ends) - window + 1, window)],
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "folder_mb": size_mb(work)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--order", default="ours,peer", help="sides in the order they run: ours, peer")
    parser.add_argument("--tasks", type=int, default=19, help="the study's first TASKS tasks (19: all, 10,108 trials)")
    parser.add_argument("--side", help=argparse.SUPPRESS)  # internal: run one side in this process
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.side:
        print(json.dumps(side(args.side, args.tasks)))
        return
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    results = []
    for name in args.order.split(","):
        print(f"[driver-scale] {name} ...", file=sys.stderr, flush=True)
        done = subprocess.run([sys.executable, __file__, "--side", name, "--tasks", str(args.tasks)],
                              env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"[driver-scale] {json.dumps(results[-1])}", file=sys.stderr, flush=True)
    by_side = {r["side"]: r for r in results}
    summary = {"order": args.order, "runs": results}
    if "ours" in by_side and "peer" in by_side:
        ours, peer = by_side["ours"], by_side["peer"]
        summary.update({"wall_ours_over_peer": ours["wall_s"] / peer["wall_s"],
                        "ours_last_over_first": ours["s_per_trial_last"] / ours["s_per_trial_first"],
                        "peer_last_over_first": peer["s_per_trial_last"] / peer["s_per_trial_first"]})
    print(json.dumps(summary, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
