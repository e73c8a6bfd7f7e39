"""``make demo``: the main job on an embedded default, on a CPU, offline.

Builds mini-VTAB from bundled real data, runs ``spaces/demo.yaml`` (the shipped pretrained tiny
ViT; 3 tasks x 5 methods; TPE + per-cell ASHA; a final run per cell) with a local Ray and a
local MLflow store in a fresh study folder, then prints the comparison table.
"""
from __future__ import annotations

import time
from pathlib import Path

from peft_core.data.minivtab import build_minivtab

from ..study import load_study
from .driver import run_study
from .status import summarize

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "spaces" / "demo.yaml"


def comparison_table(study_dir: Path, datasets: list[str], methods: list[str]) -> str:
    """Markdown: a row per method, test top-1 per task and the mean (missing shows as '-')."""
    cells = summarize(study_dir)["cells"]
    lines = ["| method | " + " | ".join(datasets) + " | mean |", "|---" * (len(datasets) + 2) + "|"]
    for method in methods:
        scores = []
        for dataset in datasets:
            tests = [t for t in cells.get(f"{dataset}/{method}", {}).get("test_top1", []) if t is not None]
            scores.append(sum(tests) / len(tests) if tests else None)
        shown = [f"{s:.1f}" if s is not None else "-" for s in scores]
        present = [s for s in scores if s is not None]
        mean = f"{sum(present) / len(present):.1f}" if present else "-"
        lines.append(f"| {method} | " + " | ".join(shown) + f" | {mean} |")
    return "\n".join(lines)


def run_demo() -> int:
    study = load_study(DEMO, check_data=False)
    build_minivtab(REPO / "data" / "minivtab", list(study.datasets))
    out = REPO / "runs" / time.strftime("demo-%Y%m%d-%H%M%S")
    start = time.time()
    study_dir = run_study(DEMO, out)
    print(f"\nmini-VTAB test top-1 (final run of each cell's best config), {time.time() - start:.0f} s:")
    print(comparison_table(study_dir, list(study.datasets), study.methods))
    print(f"\nStudy folder: {study_dir}\n"
          f"Browse it in the MLflow UI:  .venv/bin/peft-search ui {study_dir}   (it prints the page to open)")
    return 0
