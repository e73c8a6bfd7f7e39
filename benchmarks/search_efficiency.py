"""TPE + per-cell ASHA against the exhaustive grid on mini-VTAB: epochs spent, best val top-1.

Two real studies on the same cells with the shipped pretrained tiny ViT: the paper's way (every
grid point trained to the end) and the service's default (TPE over the same grid, ASHA rungs in
epochs). Target: TPE + ASHA spends <= 1/3 of the grid's epochs and reaches its best val top-1
within 0.5 points.

    python benchmarks/search_efficiency.py [--data data/minivtab] [--datasets digits_rot fashion_unseen]
        [--samples 8] [--grace 1] [--reduction 3] [--warm-start] [--json]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import yaml

from peft_core.data.minivtab import build_minivtab
from search.tune.driver import run_study
from search.tune.status import summarize

GRID = {"lr": {"grid": [0.001, 0.003, 0.01]}, "lora_bottleneck": {"grid": [1, 4, 8, 16]}}


def study(data: Path, datasets: list[str], epochs: int, search: dict) -> dict:
    return {"name": "search-efficiency", "backbone": "fmnist_vit_tiny", "data_root": str(data),
            "datasets": datasets, "methods": ["lora"],
            "train": {"epoch": epochs, "warmup_epoch": 1, "eval_freq": 0},
            "spaces": {"lora": GRID}, "search": {"max_concurrent": 2, **search},
            "final": {"seeds": [42]}, "resources": {"cpu": 1}}


def run(folder: Path, config: dict) -> dict:
    folder.mkdir(parents=True)
    (folder / "study.yaml").write_text(yaml.safe_dump(config))
    summary = summarize(run_study(folder / "study.yaml", folder / "out"))
    return {cell: {"best_val": info["best_val"], "epochs": info["tune_epochs"], "trials": info["trials"],
                   "seconds": info["seconds"]} for cell, info in summary["cells"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/minivtab"))
    parser.add_argument("--datasets", nargs="+", default=["digits_rot"])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--grace", type=int, default=2, help="ASHA grace period (epochs)")
    parser.add_argument("--reduction", type=int, default=3, help="ASHA reduction factor")
    parser.add_argument("--warm-start", action="store_true", help="search.warm_start: true")
    parser.add_argument("--grid-from", type=Path, metavar="JSON",
                        help="the grid's numbers from an earlier --json run with the same data and epochs "
                             "(the grid is deterministic on the CPU and costs most of the time)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    build_minivtab(args.data, args.datasets)
    with tempfile.TemporaryDirectory() as tmp:
        if args.grid_from:
            earlier = json.loads(args.grid_from.read_text().strip().splitlines()[-1])
            grid = {cell: row["grid"] for cell, row in earlier.items()}
        else:
            grid = run(Path(tmp) / "grid", study(args.data.resolve(), args.datasets, args.epochs,
                                                 {"sampler": "grid", "num_samples": "grid", "asha": None}))
        tpe = run(Path(tmp) / "tpe", study(args.data.resolve(), args.datasets, args.epochs, {
            "sampler": "tpe", "num_samples": args.samples, "warm_start": args.warm_start,
            "asha": {"grace_period": args.grace, "reduction_factor": args.reduction, "max_t": args.epochs}}))
    rows = {}
    for cell in grid:
        rows[cell] = {"grid": grid[cell], "tpe_asha": tpe[cell],
                      "epoch_ratio": tpe[cell]["epochs"] / grid[cell]["epochs"],
                      "val_gap": grid[cell]["best_val"] - tpe[cell]["best_val"]}
        print(f"{cell:20s} grid {grid[cell]['epochs']:4d} epochs best {grid[cell]['best_val']:.1f} | "
              f"TPE+ASHA {tpe[cell]['epochs']:4d} epochs best {tpe[cell]['best_val']:.1f} | "
              f"{rows[cell]['epoch_ratio']:.2f}x epochs, gap {rows[cell]['val_gap']:+.1f}", flush=True)
    if args.json:
        print(json.dumps(rows, sort_keys=True))


if __name__ == "__main__":
    main()
