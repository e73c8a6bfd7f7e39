"""``peft-search simulate``: a study replayed on the study's released results instead of trained.

A tuning trial reports, at its last epoch, the released metrics of its grid point; a final run
the released test metrics when its point is the release's ``best_tune``. Another point (one of
tied best points: the release ran its final on the first of them, the study's code takes the
last) gets no test value and a ``note`` saying why; it is never filled in from another point.
Everything around the trial is the real service: Tune, per-cell samplers, ASHA, MLflow, status,
resume, report. What it is for: planning a study before paying for GPUs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..petl_release import ReleasedCell, point_key, read_release, task_of
from ..space import grid_points
from ..study import Study, StudyError
from ..study_folder import read_json, trial_finished, write_json

REPLAY_FILE = "replay.json"  # in the study folder: what `resume` replays again
# Released values exist for the last epoch only, so a rung below it never has a value to compare.
ASHA_NOTE = ("released results hold the last epoch only: ASHA has no intermediate results to "
             "prune on in a replay, so every trial runs to its end")


@dataclass(frozen=True)
class Replay:
    tune_output: Path
    trial_seconds: float
    cells: dict[tuple[str, str], ReleasedCell]

    @classmethod
    def load(cls, tune_output: Path, trial_seconds: float = 0.0) -> "Replay":
        if trial_seconds < 0:
            raise StudyError(f"--trial-seconds: expected a number >= 0, got {trial_seconds}")
        try:
            cells = read_release(Path(tune_output))
        except ValueError as err:
            raise StudyError(str(err)) from None
        return cls(Path(tune_output).resolve(), trial_seconds, cells)

    @classmethod
    def of_study_dir(cls, study_dir: Path) -> "Replay | None":
        saved = read_json(Path(study_dir) / REPLAY_FILE, None)
        return None if saved is None else cls.load(Path(saved["tune_output"]), saved["trial_seconds"])

    def save(self, study_dir: Path) -> None:
        write_json(Path(study_dir) / REPLAY_FILE, {"tune_output": str(self.tune_output),
                                                   "trial_seconds": self.trial_seconds})

    def check(self, study: Study) -> None:
        """Every point the study can ask was run by the release; else one line naming the cell
        and the point (or the continuous key, which a replay cannot look up)."""
        for cell in study.cells():
            released = self.cells.get((task_of(cell.dataset), cell.method))
            if released is None:
                raise StudyError(f"{self.tune_output}: no released results for cell {cell.id} "
                                 f"(no */*/{task_of(cell.dataset)}/{cell.method}/final_result.json)")
            space = study.space(cell.method)
            for key, dimension in space.items():
                if not dimension.categorical:
                    raise StudyError(f"{study.source}: spaces.{cell.method}.{key}: a {dimension.kind} range "
                                     "cannot be replayed; the release holds grid points only (use grid or choice)")
            ran = {point_key(params) for params, _ in released.tune}
            for point in grid_points(space) or [{}]:
                if point_key(point) not in ran:
                    raise StudyError(f"{self.tune_output}: cell {cell.id}: the release never ran the point {point}")

    def metrics(self, config: dict, seeds: list[int]) -> dict:
        """What the trial of ``config`` reports at its last epoch."""
        cell_id, params = config["cell"], config["params"]
        dataset, method = cell_id.split("/")
        released = self.cells[(task_of(dataset), method)]
        key = point_key(params)
        if config["phase"] == "tune":
            for point, metrics in released.tune:
                if point_key(point) == key:
                    return dict(metrics)
            raise KeyError(f"cell {cell_id}: the release never ran the point {params}")  # check() prevents it
        if key != point_key(released.best_tune):
            return {"note": f"test_top1 not released for {params}: the release ran cell {cell_id}'s final "
                            f"run on {released.best_tune} (a tie on val top-1 broken the other way)"}
        index = seeds.index(config["train"]["seed"]) if config["train"].get("seed") in seeds else 0
        if index >= len(released.finals):
            return {"note": f"test_top1 not released: cell {cell_id} has {len(released.finals)} released "
                            f"final run(s), none for seed {config['train'].get('seed')}"}
        final = {k: v for k, v in released.finals[index].items() if k != "seed"}
        return {**final, "inserted_params": float(released.result.get("inserted_parameters", 0))}


def replay_trial(config: dict, replay: Replay, seeds: list[int]) -> None:
    """The replay trainable: the released metrics of the trial's point, after ``trial_seconds``."""
    from ray import tune
    if trial_finished(config["study_dir"], tune.get_context().get_trial_id()):
        return  # finished before the driver died: a resumed study never reruns it
    start = time.time()
    time.sleep(replay.trial_seconds)
    tune.report({**replay.metrics(config, seeds), "epoch": config["train"]["epoch"],
                 "trial_seconds": time.time() - start, "started_at": start})
