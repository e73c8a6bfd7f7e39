"""The driver's writes to the search state (``search.study_folder``: schema and readers).

The searcher writes one transaction per event: the trial's row and its cell's row, so the store
is never ahead of itself for one and behind for the other. The ASHA scheduler writes a row when
a trial reaches a rung; the MLflow tracker the run id of each run it opens.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..study_folder import connect_state
from .records import TrialRecord


class SearchStore:
    def __init__(self, study_dir: Path) -> None:
        self.conn = connect_state(study_dir, write=True)

    def save(self, record: TrialRecord, cell_summary: dict) -> None:
        with self.conn:
            self._upsert(record)
            self._upsert_cell(record.cell, cell_summary)

    def delete(self, record: TrialRecord, cell_summary: dict) -> None:
        with self.conn:
            self.conn.execute("DELETE FROM trials WHERE trial_id = ?", (record.trial_id,))
            self._upsert_cell(record.cell, cell_summary)

    def save_rung(self, cell: str, milestone: int, trial_id: str, value: float, stopped: bool) -> None:
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO asha_rungs (cell, milestone, trial_id, value, stopped) "
                              "VALUES (?, ?, ?, ?, ?)",
                              (cell, milestone, trial_id, None if math.isnan(value) else value, int(stopped)))

    def save_mlflow_run(self, kind: str, name: str, run_id: str) -> None:
        """Where the tracker logs ``kind`` (experiment, cell, trial) ``name``."""
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO mlflow_runs (kind, name, run_id) VALUES (?, ?, ?)",
                              (kind, name, run_id))

    def _upsert(self, record: TrialRecord) -> None:
        self.conn.execute(
            "INSERT INTO trials (trial_id, cell, phase, status, record) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (trial_id) DO UPDATE SET status = excluded.status, record = excluded.record",
            (record.trial_id, record.cell, record.phase, record.status, json.dumps(record.to_dict())))

    def _upsert_cell(self, cell: str, summary: dict) -> None:
        self.conn.execute("INSERT INTO cells (cell, summary) VALUES (?, ?) "
                          "ON CONFLICT (cell) DO UPDATE SET summary = excluded.summary",
                          (cell, json.dumps(summary)))
