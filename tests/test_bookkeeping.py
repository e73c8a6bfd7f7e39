"""The searcher's bookkeeping without Ray or training: ties, outcomes, the store read back."""
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
