"""The study's YAML flags name a method through each method's own declaration, and the study's
own files work unchanged: every default file with every method file of its scenario resolves
(``train --check``) to the method the study meant, with the grid the file lists."""
import functools
import math
import re
from pathlib import Path

import pytest
import yaml

import peft_core
from peft_core import registry
from peft_core.registry import ON, get_method, method_from_study_keys, study_flag_keys
from peft_core.run_config import load_train_config, merged_values, resolve_grid
from search.cli import main

PETL_CONFIG = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "petl_config"
METHOD_FILES = sorted(PETL_CONFIG.glob("method*/*.yml"))
DEFAULT_FILES = sorted(PETL_CONFIG.glob("default_*.yml")) + [PETL_CONFIG / "clip_fs_imagenet.yml"]
SRC = "a.yml + b.yml"

# What the flag translation answered before it moved into the methods, branch by branch.
UNCHANGED = [
    ({}, "linear"),
    ({"full": True}, "full"),
    ({"full": False}, "linear"),
    ({"ssf": True}, "ssf"),
    ({"bitfit": True}, "bitfit"),
    ({"difffit": True}, "difffit"),
    ({"ln": True}, "ln"),
    ({"vpt_mode": "shallow", "vpt_num": 50}, "vpt_shallow"),
    ({"vpt_mode": "deep"}, "vpt_deep"),
    ({"fact_type": "tt", "fact_dim": 8}, "fact_tt"),
    ({"fact_type": "tk"}, "fact_tk"),
    ({"ft_mlp_module": "adapter"}, "adaptformer"),
    ({"ft_mlp_module": "adapter", "ft_mlp_mode": "parallel", "ft_mlp_ln": "before",
      "adapter_init": "lora_kaiming", "adapter_bottleneck": 32}, "adaptformer"),
    ({"ft_mlp_module": "adapter", "ft_mlp_mode": "sequential_after", "adapter_init": "lora_xavier"},
     "lora_p_adapter"),
    ({"ft_mlp_module": "adapter", "ft_mlp_mode": "sequential_after", "adapter_init": "zero"}, "zero_adapter"),
    ({"ft_mlp_module": "adapter", "ft_mlp_mode": "sequential_after"}, "rand_p_adapter"),
    ({"ft_mlp_module": "adapter", "ft_mlp_mode": "sequential_after", "adapter_init": "xavier"},
     "rand_p_adapter"),
    ({"ft_mlp_module": "adapter", "ft_mlp_mode": "sequential_after", "ft_attn_module": "adapter"},
     "rand_h_adapter"),
    ({"ft_mlp_module": "adapter", "ft_mlp_mode": "sequential_after", "ft_attn_module": "adapter",
      "ft_attn_mode": "sequential_after", "adapter_init": "random"}, "rand_h_adapter"),
    ({"lora_bottleneck": 8}, "lora"),
    ({"lora_bottleneck": 0}, "linear"),
    ({"vqt_num": 10}, "vqt"),
    ({"ft_mlp_mode": "parallel", "ft_mlp_ln": "before", "adapter_init": "lora_kaiming"}, "linear"),
]
# Errors before and after (the message now also names the other flags the family reads).
UNCHANGED_ERRORS = [
    ({"vpt_mode": "middle"}, "vpt_mode='middle'"),
    ({"fact_type": "cp"}, "fact_type='cp'"),
    ({"ft_mlp_module": "lora"}, "ft_mlp_module='lora'"),
    ({"ft_mlp_module": "convpass"}, "ft_mlp_module='convpass'"),  # ConvPass beside the MLP only
    ({"ft_mlp_module": "adapter", "ft_mlp_mode": "sequential_before"},
     "ft_mlp_module='adapter', ft_mlp_mode='sequential_before'"),
    ({"ft_mlp_module": "adapter", "ft_mlp_mode": "parallel", "ft_mlp_ln": "after"},
     "ft_mlp_module='adapter', ft_mlp_mode='parallel', ft_mlp_ln='after'"),
]
# Where the answer changed, and why.
CHANGED = [
    # The study tests its flags with `if params.key`: its default files set the unused ones to
    # null / false / 0 (before: "vpt_mode=None is not a method this project runs").
    ({"vpt_mode": None, "fact_type": None, "ft_mlp_module": None, "full": False}, "linear"),
    ({"vpt_mode": None, "fact_type": "tt"}, "fact_tt"),
    # The study's ConvPass and RepAdapter files (before: "ft_mlp_module='convpass' is not a method").
    ({"ft_attn_module": "convpass", "ft_attn_mode": "parallel", "ft_attn_ln": "after",
      "ft_mlp_module": "convpass", "ft_mlp_mode": "parallel", "ft_mlp_ln": "after"}, "convpass"),
    ({"ft_attn_module": "repadapter", "ft_attn_mode": "sequential_before",
      "ft_mlp_module": "repadapter", "ft_mlp_mode": "sequential_before"}, "repadapter"),
    # The study's default files set both for every method (before: repadapter, convpass).
    ({"repadapter_bottleneck": 8}, "linear"),
    ({"convpass_bottleneck": 8}, "linear"),
    # Selective tuning by the study's index keys (before: linear, then "unknown key").
    ({"attention_index": [11]}, "attn_tune"),
    ({"mlp_index": [10, 11]}, "mlp_tune"),
    ({"block_index": [11]}, "block_tune"),
]
CHANGED_ERRORS = [  # before: the first of a fixed order won, or a flag was ignored
    ({"full": True, "ssf": True}, "full=True, ssf=True"),  # before: full
    ({"vpt_mode": "deep", "lora_bottleneck": 8}, "vpt_mode='deep', lora_bottleneck=8"),  # vpt_deep
    ({"ft_attn_module": "adapter"}, "ft_attn_module='adapter'"),  # linear
    ({"ft_mlp_module": "adapter", "ft_mlp_mode": "sequential_after", "adapter_init": "lora_kaiming"},
     "ft_mlp_module='adapter', ft_mlp_mode='sequential_after', adapter_init='lora_kaiming'"),  # rand_p
    ({"ft_mlp_module": "adapter", "ft_mlp_mode": "sequential_after", "ft_attn_module": "adapter",
      "adapter_init": "lora_xavier"},  # lora_p_adapter
     "ft_mlp_module='adapter', ft_mlp_mode='sequential_after', ft_attn_module='adapter', "
     "adapter_init='lora_xavier'"),
    ({"ft_mlp_module": "adapter", "adapter_init": "zero"},  # adaptformer
     "ft_mlp_module='adapter', adapter_init='zero'"),
    ({"vpt_mode": "deep", "vpt_layer": 6}, "vpt_mode='deep', vpt_layer=6"),  # vpt_deep on every block
]


