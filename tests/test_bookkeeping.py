"""The searcher's bookkeeping without Ray or training: ties, outcomes, the store read back."""
import pytest
import yaml

from search.study import Cell, load_study
from search.study_folder import read_trials, trial_finished
from search.tune.searcher import StudySearcher
from search.tune.status import summarize

EPOCHS = 2
GRID = [0.001, 0.01, 0.1]


def searcher_for(tmp_path):
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({
        "name": "books", "backbone": "tiny_vit_b16_in21k", "data_root": str(tmp_path),
        "datasets": ["digits"], "methods": ["linear"],
        "train": {"epoch": EPOCHS, "warmup_epoch": 0, "pretrained": False},
        "spaces": {"linear": {"lr": {"grid": GRID}}},
        "search": {"sampler": "grid", "num_samples": "grid"}}))
    study = load_study(tmp_path / "study.yaml", check_data=False)
    (tmp_path / "study_dir").mkdir()
    return StudySearcher(study, tmp_path / "study_dir")


def finish(searcher, trial_id, value, epochs=EPOCHS, **flags):
    result = {"epoch": epochs, "val_top1": value, "trial_seconds": 1.0, **flags}
    searcher.on_trial_result(trial_id, result)
    searcher.on_trial_complete(trial_id, result)


def test_tied_tuning_trials_select_the_last_in_grid_order(tmp_path):
    searcher = searcher_for(tmp_path)
    lrs = [searcher.suggest(f"t{i}")["params"]["lr"] for i in range(3)]
    assert lrs == GRID  # grid order
    # the two maxima finish in the opposite order to the grid's
    finish(searcher, "t2", 90.0)
    finish(searcher, "t1", 50.0)
    finish(searcher, "t0", 90.0)
    cell = Cell("digits", "linear")
    assert searcher.best_tune_trial(cell).trial_id == "t2"
    final = searcher.suggest("f0")
    assert final["phase"] == "final" and final["params"] == {"lr": GRID[2]}
    # read back from the store, the choice is the same
    assert StudySearcher(searcher.study, searcher.study_dir).best_tune_trial(cell).trial_id == "t2"
    assert summarize(searcher.study_dir)["cells"]["digits/linear"]["best_params"] == {"lr": GRID[2]}


def test_each_outcome_is_recorded_and_read_back(tmp_path):
    searcher = searcher_for(tmp_path)
    for i in range(3):
        searcher.suggest(f"t{i}")
    finish(searcher, "t0", 70.0, epochs=1)  # stopped by the scheduler
    finish(searcher, "t1", 80.0, epochs=1, early_stopped=True)  # stopped by its own patience
    searcher.on_trial_result("t2", {"epoch": 1, "val_top1": 10.0})
    searcher.on_trial_complete("t2", error=True)
    assert not trial_finished(searcher.study_dir, "f0")
    final = searcher.suggest("f0")
    assert final["params"] == {"lr": GRID[1]}  # an early-stopped trial can be selected, a pruned one not
    finish(searcher, "f0", None, test_top1=60.0)
    trials = read_trials(searcher.study_dir)
    assert {t: r["status"] for t, r in trials.items()} == {
        "t0": "pruned", "t1": "early_stopped", "t2": "failed", "f0": "completed"}
    assert all(trial_finished(searcher.study_dir, t) for t in trials)
    summary = summarize(searcher.study_dir)
    assert (summary["cells_done"], summary["trials_pruned"], summary["trials_early_stopped"],
            summary["trials_failed"], summary["trials_completed"]) == (1, 1, 1, 1, 1)
    assert summary["cells"]["digits/linear"]["test_top1"] == [60.0]
    assert searcher.suggest("f1") == "FINISHED"


def test_duplicates_are_counted_for_every_sampler():
    from search.tune.records import CellBook, TrialRecord
    book = CellBook("digits/lora", budget=3, seeds=1, grid=None)  # a TPE or random cell: no grid
    for trial_id, lr in (("a", 0.01), ("b", 0.001), ("c", 0.01)):
        book.add(TrialRecord(trial_id, "digits/lora", "tune", {"lr": lr}, None, None, EPOCHS))
    assert book.duplicates == 1


