"""One Ray Tune searcher for a whole study; one Optuna sampler per cell inside it.

Cells share the experiment (so the cluster stays full) but never share a sampler: each cell has
its own Optuna study, in memory; after a crash it is rebuilt from the search state, which holds
every trial's point, outcome and value (one store, one write per event). ``grid``
hands out each point of a cell's paper grid exactly once, however many trials run at once.
When a cell's tuning ends, its final run(s) are suggested like any other trial.

Every event updates the trial's record and its cell's book in memory (``records.py``) and
writes both to the search state in one transaction, so an event costs the same at the first
trial and at the ten-thousandth.
"""
from __future__ import annotations

import heapq
import json
import logging
import time
from pathlib import Path

import optuna
from ray.tune.search import Searcher

from .outcome import TRIAL_ERROR, decide
from .records import CellBook, TrialRecord
from .sampling import CellSampler, make_sampler, warm_limit, warm_start_points
from .store import SearchStore
from ..space import grid_points
from ..study_folder import COMPLETED, EARLY_STOPPED, FAILED, PRUNED, RUNNING, SEARCH_STATE, read_cells, read_trials, write_json
from ..study import Cell, Study

optuna.logging.set_verbosity(optuna.logging.WARNING)
log = logging.getLogger(__name__)

OPTUNA_STATE = {COMPLETED: optuna.trial.TrialState.COMPLETE, EARLY_STOPPED: optuna.trial.TrialState.COMPLETE,
                PRUNED: optuna.trial.TrialState.PRUNED, FAILED: optuna.trial.TrialState.FAIL}


def tune_trial_ids(experiment_dir: Path) -> set[str]:
    """Trial ids in Tune's newest experiment snapshot (what a restored Tune will run)."""
    snapshots = sorted(experiment_dir.glob("experiment_state-*.json"))
    if not snapshots:
        return set()
    trial_data = json.loads(snapshots[-1].read_text())["trial_data"]
    return {json.loads(trial_state)["trial_id"] for trial_state, _ in trial_data}


def _rebuild_history(optuna_study: optuna.Study, distributions: dict, records: list[TrialRecord]) -> None:
    """A cell's Optuna trials from its records, under the same numbers; numbers no record holds
    (proposals closed as repeats, see ``sampling.py``) come back as failed trials."""
    by_number = {r.number: r for r in records}
    for number in range(max(by_number, default=-1) + 1):
        record = by_number.get(number)
        if record is None:
            optuna_study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
            continue
        state = OPTUNA_STATE.get(record.status, optuna.trial.TrialState.RUNNING)
        if state == optuna.trial.TrialState.COMPLETE and record.value is None:
            state = optuna.trial.TrialState.FAIL  # finished without the metric: nothing to learn from
        complete = state == optuna.trial.TrialState.COMPLETE
        optuna_study.add_trial(optuna.trial.create_trial(  # a pruned trial's value: its last report, as tell gives it
            params=record.params, distributions={k: distributions[k] for k in record.params}, state=state,
            value=record.value if state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) else None,
            intermediate_values={} if complete or record.value is None else {record.epochs: record.value}))


