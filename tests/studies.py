"""A small study run to its end in this process (real Ray, started and shut down here)."""
from pathlib import Path

import yaml


def run_study(study: dict, root: Path, out: str = "out") -> Path:
    """Write ``study`` to ``root/study.yaml`` (its relative paths are relative to ``root``), run it
    into ``root/out`` and return that folder; the run must succeed."""
    import ray

    from search.cli import main
    study_file = root / "study.yaml"
    study_file.write_text(yaml.safe_dump(study))
    try:
        assert main(["run", str(study_file), "--out", str(root / out)]) == 0
    finally:
        ray.shutdown()
    return root / out