def test_a_cells_optuna_history_is_rebuilt_from_the_store_after_a_crash(tmp_path):
    """TPE on a 12-point grid; then a new searcher on the same folder (the driver restarted):
    the cell's Optuna study holds the same trials under the same numbers, running ones open."""
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({
        "name": "tpe-books", "backbone": "tiny_vit_b16_in21k", "data_root": str(tmp_path),
        "datasets": ["digits"], "methods": ["lora"],
        "train": {"epoch": EPOCHS, "warmup_epoch": 0, "pretrained": False},
        "spaces": {"lora": {"lr": {"grid": [0.001, 0.01, 0.1]}, "lora_bottleneck": {"grid": [1, 4, 8, 16]}}},
        "search": {"sampler": "tpe", "num_samples": 10}}))
    study = load_study(tmp_path / "study.yaml", check_data=False)
    (tmp_path / "study_dir").mkdir()
    searcher = StudySearcher(study, tmp_path / "study_dir")
    for i in range(9):
        config = searcher.suggest(f"t{i}")
        if i < 7:
            finish(searcher, f"t{i}", 10.0 * config["params"]["lora_bottleneck"] + i,
                   epochs=EPOCHS if i != 3 else 1)  # t3 pruned
    searcher.on_trial_result("t7", {"epoch": 1, "val_top1": 33.0})  # t7, t8 running at the crash
    cell = Cell("digits", "lora")

    def history(s):
        return [(t.number, t.state.name, t.params, t.value, dict(t.intermediate_values))
                for t in s._sampler(cell).study.get_trials(deepcopy=False)]

    before = history(searcher)
    restarted = StudySearcher(study, tmp_path / "study_dir")
    after = history(restarted)
    assert [(n, state, params, value) for n, state, params, value, _ in after if state != "FAIL"] == \
        [(n, state, params, value) for n, state, params, value, _ in before if state != "FAIL"]
    assert [n for n, *_ in after] == list(range(len(before)))
    assert [state for _, state, *_ in after].count("RUNNING") == 2
    assert after[[n for n, _, p, *_ in before if p == searcher.records["t7"].params][0]][4] == {1: 33.0}
    finish(restarted, "t7", 50.0)  # the rebuilt trial is told as any other
    assert history(restarted)[restarted.records["t7"].number][1] == "COMPLETE"


def test_a_point_handed_out_again_after_a_crash_is_no_duplicate(tmp_path):
    """Two trials running when the driver died, unknown to Tune's last snapshot: their points go
    out again, and nothing counts as run twice."""
    import json
    searcher = searcher_for(tmp_path)
    for i in range(3):
        searcher.suggest(f"t{i}")
    finish(searcher, "t0", 50.0)
    snapshot = tmp_path / "tune"
    snapshot.mkdir()
    (snapshot / "experiment_state-2026-12-02.json").write_text(json.dumps({"trial_data": []}))
    restarted = StudySearcher(searcher.study, searcher.study_dir)
    restarted.restore(str(snapshot / "searcher-state.json"))
    assert set(read_trials(restarted.study_dir)) == {"t0"}
    again = sorted(restarted.suggest(f"u{i}")["params"]["lr"] for i in range(2))
    assert again == GRID[1:]
    assert summarize(restarted.study_dir)["duplicate_trials"] == 0


def test_runs_a_crash_left_open_are_deleted_finished_or_kept(tmp_path):
    """After a crash: the run of a trial the searcher forgot, and a run opened just before the
    crash whose id was never recorded, are deleted; the run of a trial the searcher saw end is
    finished from its record; a running trial's run is kept open."""
    from mlflow.tracking import MlflowClient
    from search.tune.tracking import StudyTracker
    searcher = searcher_for(tmp_path)
    for i in range(3):
        searcher.suggest(f"t{i}")
    finish(searcher, "t2", 70.0)
    # t0's epoch 1 recorded by the searcher; the driver died before the tracker logged it
    searcher.on_trial_result("t0", {"epoch": 1, "val_top1": 40.0, "train_loss": 2.5, "trial_seconds": 1.0})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = StudyTracker(searcher.study, searcher.study_dir, uri)
    tracker.setup()
    client = MlflowClient(uri)
    experiment = tracker.runs["experiment_id"]
    recorded = client.create_run(experiment, tags={"trial_id": "t0", "phase": "tune"}).info.run_id
    tracker._remember("trial", "t0", recorded)
    unrecorded = client.create_run(experiment, tags={"trial_id": "t1", "phase": "tune"}).info.run_id
    forgotten = client.create_run(experiment, tags={"trial_id": "gone", "phase": "tune"}).info.run_id
    ended = client.create_run(experiment, tags={"trial_id": "t2", "phase": "tune"}).info.run_id
    tracker._remember("trial", "t2", ended)
    client.log_metric(ended, "val_top1", 70.0, step=EPOCHS)  # as on_trial_result logged it
    restarted = StudyTracker(searcher.study, searcher.study_dir, uri)
    restarted.setup()
    assert client.get_run(recorded).info.lifecycle_stage == "active" and restarted.open_trials == {"t0"}
    for run_id in (unrecorded, forgotten):
        assert client.get_run(run_id).info.lifecycle_stage == "deleted"
    ended_run = client.get_run(ended)
    assert (ended_run.info.status, ended_run.data.tags["state"]) == ("FINISHED", "completed")
    assert ended_run.data.metrics["val_top1"] == 70.0
    assert len(client.get_metric_history(ended, "val_top1")) == 1  # not logged a second time
    for key, value in (("val_top1", 40.0), ("train_loss", 2.5)):  # logged from the record, once
        assert [(m.step, m.value) for m in client.get_metric_history(recorded, key)] == [(1, value)]
    StudyTracker(searcher.study, searcher.study_dir, uri).setup()
    assert len(client.get_metric_history(recorded, "val_top1")) == 1
    cells = {r.data.tags["cell"] for r in client.search_runs([experiment], "tags.phase = 'cell'")}
    assert cells == {"digits/linear"}  # the cell's run was neither touched nor opened twice


