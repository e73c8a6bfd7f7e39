"""Tune's controller at a study's scale: is_finished in constant time answers as Tune's own walk
at every step; the experiment snapshot holds the trials not yet ended (and the last to end), and
an experiment restored from it runs nothing twice."""
import json
import time
from pathlib import Path

import pytest
import ray
from ray import tune
from ray.tune.execution.tune_controller import TuneController

from search.tune.controller import controller_at_study_scale


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


def test_constant_time_is_finished_agrees_with_tunes_walk_at_every_step(tmp_path, local_ray):
    walk_every_trial = TuneController.is_finished
    answers = []
    with controller_at_study_scale():
        constant_time = TuneController.is_finished
        assert constant_time is not walk_every_trial

        def both(self):
            answers.append((constant_time(self), walk_every_trial(self)))
            return answers[-1][0]

        TuneController.is_finished = both
        tuner = tune.Tuner(lambda config: tune.report({"score": config["x"]}),
                           param_space={"x": tune.grid_search([1, 2, 3, 4])},
                           tune_config=tune.TuneConfig(max_concurrent_trials=1),
                           run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0))
        results = tuner.fit()
    assert TuneController.is_finished is walk_every_trial  # put back after the fit
    assert len(results) == 4 and not results.errors
    assert all(fast == walked for fast, walked in answers), answers
    assert (True, True) in answers and (False, False) in answers


def snapshot(experiment: Path) -> dict[str, str]:
    """Trial id -> status in the newest experiment snapshot in storage."""
    newest = max(experiment.glob("experiment_state-*.json"), default=None)
    if newest is None:
        return {}
    states = [json.loads(state) for state, _ in json.loads(newest.read_text())["trial_data"]]
    return {state["trial_id"]: state["status"] for state in states}


def test_the_snapshot_holds_the_trials_not_yet_ended(tmp_path, local_ray, monkeypatch):
    """Mid-experiment (a snapshot every step) the last trial finds itself in the snapshot and
    the trials ended before the one just ended gone; at the end only the last to end is left,
    and restoring the experiment from that runs no trial again."""
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0")
    experiment, log = tmp_path / "exp", tmp_path / "log"
    log.mkdir()

    def trial(config):
        trial_id = tune.get_context().get_trial_id()
        (log / f"{config['x']}-{trial_id}").write_text("")
        seen = {}
        if config["x"] == 4:  # wait until a snapshot taken while this trial runs is in storage
            deadline = time.monotonic() + 60
            while seen.get(trial_id) != "RUNNING" and time.monotonic() < deadline:
                time.sleep(0.2)
                seen = snapshot(experiment)
        tune.report({"score": config["x"], "seen": json.dumps(sorted(seen))})

    def run(tuner):
        with controller_at_study_scale():
            return tuner.fit()

    trainable = tune.with_resources(trial, {"cpu": 1})
    results = run(tune.Tuner(trainable, param_space={"x": tune.grid_search([1, 2, 3, 4])},
                             tune_config=tune.TuneConfig(max_concurrent_trials=1),
                             run_config=tune.RunConfig(name="exp", storage_path=str(tmp_path), verbose=0)))
    assert TuneController._get_trial_checkpoints.__name__ == "_get_trial_checkpoints"  # put back
    ids = {int(name.split("-")[0]): name.split("-")[1] for name in map(lambda p: p.name, log.iterdir())}
    assert len(results) == 4 and not results.errors and sorted(ids) == [1, 2, 3, 4]
    seen = set(json.loads(next(r.metrics["seen"] for r in results if r.metrics["score"] == 4)))
    assert ids[4] in seen and not seen & {ids[1], ids[2]}, seen  # ids[3]: the last to end, then
    assert set(snapshot(experiment)) == {ids[4]}

    restored = run(tune.Tuner.restore(str(experiment), trainable=trainable))
    assert len(list(log.iterdir())) == 4  # nothing ran again
    assert not restored.errors