@pytest.mark.parametrize("values,method", UNCHANGED + CHANGED)
def test_flags_name_the_method(values, method):
    assert method_from_study_keys(values, SRC) == method


@pytest.mark.parametrize("values,given", UNCHANGED_ERRORS + CHANGED_ERRORS)
def test_flags_that_name_no_method_are_one_line_errors(values, given):
    with pytest.raises(ValueError) as err:
        method_from_study_keys(values, SRC)
    assert str(err.value) == f"{SRC}: {given} is not a method this project runs"


def test_study_flag_keys_come_from_the_methods():
    assert study_flag_keys() == {
        "full", "ssf", "bitfit", "ln", "difffit", "vpt_mode", "vpt_layer", "vpt_dropout", "fact_type",
        "ft_mlp_module", "ft_mlp_mode", "ft_mlp_ln", "ft_attn_module", "ft_attn_mode", "ft_attn_ln",
        "adapter_init", "lora_bottleneck", "vqt_num", "attention_index", "mlp_index", "block_index",
        "convpass_init", "repadapter_init", "vqt_dropout"}


@pytest.mark.parametrize("method", [m for m in peft_core.methods() if get_method(m).study_switches])
def test_every_declaration_names_its_own_method_only(method):
    cls = get_method(method)
    values = {k: 1 if want is ON else want for k, want in cls.study_switches.items()}
    values.update({k: allowed[0] for k, allowed in cls.study_modes.items()})
    assert method_from_study_keys(values, SRC) == method


def test_two_methods_that_fit_the_same_flags_are_an_error(monkeypatch):
    twin = type("LoraTwin", (get_method("lora"),), {"name": "lora_twin"})
    monkeypatch.setitem(registry._METHODS, "lora_twin", twin)
    with pytest.raises(ValueError) as err:
        method_from_study_keys({"lora_bottleneck": 8}, SRC)
    assert str(err.value) == f"{SRC}: the study's flags fit several methods: lora, lora_twin"