def test_a_trial_with_nothing_to_train_is_complete_not_pruned(tmp_path):
    """zero_shot evaluates once, at epoch 0: complete and selectable, so its cell gets a final run
    (before: taken for a trial the scheduler stopped, the cell always ended failed)."""
    searcher = searcher_for(tmp_path)
    searcher.suggest("t0")
    finish(searcher, "t0", 55.0, epochs=0)
    assert read_trials(searcher.study_dir)["t0"]["status"] == "completed"
    assert searcher.best_tune_trial(searcher.study.cells()[0]).trial_id == "t0"


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_restarted_driver_does_not_draw_the_points_it_drew_before(tmp_path, sampler):
    """Found by submit --resume on a cluster: a cell's sampler, rebuilt after a restart with the
    seed it started with, drew its first points again (2 duplicate trials in 8)."""
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({
        "name": "redraw", "backbone": "tiny_vit_b16_in21k", "data_root": str(tmp_path),
        "datasets": ["digits"], "methods": ["lora"],
        "train": {"epoch": EPOCHS, "warmup_epoch": 0, "pretrained": False},
        "spaces": {"lora": {"lr": {"loguniform": [1e-4, 1e-1]}}},
        "search": {"sampler": sampler, "num_samples": 6}}))
    study = load_study(tmp_path / "study.yaml", check_data=False)
    (tmp_path / "study_dir").mkdir()
    first = StudySearcher(study, tmp_path / "study_dir")
    before = [first.suggest(f"t{i}")["params"]["lr"] for i in range(3)]
    for i in range(3):
        finish(first, f"t{i}", 10.0 + i)
    restarted = StudySearcher(study, tmp_path / "study_dir")
    after = [restarted.suggest(f"u{i}")["params"]["lr"] for i in range(3)]
    assert not set(after) & set(before), (before, after)
    assert summarize(tmp_path / "study_dir")["duplicate_trials"] == 0


def test_each_method_walks_its_grid_only_where_its_own_num_samples_says_grid(tmp_path):
    """A study-wide sampler with one method on `grid` walks that method's grid point by point;
    a method given a number under a study-wide `grid` is sampled (it used to index its bounds)."""
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({
        "name": "mixed", "backbone": "tiny_vit_b16_in21k", "data_root": str(tmp_path),
        "datasets": ["digits"], "methods": ["linear", "lora"],
        "train": {"epoch": EPOCHS, "warmup_epoch": 0, "pretrained": False},
        "spaces": {"linear": {"lr": {"grid": GRID}}, "lora": {"lr": {"loguniform": [1e-4, 1e-1]}}},
        "search": {"sampler": "tpe", "num_samples": "grid", "num_samples_by_method": {"lora": 4}}}))
    study = load_study(tmp_path / "study.yaml", check_data=False)
    (tmp_path / "study_dir").mkdir()
    searcher = StudySearcher(study, tmp_path / "study_dir")
    drawn = {"linear": [], "lora": []}
    for i in range(9):  # 3 + 4 tuning trials, then each cell's final run
        config = searcher.suggest(f"t{i}")
        if config["phase"] == "tune":
            drawn[config["train"]["method"]].append(config["params"]["lr"])
        finish(searcher, f"t{i}", 10.0 + i)
    assert drawn["linear"] == GRID  # in grid order, each point once
    assert len(drawn["lora"]) == 4 and len(set(drawn["lora"])) == 4
    assert all(1e-4 <= lr <= 1e-1 for lr in drawn["lora"])
