"""The training protocol on real data (scikit-learn digits) through the VTAB-1K layout."""
import json
import math
import shutil

import pytest
import torch
from timm.scheduler import CosineLRScheduler

import peft_core
from peft_core.checkpoint import load_adapter
from peft_core.run_config import load_train_config
from peft_core.train import TrainConfig, TrainingDiverged, build_model, track_best, train


def tiny(minivtab, **kw):
    base = dict(method="lora", backbone="tiny_vit_b16_in21k", pretrained=False, data="digits",
                data_path=str(minivtab), epoch=2, warmup_epoch=1, batch_size=64)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("method", [m for m in peft_core.methods() if m != "zero_shot"])
def test_every_method_trains_and_reports(minivtab, method):
    reports = []
    result = train(tiny(minivtab, method=method, epoch=2),
                   report=lambda metrics, ckpt: reports.append((metrics, sorted(p.name for p in ckpt.iterdir()))))
    assert [m["epoch"] for m, _ in reports] == [1, 2]
    assert all(files == ["state.json", "state.safetensors"] for _, files in reports)
    for key in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr"):
        assert key in result.metrics
    assert 0.0 <= result.metrics["val_top1"] <= 100.0 and result.status == "completed"


def test_zero_shot_evaluates_without_training(minivtab):
    result = train(tiny(minivtab, method="zero_shot", epoch=1, warmup_epoch=0))
    assert result.inserted_params == 0 and "val_top1" in result.metrics


def test_learning_rate_per_epoch_is_the_studys(minivtab):
    # The study builds timm's CosineLRScheduler (which starts the optimizer at warmup_lr_init),
    # trains an epoch, then calls scheduler.step(epoch): epoch k trains at lr(k - 1).
    config = tiny(minivtab, method="linear", epoch=100, warmup_epoch=10, lr=1e-3, warmup_lr_init=1e-6,
                  lr_min=1e-5, eval_freq=1)
    seen = {}
    train(config, report=lambda m, c: seen.__setitem__(m["epoch"] - 1, m["lr"]))
    reference = CosineLRScheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3),
                                  t_initial=100, lr_min=1e-5, warmup_t=10, warmup_lr_init=1e-6)
    assert sorted(seen) == list(range(100))
    assert seen[0] == seen[1] == pytest.approx(1e-6, rel=1e-12)
    for epoch in range(1, 100):
        assert seen[epoch] == pytest.approx(reference._get_lr(epoch - 1)[0], rel=1e-12), epoch
    step = (1e-3 - 1e-6) / 10
    assert seen[10] == pytest.approx(1e-6 + 9 * step, rel=1e-12)  # the last warm-up value
    # lr(10): timm's cosine (no warm-up prefix) at t = 10 of 100, one epoch later than lr(k) would put it
    assert seen[11] == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * 10 / 100)), rel=1e-12)
    assert seen[99] == pytest.approx(reference._get_lr(98)[0], rel=1e-12) and seen[99] > 1e-5


@pytest.mark.parametrize("eval_freq,expected", [(0, [1, 10]), (1, list(range(1, 11))), (3, [1, 4, 7, 10]),
                                                (4, [1, 5, 9, 10]), (20, [1, 10])])
def test_evaluation_epochs_are_the_studys(eval_freq, expected):
    # The study counts epochs from 0 and evaluates at epoch % eval_freq == 0 and at the last one.
    config = TrainConfig(epoch=10, warmup_epoch=1, eval_freq=eval_freq)
    assert [e for e in range(1, 11) if config.evaluates_at(e)] == expected
    assert [e for e in range(1, 11) if TrainConfig(epoch=10, warmup_epoch=1, eval_freq=eval_freq,
                                                   eval_epochs=[6]).evaluates_at(e)] \
        == sorted(set(expected) | {6})


def test_patience_counts_only_strictly_worse_results():
    state = {"best": None, "best_epoch": 0, "bad_evals": 0}
    trace = []
    for epoch, value in enumerate([50.0, 50.0, 60.0, 60.0, 55.0, 60.0, 58.0, 61.0], start=1):
        new_best = track_best(state, value, epoch)
        trace.append((new_best, state["bad_evals"]))
    assert trace == [(True, 0), (False, 0), (True, 0), (False, 0), (False, 1), (False, 1), (False, 2), (True, 0)]
    assert state["best"] == 61.0 and state["best_epoch"] == 8