@functools.cache
def _read(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _study_name(method_file: Path) -> str:
    """The registered method a study method file is for, from its ``method_name``."""
    name = re.sub(r"(_\d+)+$", "", _read(method_file).get("method_name") or "")
    renamed = {"attn_full": "attn_tune", "mlp_full": "mlp_tune", "block": "block_tune"}
    # template.yml names no method; zero_shot.yml sets no flag, only its name.
    return renamed.get(name, name or "linear")


@pytest.mark.skipif(not PETL_CONFIG.is_dir(), reason="../shared/fixtures not present")
@pytest.mark.parametrize("method_file", METHOD_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_study_method_files_name_their_method_alone_and_after_every_default(method_file):
    flags = _read(method_file)
    expected = _study_name(method_file)
    assert method_from_study_keys(flags, str(method_file)) == expected
    for default in DEFAULT_FILES:
        merged = {**_read(default), **flags}
        assert method_from_study_keys(merged, f"{default} + {method_file}") == expected


# -- whole files: `train --check` on every default file with each method file of its scenario --
SCENARIOS = {"default_vtab_processed": "method", "default_cifar100*": "method_cifar",
             "default_resisc*": "method_resisc", "default_clevr": "method_clevr",
             "clip_fs_imagenet": "method-imagenet"}
PAIRS = [(default, method) for pattern, folder in SCENARIOS.items()
         for default in sorted(PETL_CONFIG.glob(f"{pattern}.yml"))
         for method in sorted((PETL_CONFIG / folder).glob("*.yml"))]
def test_every_scenario_has_its_pairs():
    assert len(PAIRS) >= 300 and {d.stem for d, _ in PAIRS} >= {"default_vtab_processed", "default_clevr",
                                                                 "clip_fs_imagenet", "default_resisc_500"}


@pytest.mark.parametrize("default, method_file", PAIRS, ids=lambda p: p.stem if isinstance(p, Path) else p)
def test_a_study_pair_resolves_to_the_method_it_means_with_its_grid(default, method_file):
    config, grid = resolve_grid(*merged_values([default, method_file]))
    assert config.method == _study_name(method_file)
    listed = {k: v for k, v in (yaml.safe_load(method_file.read_text()) or {}).items() if isinstance(v, list)}
    assert grid == listed  # the lists the method file gives, and nothing else, make the grid


def test_train_check_prints_the_resolved_run_and_its_grid_size(capsys):
    default, method = PETL_CONFIG / "default_vtab_processed.yml", PETL_CONFIG / "method" / "fact_tk.yml"
    assert main(["train", "--config", str(default), "--config", str(method), "--check"]) == 0
    out = capsys.readouterr().out
    resolved = yaml.safe_load(out)
    assert resolved["method"] == "fact_tk" and resolved["hp"]["fact_dim"] == [16, 32, 64]
    assert (resolved["backbone"], resolved["epoch"], resolved["eval_freq"]) == ("vit_b16_in21k", 100, 200)
    size = math.prod(len(v) for v in yaml.safe_load(method.read_text()).values() if isinstance(v, list))
    assert f"grid of {size} points" in out.splitlines()[-1]


@pytest.mark.parametrize("override, message", [
    ("optimizer=sgd", "optimizer: 'sgd' is not supported; this project runs 'adamw'"),
    ("crop_size=384", "crop_size: 384 is not backbone 'vit_b16_in21k''s input size 224"),
    ("attention_index=(1, 2", "attention_index: '(1, 2' is not a list of block indices"),
])
def test_a_study_value_this_project_does_not_run_is_one_line(override, message, capsys):
    default, method = PETL_CONFIG / "default_cifar100.yml", PETL_CONFIG / "method_cifar" / "attn_full_11.yml"
    assert main(["train", "--config", str(default), "--config", str(method), "--set", override, "--check"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_run_is_one_point_of_a_listed_grid():
    files = [PETL_CONFIG / "default_vtab_processed.yml", PETL_CONFIG / "method" / "lora.yml"]
    with pytest.raises(ValueError, match=r"lora_bottleneck lists 4 values \(a grid of 4 points\); a run is one point"):
        load_train_config(files)
    assert load_train_config(files, {"lora_bottleneck": 8}).hp["lora_bottleneck"] == 8
