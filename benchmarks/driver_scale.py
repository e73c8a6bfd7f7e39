"""The driver's bookkeeping cost per trial as a study grows (issue #12).

Drives ``StudySearcher`` directly, as Ray Tune would but with no Ray and no training: for each
trial ``suggest``, ``on_trial_result`` at the last epoch, ``on_trial_complete`` (one trial at a
time, a random val top-1). The study is ``spaces/vtab1k.yaml`` (304 cells, 9,804 tuning runs
plus one final run per cell) loaded without its data. Prints JSON: the mean ms per trial over the
first and the last 1,000 trials and their ratio (flat cost: about 1), then the time of
``summarize`` (what ``peft-search status`` shows) on the resulting folder.

    python benchmarks/driver_scale.py --trials 10108 [--dir /dev/shm/scale]

``--dir`` on a tmpfs leaves out the disk's sync per commit (the same at every trial).
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from search.study import load_study
from search.tune.searcher import StudySearcher
from search.tune.status import summarize

WINDOW = 1000


def drive(study_file: Path, study_dir: Path, trials: int) -> list[float]:
    """Seconds per trial (suggest, result, complete) for up to ``trials`` trials."""
    study = load_study(study_file, check_data=False)
    searcher = StudySearcher(study, study_dir)
    rng = random.Random(0)
    costs = []
    for i in range(trials):
        start = time.perf_counter()
        config = searcher.suggest(f"t{i:05d}")
        if not isinstance(config, dict):
            break  # every cell done
        result = {"epoch": config["train"]["epoch"], "val_top1": rng.uniform(0, 100),
                  "test_top1": rng.uniform(0, 100), "trial_seconds": 1.0}
        searcher.on_trial_result(f"t{i:05d}", result)
        searcher.on_trial_complete(f"t{i:05d}", result)
        costs.append(time.perf_counter() - start)
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3000)
    parser.add_argument("--study", type=Path, default=Path(__file__).resolve().parents[1] / "spaces" / "vtab1k.yaml")
    parser.add_argument("--dir", type=Path, help="study folder to fill (default: a temporary one)")
    args = parser.parse_args()
    study_dir = args.dir or Path(tempfile.mkdtemp(prefix="driver-scale-"))
    study_dir.mkdir(parents=True, exist_ok=True)
    costs = drive(args.study, study_dir, args.trials)
    window = min(WINDOW, len(costs) // 2)
    first = 1000 * sum(costs[:window]) / window
    last = 1000 * sum(costs[-window:]) / window
    start = time.perf_counter()
    summary = summarize(study_dir)
    status_s = time.perf_counter() - start
    print(json.dumps({"trials": len(costs), "window": window, "ms_per_trial_first": round(first, 2),
                      "ms_per_trial_last": round(last, 2), "last_over_first": round(last / first, 3),
                      "status_s": round(status_s, 3), "cells_done": summary["cells_done"],
                      "study_dir": str(study_dir)}))


if __name__ == "__main__":
    main()
