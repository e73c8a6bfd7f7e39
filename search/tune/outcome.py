"""How a trial ended, decided in one place: the searcher records it, the MLflow tracker tags
and terminates the run with it, status counts it. The names are the store's
(``search.study_folder``)."""
from __future__ import annotations

from ..study_folder import COMPLETED, EARLY_STOPPED, FAILED, PRUNED

# The result key of a trial's own error (one line): reported, not raised, so it is never retried.
TRIAL_ERROR = "trial_error"
# MLflow's terminal run status per outcome (an ASHA stop is KILLED, as in the MLflow layout).
MLFLOW_STATUS = {COMPLETED: "FINISHED", EARLY_STOPPED: "FINISHED", PRUNED: "KILLED", FAILED: "FAILED"}


def decide(*, error: bool, epochs: int, planned_epochs: int, early_stopped: bool) -> str:
    """``error``: the trial reported its own error (a bad value, a missing file, a diverged
    loss) or Tune gave up on it; ``early_stopped``: training's own
    patience ended it (the trial reports so); fewer epochs than planned otherwise means the
    scheduler stopped it, except none at all: a method with nothing to train (zero-shot), which
    evaluates once at epoch 0 and is complete."""
    if error:
        return FAILED
    if early_stopped:
        return EARLY_STOPPED
    return PRUNED if 0 < epochs < planned_epochs else COMPLETED
