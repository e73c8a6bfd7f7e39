"""The peft-search command line: one real subprocess, the rest in-process through ``main``."""
import json
import os
import subprocess
import sys

import pytest

from search.cli import main

STUDY_METHODS = ["linear", "full", "bitfit", "ln", "difffit", "ssf", "lora", "adaptformer",
                 "lora_p_adapter", "rand_p_adapter", "rand_h_adapter", "zero_adapter", "convpass",
                 "repadapter", "fact_tt", "fact_tk", "vpt_shallow", "vpt_deep", "vqt", "attn_tune",
                 "mlp_tune", "block_tune", "zero_shot"]


def run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_methods_table_as_a_user_runs_it():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "search.cli", "methods"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    listed = {line.split()[0] for line in out.stdout.splitlines()[1:]}
    assert set(STUDY_METHODS) <= listed
    assert "lora_bottleneck {1, 8, 16, 32}" in out.stdout


def test_methods_json(capsys):
    code, out, _ = run(capsys, "methods", "--json")
    table = json.loads(out)
    assert code == 0 and table["convpass"]["grid"]["convpass_scaler"] == [0.01, 0.1, 1.0, 10.0, 100.0]
    assert table["lora"]["hyperparameters"]["lora_bottleneck"]["default"] == 8
    assert table["lora"]["mergeable"] and not table["adaptformer"]["mergeable"]


def test_params_json(capsys):
    code, out, _ = run(capsys, "params", "--method", "adaptformer", "--backbone", "vit_b16_in21k",
                       "--set", "adapter_bottleneck=32", "--json")
    result = json.loads(out)
    assert code == 0 and result["inserted_params"] == 599_424
    assert result["backbone_params"] == 85_798_656


def test_params_text(capsys):
    code, out, _ = run(capsys, "params", "--method", "ln", "--backbone", "clip_vitb16")
    assert code == 0 and "39,936 inserted parameters" in out


@pytest.mark.parametrize("args,needle", [
    (["params", "--method", "nope"], "unknown method 'nope'"),
    (["params", "--method", "lora", "--set", "lora_bottleneck=-2"], "'lora_bottleneck'=-2"),
    (["params", "--method", "lora", "--set", "oops"], "key=value"),
    (["params", "--method", "lora", "--backbone", "resnet"], "unknown backbone 'resnet'"),
    (["params", "--method", "lora", "--set", "bottleneck=4"], "unknown hyper-parameter 'bottleneck'"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, args, needle):
    code, out, err = run(capsys, *args)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0]