@pytest.mark.parametrize("lr", [float("nan"), float("inf")])
def test_non_finite_learning_rate_is_refused_at_construction(minivtab, lr):
    # refused before any run starts; divergence during a run: test_exploding_loss_fails_the_trial_clearly
    msg = one_line(tiny, minivtab, lr=lr)
    assert msg == "train config: lr: Input should be a finite number"


def test_a_run_stopped_after_a_non_evaluation_epoch_resumes_at_the_next_epoch(minivtab, tmp_path):
    config = tiny(minivtab, method="lora", epoch=5, warmup_epoch=1, eval_freq=0)  # evaluates at 1 and 5
    assert not config.evaluates_at(3)
    saved, reported = tmp_path / "after_epoch_3", []

    def keep_epoch_3(metrics, folder):
        reported.append((metrics["epoch"], "val_top1" in metrics, folder is not None))
        if metrics["epoch"] == 3:
            shutil.copytree(folder, saved)

    full_run = train(config, report=keep_epoch_3)
    # every epoch reports its training metrics with a checkpoint; validation only where it evaluates
    assert reported == [(1, True, True), (2, False, True), (3, False, True), (4, False, True), (5, True, True)]
    resumed_epochs = []
    resumed = train(config, report=lambda m, f: resumed_epochs.append(m["epoch"]), resume_from=saved)
    assert resumed_epochs == [4, 5]
    assert resumed.history == full_run.history
    for (name, a), b in zip(full_run.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    sparse = []
    train(tiny(minivtab, method="lora", epoch=5, warmup_epoch=1, checkpoint_every=2),
          report=lambda m, f: sparse.append((m["epoch"], f is not None)))
    assert sparse == [(1, True), (2, True), (3, False), (4, True), (5, True)]


def test_exploding_loss_fails_the_trial_clearly(minivtab):
    with pytest.raises(TrainingDiverged, match=r"loss is (nan|inf) at epoch \d+ step \d+"):
        train(tiny(minivtab, method="full", lr=1e30, warmup_epoch=0, epoch=3))


@pytest.mark.parametrize("method", ["lora", "vpt_deep"])
def test_resume_from_a_mid_run_checkpoint_matches_an_uninterrupted_run(minivtab, tmp_path, method):
    config = tiny(minivtab, method=method, epoch=4, eval_freq=1)
    saved = tmp_path / "epoch2"

    def keep_epoch_2(metrics, ckpt):
        if metrics["epoch"] == 2:
            shutil.copytree(ckpt, saved)

    full_run = train(config, report=keep_epoch_2)
    resumed = train(config, resume_from=saved)
    assert resumed.history == full_run.history
    for (name, a), b in zip(full_run.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_feature_cache_gives_the_same_head_as_uncached_eval_mode_training(minivtab):
    # drop_path 0: the frozen backbone computes the same in train and eval mode.
    config = tiny(minivtab, method="linear", epoch=5, drop_path_rate=0.0, lr=0.01)
    cached = train(config)
    uncached = train(TrainConfig(**{**config.to_dict(), "feature_cache": False}))
    torch.testing.assert_close(cached.model.head.weight, uncached.model.head.weight, rtol=1e-4, atol=1e-5)
    assert cached.metrics["val_top1"] == uncached.metrics["val_top1"]


def test_linear_probing_under_drop_path_trains_the_head_on_train_mode_features_as_the_study(minivtab):
    """With drop-path the study's head sees noisy train-mode features: the cache (eval-mode
    features) would be another baseline, so by default it is off and the run equals a plain one."""
    config = tiny(minivtab, method="linear", epoch=3, drop_path_rate=0.1, lr=0.01)
    default = train(config)
    plain = train(TrainConfig(**{**config.to_dict(), "feature_cache": False}))
    cached = train(TrainConfig(**{**config.to_dict(), "feature_cache": True}))  # asked for by name
    assert torch.equal(default.model.head.weight, plain.model.head.weight)
    assert default.history == plain.history
    assert not torch.allclose(cached.model.head.weight, plain.model.head.weight, atol=1e-5)


def one_line(fn, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_missing_data_root_list_file_and_image(minivtab, tmp_path):
    assert str(tmp_path / "nowhere") in one_line(train, tiny(tmp_path / "nowhere"))
    broken = tmp_path / "broken"
    shutil.copytree(minivtab / "digits", broken / "digits")
    (broken / "digits" / "val200.txt").unlink()
    assert str(broken / "digits" / "val200.txt") in one_line(train, tiny(broken))
    shutil.copy(minivtab / "digits" / "val200.txt", broken / "digits" / "val200.txt")
    first = (broken / "digits" / "train800.txt").read_text().split()[0]
    (broken / "digits" / first).unlink()
    assert f"image not found: {broken / 'digits' / first}" == one_line(train, tiny(broken))


def test_malformed_list_line_names_file_and_line(minivtab, tmp_path):
    shutil.copytree(minivtab / "digits", tmp_path / "digits")
    lines = (tmp_path / "digits" / "train800.txt").read_text().splitlines()
    lines[4] = "images/00001.png seven"
    (tmp_path / "digits" / "train800.txt").write_text("\n".join(lines))
    assert f"{tmp_path / 'digits' / 'train800.txt'}:5:" in one_line(train, tiny(tmp_path))


def test_wrong_class_count(minivtab):
    msg = one_line(train, tiny(minivtab, num_classes=7))
    assert str(minivtab / "digits") in msg and "10 classes" in msg and "num_classes is 7" in msg


def test_corrupt_checkpoint(minivtab, tmp_path):
    folder = tmp_path / "ckpt"
    train(tiny(minivtab, epoch=1, warmup_epoch=0), report=lambda m, c: shutil.copytree(c, folder))
    (folder / "state.safetensors").write_bytes(b"not a safetensors file")
    assert str(folder) in one_line(train, tiny(minivtab), resume_from=folder)


def test_train_cli_writes_adapter_and_prints_json(minivtab, tmp_path, capsys):
    from search.cli import main
    config = tmp_path / "run.yaml"
    config.write_text(f"method: lora\nlora_bottleneck: 4\nbackbone: tiny_vit_b16_in21k\n"
                      f"pretrained: false\ndata: processed_vtab-digits\ndata_path: {minivtab}\n"
                      f"epoch: 2\nwarmup_epoch: 1\n")
    out = tmp_path / "out"
    assert main(["train", "--config", str(config), "--set", "seed=3", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["inserted_params"] == 2 * 4 * (48 + 3 * 48) and summary["seconds"] > 0
    assert "val_top1" in summary and "epoch 2/2" in captured.err
    resolved = load_train_config([out / "config.yaml"])
    assert resolved.seed == 3 and resolved.hp == {"lora_bottleneck": 4}
    model = build_model(resolved, 10)
    load_adapter(model, out / "adapter.safetensors")
    # the same run again refuses to overwrite
    assert main(["train", "--config", str(config), "--out", str(out)]) == 2


def test_study_default_and_method_file_pair(tmp_path):
    default = tmp_path / "default_vtab.yml"
    default.write_text("model: vit\npretrained_weights: vit_base_patch16_224_in21k\nbatch_size: 64\n"
                       "test_batch_size: 512\nepoch: 100\nwarmup_epoch: 10\nlr_min: 1.0e-05\n"
                       "warmup_lr_init: 1.0e-06\noptimizer: adamw\ndrop_path_rate: 0.1\n"
                       "random_seed: 42\nnormalized: false\nfinal_acc_hp: true\n")
    method = tmp_path / "adaptformer.yml"
    method.write_text("ft_mlp_module: adapter\nft_mlp_mode: parallel\nft_mlp_ln: before\n"
                      "adapter_init: lora_kaiming\nadapter_bottleneck: 32\nadapter_scaler: 0.1\n")
    config = load_train_config([default, method], {"data": "processed_vtab-dtd"})
    assert config.method == "adaptformer" and config.backbone == "vit_b16_in21k"
    assert config.hp == {"adapter_bottleneck": 32, "adapter_scaler": 0.1} and config.seed == 42
    method.write_text("ft_mlp_module: adapter\nft_mlp_mode: sequential_after\nft_attn_module: adapter\n"
                      "adapter_init: random\nadapter_bottleneck: 8\n")
    assert load_train_config([default, method]).method == "rand_h_adapter"
    method.write_text("vpt_mode: deep\nvpt_num: 10\n")
    assert load_train_config([default, method]).hp == {"vpt_num": 10}
    method.write_text("lora_bottleneck: 8\nlearning_rate: 0.1\n")
    msg = one_line(load_train_config, [default, method])
    assert str(method) in msg and "'learning_rate'" in msg
    method.write_text("lora_bottleneck: 8\nlr: fast\n")
    assert "lr='fast'" in one_line(load_train_config, [default, method])
