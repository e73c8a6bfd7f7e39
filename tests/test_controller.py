"""Tune's is_finished in constant time answers as Tune's own walk over every trial, at every step."""
import ray
from ray import tune
from ray.tune.execution.tune_controller import TuneController

from search.tune.controller import constant_time_is_finished


def test_constant_time_is_finished_agrees_with_tunes_walk_at_every_step(tmp_path):
    walk_every_trial = TuneController.is_finished
    answers = []
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        with constant_time_is_finished():
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
    finally:
        ray.shutdown()
    assert TuneController.is_finished is walk_every_trial  # put back after the fit
    assert len(results) == 4 and not results.errors
    assert all(fast == walked for fast, walked in answers), answers
    assert (True, True) in answers and (False, False) in answers
