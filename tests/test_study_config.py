"""Malformed study files: one line naming the file and the key, exit code 2, nothing written."""
import copy

import pytest
import yaml

from search.cli import main
from search.study import load_study


@pytest.fixture
def base(base_study):
    return base_study


def mutate(study, path, value):
    """Set (or with value=DELETE remove) the dotted ``path`` in a copy of ``study``."""
    study = copy.deepcopy(study)
    *parents, last = path.split(".")
    node = study
    for key in parents:
        node = node.setdefault(key, {})
    if value is DELETE:
        node.pop(last, None)
    else:
        node[last] = value
    return study


DELETE = object()
CASES = [  # (dotted path, new value, the key the message must name, a word it must contain)
    ("colour", "blue", "colour", "unknown key"),
    ("search.samplr", "tpe", "search.samplr", "unknown key"),
    ("search.asha.patience", 3, "search.asha.patience", "unknown key"),
    ("train.learning_rate", 0.1, "train.learning_rate", "unknown key"),
    ("mlflow.uri", "http://x", "mlflow.uri", "unknown key"),
    ("search.num_samples", "many", "search.num_samples", "expected int"),
    ("search.num_samples", 0, "search.num_samples", ">= 1"),
    ("search.max_concurrent", 1.5, "search.max_concurrent", "expected int"),
    ("search.sampler", "bayes", "search.sampler", "unknown sampler"),
    ("train.epoch", -1, "train.epoch", "invalid"),
    ("train.lr", "fast", "train.lr", "wrong type"),
    ("spaces.lora.lr", {"loguniform": [0.01, 0.0001]}, "spaces.lora.lr.loguniform", "empty range"),
    ("spaces.lora.lr", {"grid": []}, "spaces.lora.lr.grid", "non-empty list"),
    ("spaces.lora.lr", {"normal": [0, 1]}, "spaces.lora.lr", "unknown space kind"),
    ("spaces.lora.rank_size", {"grid": [1]}, "spaces.lora.rank_size", "unknown key"),
    ("spaces.lora.lora_bottleneck", {"grid": [0, 8]}, "spaces.lora.lora_bottleneck", "int >= 1"),
    ("spaces.lorra", {"lr": {"grid": [0.1]}}, "spaces.lorra", "unknown method"),
    ("methods", ["linear", "lorra"], "methods[1]", "unknown method 'lorra'"),
    ("methods", [], "methods", "non-empty list"),
    ("datasets", ["digits", "imagenet"], "datasets.imagenet", "unknown dataset"),
    ("data_root", "/nonexistent/data", "data_root", "data root not found"),
    ("backbone", "resnet50", "backbone", "unknown backbone"),
    ("include", ["methods/missing.yaml"], "include", "file not found"),
    ("search.asha.grace_period", 5, "search.asha.grace_period", "must be below"),
    ("train.warmup_epoch", 1, "search.asha.grace_period", "above train.warmup_epoch"),
    ("search.sampler", "grid", "spaces.linear.lr", "grid search needs grid/choice"),
    ("final.seeds", [], "final.seeds", "non-empty list"),
    ("resources.gpu", -1, "resources.gpu", ">= 0"),
    ("mlflow.tracking_uri", "ftp://server", "mlflow.tracking_uri", "unsupported URI"),
]


@pytest.mark.parametrize("path,value,key,word", CASES, ids=[f"{c[0]}={c[1]}" for c in CASES])
def test_malformed_study_is_one_line_exit_2_and_writes_nothing(base, tmp_path, capsys, path, value, key, word):
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump(mutate(base, path, value)))
    out = tmp_path / "out"
    assert main(["run", str(study_file), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert str(study_file.resolve()) in err[0] or str(study_file) in err[0]
    assert f"{key}:" in err[0] and word in err[0], err[0]
    assert not out.exists()


def test_yaml_syntax_error_names_file_and_line(tmp_path, capsys):
    study_file = tmp_path / "study.yaml"
    study_file.write_text("name: x\nmethods: [lora\n")
    assert main(["run", str(study_file), "--out", str(tmp_path / "out")]) == 2
    assert f"{study_file.resolve()}:" in capsys.readouterr().err


def test_include_cycle(base, tmp_path):
    (tmp_path / "a.yaml").write_text("include: [b.yaml]\n")
    (tmp_path / "b.yaml").write_text("include: [a.yaml]\n")
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump(mutate(base, "include", ["a.yaml"])))
    with pytest.raises(ValueError, match="include: cycle"):
        load_study(study_file)


def test_includes_merge_under_the_study(base, tmp_path):
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "lora.yaml").write_text(
        "spaces:\n  lora:\n    lr: {grid: [0.001, 0.01]}\n    lora_bottleneck: {grid: [1, 8, 16, 32]}\n")
    study = mutate(base, "include", ["methods/lora.yaml"])
    study["spaces"] = {**study["spaces"], "lora": {"lr": {"grid": [0.5]}}}  # the study's own value wins
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    loaded = load_study(tmp_path / "study.yaml")
    assert loaded.spaces["lora"]["lr"].values == (0.5,)
    assert loaded.spaces["lora"]["lora_bottleneck"].values == (1, 8, 16, 32)


