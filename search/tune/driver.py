"""Run, resume and inspect a study: one Ray Tune experiment holding every cell."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

from ..cluster.storage import check_shared_storage
from ..errors import RunFailed
from ..mlflow_layout import check_tracking_server, default_tracking_uri
from ..study import Study, StudyError, load_study, portable_mapping
from ..study_folder import (SEARCH_STATE, SOURCE, STUDY_COPY, TRACKING_URI, TUNE_EXPERIMENT, check_writable,
                            load_study_dir, read_cells, trial_folder_name, tune_dir)
from .controller import controller_at_study_scale
from .replay import ASHA_NOTE, Replay, replay_trial
from .scheduler import CellASHA
from .searcher import StudySearcher
from .status import totals
from .tracking import OUTAGE_STOP, StudyTracker

# Tune's experiment snapshot keeps Ray's "auto" period (>= 10 s, under 5 % of the driver's time)
# and is also taken at every trial checkpoint (num_to_keep=1); it holds the trials not yet ended
# (controller.py). Our own search state is written per event, and restore() forgets running
# trials the snapshot never saw.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# Final runs report test metrics, not the tuning metric.
os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Tune's default loggers add TensorBoard and CSV files (and a writer thread) per trial; MLflow
# holds the metrics, and result.json (JsonLoggerCallback, below) the trial's own record.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


def trial_dirname(trial) -> str:
    return trial_folder_name(trial.trial_id)


def _progress_callback(study_dir: Path, cells: int):
    from ray.tune import Callback

    class Progress(Callback):
        """One line per finished trial: cells done, trials running/done/pruned/failed, best.
        It reads the cells' rows of the search state: O(cells) per line, whatever the trials."""

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.show(trial.config.get("cell", ""))

        on_trial_error = on_trial_complete

        def show(self, cell: str):
            rows = read_cells(study_dir)
            counts = totals(rows)
            best = rows.get(cell, {}).get("best_val")
            print(f"[peft-search] cells {counts['cells_done']}/{cells} | trials "
                  f"running {counts['trials_running']} done "
                  f"{counts['trials_completed'] + counts['trials_early_stopped']} pruned "
                  f"{counts['trials_pruned']} failed {counts['trials_failed']} | best so far "
                  f"{cell}: {'-' if best is None else f'{best:.1f}'}", file=sys.stderr, flush=True)
    return Progress()


def _ray_init() -> None:
    """Join the cluster a job runs on (RAY_ADDRESS is set by the Jobs API), else start a local one."""
    import ray
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], logging_level="ERROR", log_to_driver=False)
    else:
        ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False,
                 configure_logging=True)


def _trainable(study: Study, replay: Replay | None):
    from ray import tune
    if replay is not None:  # a lookup: one CPU, whatever the study asks for training
        trainable = tune.with_parameters(replay_trial, replay=replay, seeds=list(study.final.seeds))
        return tune.with_resources(trainable, {"cpu": 1})
    from .trainable import RunTrial
    return tune.with_resources(RunTrial, {"cpu": study.resources.cpu, "gpu": study.resources.gpu})


def _run_config(study: Study, study_dir: Path, uri: str):
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback
    return tune.RunConfig(
        name=TUNE_EXPERIMENT, storage_path=str(tune_dir(study_dir).parent.resolve()), verbose=0,
        callbacks=[StudyTracker(study, study_dir, uri), _progress_callback(study_dir, len(study.cells())),
                   JsonLoggerCallback()],
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        failure_config=tune.FailureConfig(max_failures=study.search.max_failures))


def prepare(study_file: Path, out: Path | None, replay: Replay | None = None) -> tuple[Study, Path, str]:
    """Validate everything (study, folder, tracking server; a replay's released points) before
    writing anything. A replay needs neither data nor weights."""
    study = load_study(study_file, check_data=replay is None)
    if replay is not None:
        replay.check(study)
    study_dir = Path(out or study.storage_path or Path("runs") / study.name).resolve()
    if (study_dir / SEARCH_STATE).exists():
        raise StudyError(f"{study_dir} already holds a study; use `peft-search resume {study_dir}`")
    check_writable(study_dir, "--out" if out or not study.storage_path else f"{study.source}: storage_path")
    uri = study.mlflow.tracking_uri or default_tracking_uri(study_dir)
    if uri.startswith("sqlite:///"):  # the database file is created in its folder by the first trial
        check_writable(Path(uri.removeprefix("sqlite:///")).parent, f"{study.source}: mlflow.tracking_uri")
    check_tracking_server(uri)
    return study, study_dir, uri


def run_study(study_file: Path, out: Path | None = None, replay: Replay | None = None) -> Path:
    """Run a study; with ``replay``, on released results instead of training (``simulate``)."""
    study, study_dir, uri = prepare(study_file, out, replay)
    from ray import tune
    created = not study_dir.exists()
    study_dir.mkdir(parents=True, exist_ok=True)
    _ray_init()
    try:
        nodes = check_shared_storage(study_dir)
    except StudyError:
        if created:
            study_dir.rmdir()
        raise
    print(f"[peft-search] {nodes} Ray node(s); study folder {study_dir}", file=sys.stderr, flush=True)
    # Frozen: includes merged, paths absolute; resume and status read this, never the source,
    # which may be edited or moved while the study runs.
    (study_dir / STUDY_COPY).write_text(yaml.safe_dump(portable_mapping(study.source), sort_keys=False))
    (study_dir / SOURCE).write_text(str(study.source))
    (study_dir / TRACKING_URI).write_text(uri)
    if replay is not None:
        replay.save(study_dir)
        _replay_notice(study)
    tuner = tune.Tuner(
        _trainable(study, replay),
        tune_config=tune.TuneConfig(search_alg=StudySearcher(study, study_dir),
                                    scheduler=CellASHA(study, study_dir), num_samples=-1,
                                    max_concurrent_trials=study.search.max_concurrent,
                                    trial_dirname_creator=trial_dirname, reuse_actors=study.search.reuse_actors),
        run_config=_run_config(study, study_dir, uri))
    _fit(tuner, study_dir)
    return study_dir


def _fit(tuner, study_dir: Path) -> None:
    """Run Tune to its end, or to a stop the MLflow tracker asked for (the server away too long):
    then one line saying so, exit 1, and the study resumes later."""
    stop = study_dir / OUTAGE_STOP
    stop.unlink(missing_ok=True)
    with controller_at_study_scale():
        tuner.fit()
    if stop.is_file():
        message = stop.read_text()
        stop.unlink()
        raise RunFailed(message)


def _replay_notice(study: Study) -> None:
    print("[peft-search] replaying released results; no training"
          + (f"; {ASHA_NOTE}" if study.search.asha is not None else ""), file=sys.stderr, flush=True)


def resume_study(study_dir: Path) -> Path:
    """Continue after a crash: finished trials stay finished, unfinished ones continue from
    their last checkpoint, each cell keeps its Optuna history and ASHA rungs."""
    from ray import tune
    study_dir = Path(study_dir).resolve()
    replay = Replay.of_study_dir(study_dir)
    study, uri = load_study_dir(study_dir, check_data=replay is None)
    check_tracking_server(uri)
    _ray_init()
    check_shared_storage(study_dir)
    if replay is not None:
        _replay_notice(study)
    tuner = tune.Tuner.restore(str(tune_dir(study_dir)), trainable=_trainable(study, replay),
                               resume_unfinished=True, resume_errored=False, restart_errored=False)
    _fit(tuner, study_dir)
    return study_dir
