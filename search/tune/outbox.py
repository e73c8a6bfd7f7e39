"""MLflow writes the tracking server could not take, kept until it can.

A write is a small JSON operation (create a trial's run, log metrics/params/tags, log a file,
terminate, summarise a cell). The tracker sends each one at once; when the server does not answer,
that write and every later one go to the outbox, in order: a row of the search state, its file
copied to ``mlflow_outbox/``, so neither a stop nor a kill of the driver loses them. They are
sent, oldest first, as soon as the server answers again (on the next event, on the driver's
next loop, or after a resume).
"""
from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import ErrorCode

from ..study_folder import OUTBOX_FILES

# An MLflow error that says the server is away or overloaded, not that the write is wrong.
_AWAY = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"}


def server_away(err: Exception) -> bool:
    """The error of a write the server did not take because it is unreachable or failing (5xx);
    not a write it refused (a bad value, an unknown run)."""
    if isinstance(err, (ConnectionError, TimeoutError, OSError)):
        return True
    if isinstance(err, MlflowException):
        code = ErrorCode.Name(err.error_code) if isinstance(err.error_code, int) else str(err.error_code)
        return code in _AWAY or "API request to" in str(err)
    return False


class Outbox:
    def __init__(self, conn, study_dir: Path) -> None:
        self.conn, self.files = conn, Path(study_dir) / OUTBOX_FILES

    def put(self, op: dict) -> None:
        """Keep ``op``; its ``file`` (a temporary one) is copied into the study folder first."""
        if op.get("file"):
            kept = self.files / uuid.uuid4().hex / Path(op["file"]).name  # the artifact keeps its name
            kept.parent.mkdir(parents=True)
            shutil.copy(op["file"], kept)
            op = {**op, "file": str(kept)}
        with self.conn:
            self.conn.execute("INSERT INTO mlflow_outbox (op) VALUES (?)", (json.dumps(op),))

    def pending(self) -> list[tuple[int, dict]]:
        return [(seq, json.loads(op)) for seq, op in
                self.conn.execute("SELECT seq, op FROM mlflow_outbox ORDER BY seq")]

    def sent(self, seq: int, op: dict) -> None:
        with self.conn:
            self.conn.execute("DELETE FROM mlflow_outbox WHERE seq = ?", (seq,))
        if op.get("file"):
            shutil.rmtree(Path(op["file"]).parent, ignore_errors=True)
