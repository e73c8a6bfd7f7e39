"""One Ray Tune searcher for a whole study; one Optuna sampler per cell inside it.

Cells share the experiment (so the cluster stays full) but never share a sampler: each cell has
its own Optuna study (sqlite in the study folder, so its history survives a crash). ``grid``
hands out each point of a cell's paper grid exactly once, however many trials run at once.
When a cell's tuning ends, its final run(s) are suggested like any other trial.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import optuna
from ray.tune.search import Searcher

from .sampling import CellSampler, make_sampler, warm_limit, warm_start_points
from ..space import grid_points
from ..study_folder import DONE, SEARCH_STATE, read_json, write_json
from ..study import Cell, Study

optuna.logging.set_verbosity(optuna.logging.WARNING)
log = logging.getLogger(__name__)


def tune_trial_ids(experiment_dir: Path) -> set[str]:
    """Trial ids in Tune's newest experiment snapshot (what a restored Tune will run)."""
    snapshots = sorted(experiment_dir.glob("experiment_state-*.json"))
    if not snapshots:
        return set()
    trial_data = json.loads(snapshots[-1].read_text())["trial_data"]
    return {json.loads(trial_state)["trial_id"] for trial_state, _ in trial_data}


class StudySearcher(Searcher):
    def __init__(self, study: Study, study_dir: Path) -> None:
        super().__init__(metric=study.search.metric, mode="max")
        self.study, self.study_dir = study, Path(study_dir)
        self.state: dict[str, Any] = read_json(self.study_dir / SEARCH_STATE) or {
            "trials": {}, "grid_next": {}}
        self._samplers: dict[str, CellSampler] = {}

    # -- persistence -------------------------------------------------------------------------
    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_samplers"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._samplers = {}

    def _persist(self) -> None:
        write_json(self.study_dir / SEARCH_STATE, self.state)

    def save(self, checkpoint_path: str) -> None:
        write_json(Path(checkpoint_path), self.state)

    def restore(self, checkpoint_path: str) -> None:
        # Our own file is written on every change: it is never older than Tune's snapshot.
        self.state = read_json(self.study_dir / SEARCH_STATE) or read_json(Path(checkpoint_path))
        known = tune_trial_ids(Path(checkpoint_path).parent)
        for trial_id, record in list(self.state["trials"].items()):
            if record["status"] not in DONE and trial_id not in known:
                self._forget(trial_id, record)
        self._persist()

    def _forget(self, trial_id: str, record: dict) -> None:
        """A trial suggested just before a crash that Tune never recorded: hand its point out
        again (grid) and close its Optuna trial."""
        del self.state["trials"][trial_id]
        if record["phase"] == "tune":
            self.state.setdefault("requeue", {}).setdefault(record["cell"], []).append(record["params"])
            if record["number"] is not None:
                try:
                    self._sampler_study(self._cell(record)).tell(
                        record["number"], state=optuna.trial.TrialState.FAIL)
                except (ValueError, RuntimeError):
                    pass

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    # -- bookkeeping -------------------------------------------------------------------------
    def _trials(self, cell: Cell, phase: str) -> list[dict]:
        return [t for t in self.state["trials"].values() if t["cell"] == cell.id and t["phase"] == phase]

    def _sampler(self, cell: Cell) -> CellSampler:
        if cell.id not in self._samplers:
            seed = self.study.search.seed + self.study.cells().index(cell)
            space = self.study.space(cell.method)
            optuna_study = optuna.create_study(
                storage=f"sqlite:///{self.study_dir / 'optuna.db'}", study_name=cell.id,
                direction="maximize", load_if_exists=True,
                sampler=make_sampler(self.study.search.sampler, seed, len(grid_points(space)) or None))
            self._samplers[cell.id] = CellSampler(optuna_study, space, seed)
        return self._samplers[cell.id]

    def _sampler_study(self, cell: Cell) -> optuna.Study:
        return self._sampler(cell).study

    def best_tune_trial(self, cell: Cell) -> dict | None:
        """The completed tuning trial with the best selection metric (never a test metric)."""
        done = [t for t in self._trials(cell, "tune") if t["status"] == "completed" and t["value"] is not None]
        return max(done, key=lambda t: t["value"]) if done else None

    def cell_status(self, cell: Cell) -> str:
        tune_trials = self._trials(cell, "tune")
        finals = self._trials(cell, "final")
        if len(tune_trials) < self.study.budget(cell) or any(t["status"] not in DONE for t in tune_trials):
            return "tuning"
        if self.best_tune_trial(cell) is None:
            return "failed"
        if len(finals) < len(self.study.final.seeds) or any(t["status"] not in DONE for t in finals):
            return "final"
        return "done"

    # -- Searcher API ------------------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict | str | None:
        cells = self.study.cells()
        statuses = {c.id: self.cell_status(c) for c in cells}
        if all(s in ("done", "failed") for s in statuses.values()):
            return Searcher.FINISHED
        # Final runs first (they finish cells), then the cell with the fewest tuning trials.
        for cell in cells:
            if statuses[cell.id] == "final" and len(self._trials(cell, "final")) < len(self.study.final.seeds):
                return self._suggest_final(trial_id, cell)
        open_cells = [c for c in cells if len(self._trials(c, "tune")) < self.study.budget(c)]
        if not open_cells:
            return None  # waiting for running trials
        cell = min(open_cells, key=lambda c: len(self._trials(c, "tune")))
        return self._suggest_tune(trial_id, cell)

    def _suggest_tune(self, trial_id: str, cell: Cell) -> dict:
        sampler = self._sampler(cell)
        requeued = self.state.setdefault("requeue", {}).get(cell.id)
        fixed = None
        if requeued:
            fixed = requeued.pop(0)
        elif self.study.search.sampler == "grid" or self.study.search.num_samples == "grid":
            points = grid_points(self.study.space(cell.method)) or [{}]
            index = self.state["grid_next"].get(cell.id, 0)
            self.state["grid_next"][cell.id] = index + 1
            fixed = points[index]
        elif self.study.search.warm_start:  # the first trials of a cell: what did well in related cells
            warm, tried = self._warm_start_points(cell), len(self._trials(cell, "tune"))
            fixed = warm[tried] if tried < len(warm) else None
        trial = sampler.ask(fixed)
        params = dict(trial.params)
        return self._register(trial_id, cell, "tune", params, trial.number, None)

    def _warm_start_points(self, cell: Cell) -> list[dict]:
        """Points that did well in the finished trials of the same method on other datasets and
        of other methods on the same dataset (compared on the keys they share)."""
        related = [other for other in self.study.cells() if other != cell
                   and (other.method == cell.method or other.dataset == cell.dataset)]
        histories = {other: [(t["params"], t["value"]) for t in self._trials(other, "tune")
                             if t["status"] == "completed" and t["value"] is not None] for other in related}
        grid = grid_points(self.study.space(cell.method))
        candidates = grid or [params for other, history in histories.items() if other.method == cell.method
                              for params, _ in history]
        limit = warm_limit(len(grid) or self.study.budget(cell))
        return warm_start_points(candidates, [h for h in histories.values() if h], limit)

    def _suggest_final(self, trial_id: str, cell: Cell) -> dict:
        best = self.best_tune_trial(cell)
        seed = self.study.final.seeds[len(self._trials(cell, "final"))]
        return self._register(trial_id, cell, "final", best["params"], None, seed,
                              selected_from=best["trial_id"])

    def _register(self, trial_id: str, cell: Cell, phase: str, params: dict, number: int | None,
                  seed: int | None, selected_from: str | None = None) -> dict:
        self.state["trials"][trial_id] = {
            "trial_id": trial_id, "cell": cell.id, "phase": phase, "params": params, "number": number,
            "seed": seed, "status": "running", "value": None, "epochs": 0, "seconds": 0.0,
            "selected_from": selected_from, "metrics": {}}
        self._persist()
        return {"cell": cell.id, "phase": phase, "params": params, "study_dir": str(self.study_dir),
                "train": self.study.trial_config(cell, params, phase, seed)}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        record = self.state["trials"].get(trial_id)
        if record is None or record["status"] in DONE:
            return
        record["epochs"] = int(result.get("epoch", record["epochs"]))
        if "started_at" in result:
            record.setdefault("started_at", result["started_at"])  # the first attempt's start
        if result.get("node_id") and result["node_id"] not in record.setdefault("nodes", []):
            record["nodes"].append(result["node_id"])
        if result.get("diverged"):
            record["error"] = result["diverged"]
        record["seconds"] = float(result.get("trial_seconds", record["seconds"]))
        record["metrics"] = {k: v for k, v in result.items() if k.startswith(("val_", "test_", "train_"))
                             and isinstance(v, (int, float))}
        if self.metric in result and record["phase"] == "tune":
            value = float(result[self.metric])
            # Runs that select on validation (CLIP) are worth their best epoch, not their last.
            if not self.study.train.final_acc_hp and record["value"] is not None:
                value = max(value, record["value"])
            record["value"] = value
            if record["number"] is not None:
                self._optuna_trial(record).report(record["value"], record["epochs"])
        self._persist()

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        record = self.state["trials"].get(trial_id)
        if record is None or record["status"] in DONE:
            return  # already finished before a resume: never counted twice
        if result and int(result.get("epoch", -1)) != record["epochs"]:
            self.on_trial_result(trial_id, result)
        epochs = self.study.trial_config(self._cell(record), record["params"], record["phase"])["epoch"]
        record["ended_at"] = time.time()
        if error or record.get("error"):
            record["status"] = "failed"
        elif record["epochs"] < epochs:
            record["status"] = "pruned"
        else:
            record["status"] = "completed"
        if record["number"] is not None:
            self._tell(record)
        self._persist()

    def _cell(self, record: dict) -> Cell:
        return Cell.parse(record["cell"])

    def _optuna_trial(self, record: dict) -> optuna.Trial:
        """The running Optuna trial behind a record (Optuna keys trials by storage id)."""
        optuna_study = self._sampler_study(self._cell(record))
        storage_id = optuna_study._storage.get_trial_id_from_study_id_trial_number(
            optuna_study._study_id, record["number"])
        return optuna.Trial(optuna_study, storage_id)

    def _tell(self, record: dict) -> None:
        optuna_study = self._sampler_study(self._cell(record))
        state = {"completed": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED,
                 "failed": optuna.trial.TrialState.FAIL}[record["status"]]
        value = record["value"] if state == optuna.trial.TrialState.COMPLETE else None
        try:
            optuna_study.tell(record["number"], value, state=state)
        except (ValueError, RuntimeError) as err:  # already told before a crash
            log.debug("optuna tell skipped for %s: %s", record["trial_id"], err)