def test_unreachable_tracking_server_is_reported_before_any_trial(base, tmp_path, capsys):
    from search.cluster.local import free_port
    study_file = tmp_path / "study.yaml"
    uri = f"http://127.0.0.1:{free_port()}"
    study_file.write_text(yaml.safe_dump(mutate(base, "mlflow", {"tracking_uri": uri})))
    out = tmp_path / "out"
    assert main(["run", str(study_file), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unreachable" in err and uri in err and not out.exists()


SPACES = __import__("pathlib").Path(__file__).resolve().parents[1] / "spaces"


@pytest.mark.parametrize("name", ["demo", "vtab1k", "manyshot_cifar100", "manyshot_resisc45",
                                  "manyshot_clevr", "clip_imagenet"])
def test_shipped_studies_are_valid(name):
    study = load_study(SPACES / f"{name}.yaml", check_data=False)
    assert study.cells()


def test_vtab1k_study_is_the_papers_9804_tuning_runs():
    study = load_study(SPACES / "vtab1k.yaml", check_data=False)
    assert len(study.datasets) == 19 and len(study.methods) == 16
    assert sum(study.budget(c) for c in study.cells()) == 9_804


def test_demo_has_at_least_five_methods_on_minivtab():
    study = load_study(SPACES / "demo.yaml", check_data=False)
    assert len(study.methods) >= 5 and study.backbone == "fmnist_vit_tiny"


def test_method_files_carry_the_method_grids():
    import peft_core
    for method, info in peft_core.methods().items():
        if method == "zero_shot":
            continue
        space = yaml.safe_load((SPACES / "methods" / f"{method}.yaml").read_text())["spaces"][method]
        assert {k: v["grid"] for k, v in space.items() if k not in ("lr", "wd")} == info["grid"]
        assert space["lr"]["grid"] == [0.001, 0.01] and space["wd"]["grid"] == [0.0001, 0.001]


def test_cell_sampler_never_spends_a_trial_on_a_point_twice():
    import optuna

    from search.tune.sampling import CellSampler, _key, make_sampler
    from search.space import parse_dimension
    space = {"lr": parse_dimension("lr", {"grid": [1, 2, 3]}), "r": parse_dimension("r", {"grid": [1, 2]})}
    study = optuna.create_study(direction="maximize", sampler=make_sampler("tpe", 0, 6))
    sampler = CellSampler(study, space, 0)
    seen = []
    for _ in range(6):
        trial = sampler.ask()
        seen.append(_key(trial.params))
        study.tell(trial, float(trial.params["lr"]))
    assert len(set(seen)) == 6


@pytest.mark.parametrize("name", ["tpe", "random", "cmaes"])
def test_every_sampler_proposes_points_inside_the_space(name):
    import optuna

    from search.tune.sampling import CellSampler, make_sampler
    from search.space import parse_dimension
    space = {"lr": parse_dimension("lr", {"loguniform": [1e-4, 1e-2]}),
             "wd": parse_dimension("wd", {"uniform": [0.0, 0.1]}),
             "r": parse_dimension("r", {"choice": [4, 8]})}
    study = optuna.create_study(direction="maximize", sampler=make_sampler(name, 0))
    sampler = CellSampler(study, space, 0)
    for _ in range(12):
        trial = sampler.ask()
        p = trial.params
        assert 1e-4 <= p["lr"] <= 1e-2 and 0.0 <= p["wd"] <= 0.1 and p["r"] in (4, 8)
        study.tell(trial, -abs(p["lr"] - 1e-3))


def test_warm_start_ranks_points_by_how_they_did_elsewhere():
    from search.tune.sampling import warm_start_points
    a, b, c = {"lr": 1}, {"lr": 2}, {"lr": 3}
    histories = [[(a, 50.0), (b, 70.0), (c, 60.0)], [(a, 40.0), (b, 45.0), (c, 44.0)]]
    assert warm_start_points([a, b, c], histories, 2) == [b, c]
    assert warm_start_points([a, b, c], [], 3) == [] and warm_start_points([], histories, 3) == []


def test_warm_start_compares_other_methods_on_the_keys_they_share():
    from search.tune.sampling import warm_start_points
    # this cell: lr x rank; another method on the same dataset tried lr x wd: lr 3 won there
    grid = [{"lr": lr, "r": r} for lr in (1, 3) for r in (4, 8)]
    other_method = [({"lr": 1, "wd": 0}, 50.0), ({"lr": 1, "wd": 1}, 55.0),
                    ({"lr": 3, "wd": 0}, 80.0), ({"lr": 3, "wd": 1}, 79.0)]
    same_method_elsewhere = [({"lr": 3, "r": 8}, 90.0), ({"lr": 3, "r": 4}, 60.0),
                             ({"lr": 1, "r": 8}, 70.0), ({"lr": 1, "r": 4}, 65.0)]
    assert warm_start_points(grid, [other_method], 2) == [{"lr": 3, "r": 4}, {"lr": 3, "r": 8}]
    assert warm_start_points(grid, [other_method, same_method_elsewhere], 1) == [{"lr": 3, "r": 8}]
    assert warm_start_points(grid, [[({"wd": 0}, 1.0)]], 2) == []  # nothing shared: no guess


def test_searcher_warm_starts_a_cell_from_its_dataset_and_its_method(tmp_path, base):
    """A new digits/lora cell first tries the lr that won for full on digits and the rank that
    won for lora on digits_rot (its own sampler takes over after that)."""
    from search.tune.records import TrialRecord
    from search.tune.searcher import StudySearcher
    from search.study import Cell
    study = {**base, "datasets": ["digits", "digits_rot"], "methods": ["full", "lora"],
             "spaces": {"full": {"lr": {"grid": [0.001, 0.01]}},
                        "lora": {"lr": {"grid": [0.001, 0.01]}, "lora_bottleneck": {"grid": [1, 4, 8, 16]}}},
             "search": {"sampler": "tpe", "num_samples": "grid", "warm_start": True}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    searcher = StudySearcher(load_study(tmp_path / "study.yaml"), tmp_path)
    finished = [("digits/full", {"lr": 0.001}, 60.0), ("digits/full", {"lr": 0.01}, 80.0),
                ("digits_rot/lora", {"lr": 0.01, "lora_bottleneck": 16}, 75.0),
                ("digits_rot/lora", {"lr": 0.01, "lora_bottleneck": 1}, 55.0),
                ("digits_rot/lora", {"lr": 0.001, "lora_bottleneck": 16}, 70.0),
                ("digits_rot/full", {"lr": 0.001}, 99.0)]  # neither the dataset nor the method: ignored
    for i, (cell, params, value) in enumerate(finished):
        searcher.books[cell].add(TrialRecord(f"t{i}", cell, "tune", params, i, None, 1, status="completed",
                                             value=value))
    assert searcher._warm_start_points(Cell("digits", "lora")) == [{"lr": 0.01, "lora_bottleneck": 16}]


def test_schema_validates_every_shipped_study_and_rejects_a_typo(capsys):
    import json

    import jsonschema

    from peft_core.yaml_files import read_yaml
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    studies = sorted(SPACES.glob("*.yaml"))
    assert len(studies) >= 6
    for path in studies:
        errors = [e.message for e in validator.iter_errors(read_yaml(path))]
        assert not errors, f"{path}: {errors[:3]}"
    demo = read_yaml(SPACES / "demo.yaml")
    assert not list(validator.iter_errors(demo))
    for key, bad in (("search", {**demo["search"], "samplr": "tpe"}), ("variants", {"lora_8": "lorra"}),
                     ("spaces", {"lora": {"rank_size": {"grid": [1]}}})):
        assert list(validator.iter_errors({**demo, key: bad})), key


@pytest.mark.parametrize("name, folder, lr_wd", [("manyshot_cifar100", "method_cifar", "lr_wd_cifar.yml"),
                                              ("manyshot_resisc45", "method_resisc", "lr_wd_resisc.yml"),
                                              ("manyshot_clevr", "method_clevr", "lr_wd_clevr.yml")])
def test_many_shot_studies_are_the_studys_own_files(tmp_path, name, folder, lr_wd):
    """Every cell of a shipped many-shot study (one per fixed rank) searches exactly what the
    study's method file and lr_wd file resolve to, and runs the method they describe."""
    from pathlib import Path

    from search.study import Cell
    petl = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "petl_config"
    shipped = load_study(SPACES / f"{name}.yaml", check_data=False)
    raw = yaml.safe_load((SPACES / f"{name}.yaml").read_text())
    raw["spaces"] = {m: {"files": [str(petl / folder / f"{m}.yml"), str(petl / lr_wd)]} for m in shipped.methods}
    raw.pop("variants")
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(raw))
    from_files = load_study(tmp_path / "study.yaml", check_data=False)
    for method in shipped.methods:
        assert shipped.base_method(method) == from_files.base_method(method), method
        assert shipped.space(method) == from_files.space(method), method
    dataset = next(iter(shipped.datasets))
    if name != "manyshot_clevr":  # lr x wd x drop-path: 2 x 2 x 3
        assert shipped.budget(Cell(dataset, "full")) == 12 and shipped.budget(Cell(dataset, "lora_8")) == 12
    ranks = sorted(int(m.rsplit("_", 1)[1]) for m in shipped.methods if shipped.base_method(m) == "lora" and m != "lora")
    assert ranks == [1, 2, 4, 8, 16, 32, 64, 128, 256]


def test_a_methods_own_grid_needs_grid_values(base, tmp_path, capsys):
    study = {**base, "search": {**base["search"], "num_samples_by_method": {"lora": "grid"}}}
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump(study))
    assert main(["run", str(study_file), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "spaces.lora.lr:" in err[0] and "grid search needs grid/choice" in err[0], err
    assert not (tmp_path / "out").exists()


def test_clip_imagenet_study_is_the_studys_own_clip_files():
    """Every cell of clip_imagenet.yaml, one per method-imagenet file (lora_1 ... lora_256), runs
    what the study's clip_fs_imagenet.yml + that file resolve to, and searches the drop-path grid
    of its lr_wd_clip_imagenet.yml."""
    from pathlib import Path

    from peft_core.registry import get_method
    from peft_core.run_config import merged_values, resolve_grid
    petl = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "petl_config"
    study = load_study(SPACES / "clip_imagenet.yaml", check_data=False)
    searched = yaml.safe_load((petl / "lr_wd_clip_imagenet.yml").read_text())
    files = sorted((petl / "method-imagenet").glob("*.yml"))
    assert [c.method for c in study.cells()] == ["zero_shot"] + [f.stem for f in sorted(
        files, key=lambda f: (study.methods.index(f.stem)))] and len(files) == len(study.methods) - 1
    for cell in study.cells()[1:]:
        method_file = petl / "method-imagenet" / f"{cell.method}.yml"
        theirs, _ = resolve_grid(*merged_values([petl / "clip_fs_imagenet.yml", method_file],
                                                {"lr": searched["lr"], "wd": searched["wd"]}))
        assert theirs.method == study.base_method(cell.method)
        space = study.space(cell.method)
        ours = study.trial_config(cell, {k: d.values[0] for k, d in space.items()}, "tune", None)
        for key in ("lr", "wd", "lr_min", "warmup_lr_init", "epoch", "warmup_epoch", "batch_size",
                    "early_patience", "eval_freq", "final_acc_hp", "normalize", "drop_path_rate"):
            assert ours[key] == getattr(theirs, key), (cell.id, key)
        method = get_method(theirs.method)  # every hyper-parameter, defaults included
        assert method.from_hp(**ours["hp"]) == method.from_hp(**theirs.hp), cell.id
        assert list(space["drop_path_rate"].values) == searched["drop_path_rate"]
