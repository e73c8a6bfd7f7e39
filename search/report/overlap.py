"""Do methods get the same samples right? (the paper's Figure 1b)

Convention: a ``phase=final`` run may carry ``predictions/<set>.npz`` with ``logits`` (N×C float)
and ``labels`` (N int), in the same sample order for every method of a dataset (``test`` is the
run's own test set). For each method take its K most confident correct predictions (confidence
= softmax probability of the predicted class); count how many of them every other method also
has among its K (shared with all), no other method has (unique), and the rest (shared with some).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from .records import Artifacts, StudyRecords, pivot
from .tabular import Column, Table

PREDICTIONS = "predictions"


def confident_correct(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Indices of the correct predictions, most confident first (ties: lower index first)."""
    logits = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    confidence = (probs / probs.sum(axis=1, keepdims=True)).max(axis=1)
    correct = np.flatnonzero(logits.argmax(axis=1) == labels)
    return correct[np.argsort(-confidence[correct], kind="stable")]


def prediction_overlap(predictions: dict[str, tuple[np.ndarray, np.ndarray]], k: int) -> dict[str, dict]:
    """{method: {k, shared_with_all, shared_with_some, unique}} over each method's top-K confident
    correct samples; K is ``k`` or the fewest correct predictions of any method if that is less."""
    return _overlap({m: confident_correct(logits, labels) for m, (logits, labels) in predictions.items()}, k)


def _overlap(ranked: dict[str, np.ndarray], k: int) -> dict[str, dict]:
    k = min([k] + [len(r) for r in ranked.values()])
    top = {m: set(r[:k].tolist()) for m, r in ranked.items()}
    everyone = set.intersection(*top.values()) if top else set()
    result = {}
    for method, samples in top.items():
        others = set().union(*(s for m, s in top.items() if m != method))
        unique = len(samples - others)
        shared = len(samples & everyone)
        result[method] = {"k": k, "shared_with_all": shared, "shared_with_some": k - shared - unique,
                          "unique": unique}
    return result


def _ranked(artifacts: Artifacts, run_id: str, path: str, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(labels, confident correct indices) of one predictions file; the logits are not kept."""
    local = artifacts.download(run_id, path, folder)
    with np.load(local) as data:
        labels = np.asarray(data["labels"])
        ranked = confident_correct(np.asarray(data["logits"]), labels)
    local.unlink()
    return labels, ranked


def overlap_table(study: StudyRecords, k: int = 1000) -> tuple[Table | None, dict[tuple[str, str], dict]]:
    """The overlap of every (dataset, set) that at least two methods logged predictions for: the
    table and {(dataset, set): {method: counts}} for the figure. One final run (the first seed)
    per method; a set whose labels differ between methods is skipped and listed as missing."""
    first_seeds = pivot(study.finished_finals(), "dataset", "method", lambda runs: runs[0].run_id)
    found: dict[tuple[str, str], dict[str, tuple[str, str]]] = {}
    for (dataset, method), run_id in sorted(first_seeds.items()):
        for path in study.artifacts.paths(run_id, PREDICTIONS):
            if path.endswith(".npz"):
                found.setdefault((dataset, Path(path).stem), {})[method] = (run_id, path)
    table = Table("overlap", [Column("dataset", "dataset", "text"), Column("set", "set", "text"),
                              Column("method", "method", "text")]
                  + [Column(c, c.replace("_", " "), "int") for c in ("k", "shared_with_all", "shared_with_some",
                                                                      "unique")],
                  note=f"Of each method's K most confident correct predictions (K ≤ {k}): how many every other "
                       "method also has among its K, some have, or none has.")
    counts = {}
    with tempfile.TemporaryDirectory() as tmp:
        for (dataset, name), methods in sorted(found.items()):
            if len(methods) < 2:
                continue
            loaded = {m: _ranked(study.artifacts, rid, path, Path(tmp) / dataset / name / m)
                      for m, (rid, path) in methods.items()}
            first = next(iter(loaded.values()))[0]
            if any(not np.array_equal(labels, first) for labels, _ in loaded.values()):
                table.missing.append(f"overlap: {dataset}/{name}: labels differ between methods "
                                     f"({', '.join(methods)}); sample order must match")
                continue
            counts[(dataset, name)] = _overlap({m: ranked for m, (_, ranked) in loaded.items()}, k)
            table.rows += [{"dataset": dataset, "set": name, "method": m, **c}
                           for m, c in counts[(dataset, name)].items()]
    return (table if table.rows or table.missing else None), counts
