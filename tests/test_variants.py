"""Variants (one cell per fixed rank: lora_1, lora_8, ...) and spaces named by the study's own
files (its method files, ``lr_wd_*.yml``, ``default_*.yml``)."""
from pathlib import Path

import pytest
import yaml

from search.study import Cell, StudyError, load_study

PETL = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "petl_config"


def study(tmp_path, **changes) -> Path:
    values = {"name": "ranks", "backbone": "vit_b16_in21k", "data_root": str(tmp_path),
              "datasets": ["cifar"], "train": {"epoch": 40, "warmup_epoch": 4}, "search": {"sampler": "grid"},
              **changes}
    (tmp_path / "cfg").symlink_to(PETL) if not (tmp_path / "cfg").exists() else None
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(values))
    return tmp_path / "study.yaml"


def grids(study_obj, method):
    return {key: list(dim.values) for key, dim in study_obj.space(method).items()}


def test_the_studys_files_name_a_cells_method_and_space(tmp_path):
    s = load_study(study(tmp_path, methods=["linear", "lora_8", "adaptformer_8", "clevr_lora", "lora_16"],
                         variants={"lora_16": "lora"}, spaces={
        "linear": {"files": "cfg/lr_wd_cifar.yml"},  # names no method: the cell's
        "lora_8": {"files": ["cfg/method_cifar/lora_8.yml", "cfg/lr_wd_cifar.yml"]},
        "adaptformer_8": {"files": ["cfg/method_cifar/adaptformer_8.yml", "cfg/lr_wd_cifar.yml"],
                          "lr": {"grid": [0.002]}},  # written next to the files: it wins
        "clevr_lora": {"files": ["cfg/default_clevr.yml", "cfg/method_clevr/lora_8.yml", "cfg/lr_wd_clevr.yml"]},
        "lora_16": {"lora_bottleneck": 16, "lr": {"grid": [0.001]}}}), check_data=False)
    lr_wd = yaml.safe_load((PETL / "lr_wd_cifar.yml").read_text())
    assert grids(s, "linear") == lr_wd
    assert s.base_method("lora_8") == "lora" and grids(s, "lora_8") == {"lora_bottleneck": [8], **lr_wd}
    adaptformer = yaml.safe_load((PETL / "method_cifar" / "adaptformer_8.yml").read_text())
    assert s.base_method("adaptformer_8") == "adaptformer"
    assert grids(s, "adaptformer_8") == {"adapter_bottleneck": [8], "adapter_scaler": adaptformer["adapter_scaler"],
                                         **lr_wd, "lr": [0.002]}
    # A default file's training settings that differ from train: are the cell's own (Clevr's drop-path 0)
    clevr = grids(s, "clevr_lora")
    assert clevr["drop_path_rate"] == [0.0] and clevr["lora_bottleneck"] == [8] and "epoch" not in clevr
    with pytest.raises(StudyError, match="pretrained_weights: the files are for 'vit_b16_in21k', the study runs "
                       "'tiny_vit_b16_in21k'"):
        load_study(study(tmp_path, backbone="tiny_vit_b16_in21k", methods=["clevr_lora"],
                         spaces={"clevr_lora": {"files": ["cfg/default_clevr.yml", "cfg/method_clevr/lora_8.yml"]}}),
                   check_data=False)
    assert s.variants == {"lora_16": "lora", "lora_8": "lora", "adaptformer_8": "adaptformer", "clevr_lora": "lora"}
    assert s.budget(Cell("cifar", "lora_8")) == 2 * 2 * 3 and s.budget(Cell("cifar", "lora_16")) == 1
    config = s.trial_config(Cell("cifar", "lora_8"), {"lora_bottleneck": 8, "lr": 0.001, "wd": 0.001,
                                                      "drop_path_rate": 0.2}, "tune")
    assert (config["method"], config["hp"], config["drop_path_rate"]) == ("lora", {"lora_bottleneck": 8}, 0.2)


@pytest.mark.parametrize("changes, error", [
    ({"methods": ["lorra"]}, "methods[0]: unknown method 'lorra' (a variant needs variants.lorra: METHOD"),
    ({"methods": ["lora"], "variants": {"lora": "ssf"}}, "variants.lora: 'lora' is a method already"),
    ({"methods": ["lora_8"], "variants": {"lora_8": "ssf"}, "spaces": {"lora_8": {"files": "cfg/method_cifar/lora_8.yml"}}},
     "spaces.lora_8.files: the files describe 'lora', not 'ssf'"),
    ({"methods": ["lora_8"], "spaces": {"lora_8": {"files": "cfg/no_such.yml"}}}, "spaces.lora_8.files: file not found"),
    ({"methods": ["lora_8"], "spaces": {"lora_8": {"files": ["cfg/method_cifar/lora_8.yml", "bad.yml"]}}},
     "spaces.lora_8.files: cfg/method_cifar/lora_8.yml + bad.yml: unknown key 'lora_rank'"),
    ({"methods": ["lora_8"], "variants": {"lora_8": "lora"}, "spaces": {"lora_8": {"lora_bottleneck": 0}}},
     "spaces.lora_8.lora_bottleneck"),
])
def test_a_bad_variant_is_one_line_naming_its_key(tmp_path, changes, error):
    (tmp_path / "bad.yml").write_text("lora_rank: 4\n")
    with pytest.raises(StudyError) as raised:
        load_study(study(tmp_path, **{"methods": ["lora"], **changes}), check_data=False)
    assert error in str(raised.value) and "\n" not in str(raised.value), str(raised.value)


def test_one_cell_per_rank_runs_logs_its_method_and_draws_the_rank_curve(tmp_path, minivtab):
    from mlflow.tracking import MlflowClient

    from search.report.build import report
    from search.study_folder import tracking_source
    from tests.studies import run_study
    (tmp_path / "cfg").symlink_to(PETL)
    out = run_study({
        "name": "ranks", "backbone": "tiny_vit_b16_in21k", "data_root": str(minivtab), "datasets": ["digits"],
        "methods": ["linear", "lora_1", "lora_8"],
        "train": {"epoch": 2, "warmup_epoch": 0, "pretrained": False, "eval_freq": 1},
        "spaces": {"linear": {"lr": 0.01}, "lora_1": {"files": "cfg/method_cifar/lora_1.yml", "lr": 0.01},
                   "lora_8": {"files": "cfg/method_cifar/lora_8.yml", "lr": 0.01}},
        "search": {"sampler": "grid", "max_concurrent": 1}}, tmp_path)
    uri, experiment = tracking_source(out)
    client = MlflowClient(uri)
    finals = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], "tags.phase = 'final'")
    by_method = {r.data.tags["method"]: r for r in finals}
    assert set(by_method) == {"linear", "lora_1", "lora_8"}
    assert {m: r.data.tags["base_method"] for m, r in by_method.items()} == \
        {"linear": "linear", "lora_1": "lora", "lora_8": "lora"}
    # LoRA on q and v of each of the tiny ViT's blocks: 2 x (d x r + r x d) per block
    from peft_core.backbones import build_backbone
    model = build_backbone("tiny_vit_b16_in21k", num_classes=10)
    width, depth = model.embed_dim, len(model.blocks)
    for method, rank in (("lora_1", 1), ("lora_8", 8)):
        assert by_method[method].data.metrics["inserted_params"] == depth * 2 * 2 * width * rank
    summary = report(uri, experiment, tmp_path / "report")
    assert "variants_digits.png" in summary["figures"]  # lora's curve; linear has one cell: none
    assert (tmp_path / "report" / "variants_digits.png").stat().st_size > 10_000