class StudySearcher(Searcher):
    def __init__(self, study: Study, study_dir: Path) -> None:
        super().__init__(metric=study.search.metric, mode="max")
        self.study, self.study_dir = study, Path(study_dir)
        self.cells = study.cells()
        self._samplers: dict[str, CellSampler] = {}
        self._store: SearchStore | None = None
        self._load()

    # -- persistence -------------------------------------------------------------------------
    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("_samplers", "_store")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._samplers, self._store = {}, None

    @property
    def store(self) -> SearchStore:
        if self._store is None:  # opened on the first write: reading a study creates nothing
            self._store = SearchStore(self.study_dir)
        return self._store

    def _load(self) -> None:
        """Records and cell books from the search state (empty for a new study)."""
        self._position = {cell.id: i for i, cell in enumerate(self.cells)}
        self._grids = {m: grid_points(self.study.space(m)) for m in self.study.methods if self.study.walks_grid(m)}
        self.books = {cell.id: CellBook(cell.id, self.study.budget(cell), len(self.study.final.seeds),
                                        self._grids.get(cell.method)) for cell in self.cells}
        for cell_id, summary in read_cells(self.study_dir).items():
            if cell_id in self.books:
                self.books[cell_id].grid_next, self.books[cell_id].requeue = summary["grid_next"], summary["requeue"]
        self.records: dict[str, TrialRecord] = {}
        for trial_id, data in read_trials(self.study_dir).items():
            self.records[trial_id] = record = TrialRecord(**data)
            self.books[record.cell].add(record)
        # Scheduling indices: cells open for tuning as a heap of (tuning trials, position), stale
        # entries dropped when met; cells waiting for a final run; cells done or failed.
        self._open = [(book.started["tune"], self._position[c]) for c, book in self.books.items()
                      if book.started["tune"] < book.budget]
        heapq.heapify(self._open)
        self._final_ready: set[int] = set()
        self._closed: set[int] = set()
        for book in self.books.values():
            self._reschedule(book)

    def save(self, checkpoint_path: str) -> None:
        # The search state is written on every event; Tune's snapshot only needs to name it.
        write_json(Path(checkpoint_path), {"search_state": SEARCH_STATE})

    def restore(self, checkpoint_path: str) -> None:
        self._load()  # the store is never older than Tune's snapshot
        known = tune_trial_ids(Path(checkpoint_path).parent)
        for record in [r for r in self.records.values() if r.status == RUNNING and r.trial_id not in known]:
            self._forget(record)

    def _forget(self, record: TrialRecord) -> None:
        """A trial suggested just before a crash that Tune never recorded: hand its point out
        again (grid) and close its Optuna trial."""
        del self.records[record.trial_id]
        book = self.books[record.cell]
        book.forget(record)
        if record.phase == "tune":
            book.requeue.append(record.params)
            heapq.heappush(self._open, (book.started["tune"], self._position[record.cell]))
            if record.number is not None:
                try:
                    self._sampler_study(self._cell(record)).tell(
                        record.number, state=optuna.trial.TrialState.FAIL)
                except (ValueError, RuntimeError):
                    pass
        self._reschedule(book)
        self.store.delete(record, book.summary())

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    # -- bookkeeping -------------------------------------------------------------------------
    def _reschedule(self, book: CellBook) -> None:
        """Keep the scheduling indices in step with one cell's status."""
        position, status = self._position[book.cell], book.status
        ready = status == "final" and book.started["final"] < book.seeds
        (self._final_ready.add if ready else self._final_ready.discard)(position)
        (self._closed.add if status in ("done", "failed") else self._closed.discard)(position)

    def _changed(self, record: TrialRecord) -> None:
        book = self.books[record.cell]
        self._reschedule(book)
        self.store.save(record, book.summary())

    def _sampler(self, cell: Cell) -> CellSampler:
        if cell.id not in self._samplers:
            seed = self.study.search.seed + self._position[cell.id]
            space = self.study.space(cell.method)
            history = [r for r in self.records.values() if r.cell == cell.id and r.number is not None]
            # Rebuilt after a restart, a sampler seeded as at the start would draw the points it
            # drew then again (random, TPE's start-up): it continues on a seed of its own.
            sampler_seed = seed + 7919 * len(history)
            optuna_study = optuna.create_study(
                direction="maximize",
                sampler=make_sampler(self.study.search.sampler, sampler_seed, len(grid_points(space)) or None))
            sampler = CellSampler(optuna_study, space, seed)
            _rebuild_history(optuna_study, sampler.distributions, history)
            self._samplers[cell.id] = sampler
        return self._samplers[cell.id]

    def _sampler_study(self, cell: Cell) -> optuna.Study:
        return self._sampler(cell).study

    def best_tune_trial(self, cell: Cell) -> TrialRecord | None:
        """The completed tuning trial with the best selection metric (never a test metric); of
        tied ones, the last in grid order (trial order without a grid)."""
        return self.books[cell.id].best

    def cell_status(self, cell: Cell) -> str:
        return self.books[cell.id].status

    # -- Searcher API ------------------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict | str | None:
        if len(self._closed) == len(self.cells):
            return Searcher.FINISHED
        # Final runs first (they finish cells), then the cell with the fewest tuning trials.
        if self._final_ready:
            return self._suggest_final(trial_id, self.cells[min(self._final_ready)])
        while self._open:
            tuned, position = self._open[0]
            book = self.books[self.cells[position].id]
            if tuned == book.started["tune"] and tuned < book.budget:
                return self._suggest_tune(trial_id, self.cells[position])
            heapq.heappop(self._open)  # stale: the cell has had trials since, or is full
        return None  # waiting for running trials

    def _suggest_tune(self, trial_id: str, cell: Cell) -> dict:
        book = self.books[cell.id]
        fixed = None
        if book.requeue:
            fixed = book.requeue.pop(0)
        elif cell.method in self._grids:
            points = self._grids[cell.method] or [{}]
            fixed = points[book.grid_next]
            book.grid_next += 1
        elif self.study.search.warm_start:  # the first trials of a cell: what did well in related cells
            warm, tried = self._warm_start_points(cell), book.started["tune"]
            fixed = warm[tried] if tried < len(warm) else None
        trial = self._sampler(cell).ask(fixed)
        return self._register(trial_id, cell, "tune", dict(trial.params), trial.number, None)

    def _warm_start_points(self, cell: Cell) -> list[dict]:
        """Points that did well in the finished trials of the same method on other datasets and
        of other methods on the same dataset (compared on the keys they share)."""
        book = self.books[cell.id]
        grid = grid_points(self.study.space(cell.method))
        limit = warm_limit(len(grid) or book.budget)
        if book.started["tune"] >= limit:
            return []  # past the warm start: its own sampler decides
        related = [other for other in self.cells if other != cell
                   and (other.method == cell.method or other.dataset == cell.dataset)]
        histories = {other: self.books[other.id].history for other in related}
        candidates = grid or [params for other, history in histories.items() if other.method == cell.method
                              for params, _ in history]
        return warm_start_points(candidates, [h for h in histories.values() if h], limit)

    def _suggest_final(self, trial_id: str, cell: Cell) -> dict:
        best = self.books[cell.id].best
        seed = self.study.final.seeds[self.books[cell.id].started["final"]]
        return self._register(trial_id, cell, "final", best.params, None, seed, selected_from=best.trial_id)

    def _register(self, trial_id: str, cell: Cell, phase: str, params: dict, number: int | None,
                  seed: int | None, selected_from: str | None = None) -> dict:
        train = self.study.trial_config(cell, params, phase, seed)
        record = TrialRecord(trial_id, cell.id, phase, params, number, seed, train["epoch"], selected_from)
        self.records[trial_id] = record
        book = self.books[cell.id]
        book.add(record)
        if phase == "tune":
            heapq.heappush(self._open, (book.started["tune"], self._position[cell.id]))
        self._changed(record)
        return {"cell": cell.id, "phase": phase, "params": params, "study_dir": str(self.study_dir),
                "train": train}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        record = self.records.get(trial_id)
        if record is None or record.status != RUNNING:
            return
        record.epochs = int(result.get("epoch", record.epochs))
        if record.started_at is None and "started_at" in result:
            record.started_at = result["started_at"]  # the first attempt's start
        if result.get("node_id") and result["node_id"] not in record.nodes:
            record.nodes.append(result["node_id"])
        if result.get(TRIAL_ERROR):
            record.error = result[TRIAL_ERROR]
        record.early_stopped = record.early_stopped or bool(result.get("early_stopped"))
        record.seconds = float(result.get("trial_seconds", record.seconds))
        record.metrics.update({k: v for k, v in result.items() if k.startswith(("val_", "test_", "train_"))
                               and isinstance(v, (int, float))})
        if self.metric in result and record.phase == "tune":
            value = float(result[self.metric])
            # Runs that select on validation (CLIP) are worth their best epoch, not their last.
            if not self.study.train.final_acc_hp and record.value is not None:
                value = max(value, record.value)
            record.value = value
            if record.number is not None:
                self._optuna_trial(record).report(record.value, record.epochs)
        self.books[record.cell].progress(record)
        self._changed(record)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        record = self.records.get(trial_id)
        if record is None or record.status != RUNNING:
            return  # already finished before a resume: never counted twice
        if result and int(result.get("epoch", -1)) != record.epochs:
            self.on_trial_result(trial_id, result)
        record.ended_at = time.time()
        record.status = decide(error=error or record.error is not None, epochs=record.epochs,
                               planned_epochs=record.planned_epochs, early_stopped=record.early_stopped)
        if record.number is not None:
            self._tell(record)
        self.books[record.cell].finish(record)
        self._changed(record)

    def _cell(self, record: TrialRecord) -> Cell:
        return self.cells[self._position[record.cell]]

    def _optuna_trial(self, record: TrialRecord) -> optuna.Trial:
        """The running Optuna trial behind a record (Optuna keys trials by storage id)."""
        optuna_study = self._sampler_study(self._cell(record))
        storage_id = optuna_study._storage.get_trial_id_from_study_id_trial_number(
            optuna_study._study_id, record.number)
        return optuna.Trial(optuna_study, storage_id)

    def _tell(self, record: TrialRecord) -> None:
        optuna_study = self._sampler_study(self._cell(record))
        state = OPTUNA_STATE[record.status]
        value = record.value if state == optuna.trial.TrialState.COMPLETE else None
        try:
            optuna_study.tell(record.number, value, state=state)
        except (ValueError, RuntimeError) as err:  # already told before a crash
            log.debug("optuna tell skipped for %s: %s", record.trial_id, err)
