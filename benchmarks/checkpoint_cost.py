"""What checkpointing every epoch (``checkpoint_every: 1``, the default) costs per epoch.

The same training run (tiny ViT on mini-VTAB digits, CPU) with a checkpoint written after every
epoch and with checkpoints only at its evaluation epochs (``checkpoint_every: 0``), each handed
to a report callback that keeps nothing, alternating which runs first; every-epoch is also timed
against itself to show the noise. Prints per-epoch seconds, the ratio and the noise.

    python benchmarks/checkpoint_cost.py [--method lora] [--epochs 10] [--rounds 3] [--json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from peft_core.data.minivtab import build_minivtab
from peft_core.train import TrainConfig, train


def seconds_per_epoch(data: Path, method: str, epochs: int, every: int) -> float:
    config = TrainConfig(method=method, backbone="tiny_vit_b16_in21k", pretrained=False, data="digits",
                         data_path=str(data), epoch=epochs, warmup_epoch=1, checkpoint_every=every)
    start = time.perf_counter()
    train(config, report=lambda metrics, folder: None)
    return (time.perf_counter() - start) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="lora")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = build_minivtab(Path(tmp), ["digits"])
        seconds_per_epoch(data, args.method, 2, 1)  # warm-up: imports, caches
        every, sparse, again = [], [], []
        for r in range(args.rounds):
            order = [(every, 1), (sparse, 0), (again, 1)] if r % 2 == 0 else [(again, 1), (sparse, 0), (every, 1)]
            for bucket, setting in order:
                bucket.append(seconds_per_epoch(data, args.method, args.epochs, setting))
    ratios = [a / b for a, b in zip(every, sparse)]
    noise = [a / b for a, b in zip(every, again)]
    result = {"method": args.method, "epochs": args.epochs, "rounds": args.rounds,
              "s_per_epoch_every": statistics.median(every), "s_per_epoch_eval_only": statistics.median(sparse),
              "extra_ms_per_epoch": 1000 * (statistics.median(every) - statistics.median(sparse)),
              "ratio_every_over_eval_only": ratios, "noise_every_over_every": noise}
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
