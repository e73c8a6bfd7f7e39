"""The searcher's writes to the search state (``search.study_folder``: schema and readers).

One transaction per event: the trial's row and its cell's row, so the store is never ahead of
itself for one and behind for the other.
"""
from __future__ import annotations

import json
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

    def _upsert(self, record: TrialRecord) -> None:
        self.conn.execute(
            "INSERT INTO trials (trial_id, cell, phase, status, record) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (trial_id) DO UPDATE SET status = excluded.status, record = excluded.record",
            (record.trial_id, record.cell, record.phase, record.status, json.dumps(record.to_dict())))

    def _upsert_cell(self, cell: str, summary: dict) -> None:
        self.conn.execute("INSERT INTO cells (cell, summary) VALUES (?, ?) "
                          "ON CONFLICT (cell) DO UPDATE SET summary = excluded.summary",
                          (cell, json.dumps(summary)))
