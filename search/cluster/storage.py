"""Is the study folder shared by every node of the Ray cluster?

Trials write checkpoints into it from whichever node runs them, and a trial retried on another
node reads them back; a folder only the head sees would lose them silently.
"""
from __future__ import annotations

import secrets
from pathlib import Path

from ..study import StudyError


def check_shared_storage(study_dir: Path, timeout_s: float = 120.0) -> int:
    """Write a marker into ``study_dir`` and read it back on every alive node; returns the node
    count. Raises StudyError naming the nodes that cannot see it."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return len(nodes)
    token = secrets.token_hex(16)
    marker = Path(study_dir) / f".storage-check-{token}"
    marker.write_text(token)

    def read_marker(path: str) -> str | None:  # nested: shipped by value, the node imports nothing of ours
        try:
            with open(path) as file:
                return file.read()
        except OSError:
            return None

    read = ray.remote(num_cpus=0)(read_marker)
    try:
        seen = ray.get([read.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                        .remote(str(marker)) for n in nodes], timeout=timeout_s)
    finally:
        marker.unlink(missing_ok=True)
    blind = [f"{n['NodeID'][:12]} ({n['NodeManagerAddress']})" for n, text in zip(nodes, seen) if text != token]
    if blind:
        raise StudyError(f"storage_path {study_dir}: not shared by every node; node(s) {', '.join(blind)} cannot "
                         "see it. Put storage_path on storage all nodes mount (NFS, a shared volume)")
    return len(nodes)
