"""`peft-search predict`: an exported cell classifies images as its final run did."""
import json

import pytest

from search.cli import main
from search.models.predict import predict


def test_predict_reproduces_the_final_runs_test_accuracy(tiny_study, minivtab, tmp_path, capsys):

    out = tmp_path / "exported"
    assert main(["export", str(tiny_study), "--out", str(out)]) == 0
    cell = out / "digits__linear"
    expected = json.loads((cell / "metrics.json").read_text())["test_top1"]
    rows = [line.split() for line in (minivtab / "digits" / "test.txt").read_text().splitlines()]
    images, labels = [minivtab / "digits" / name for name, _ in rows], [label for _, label in rows]
    predicted = predict(cell, images)
    correct = sum(top[0][0] == label for (_, top), label in zip(predicted, labels))
    assert 100.0 * correct / len(labels) == pytest.approx(expected, abs=1e-6)
    for _, top in predicted:
        probs = [p for _, p in top]
        assert len(top) == 5 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 100.0 + 1e-4
    capsys.readouterr()
    assert main(["predict", str(cell), str(images[0]), str(images[1])]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{images[0]}: ") and lines[0].count("%") == 5


def test_predict_refuses_what_is_not_an_export_or_an_image(tiny_study, tmp_path, capsys):
    assert main(["predict", str(tmp_path), str(tmp_path / "x.png")]) == 2
    assert "not an exported cell" in capsys.readouterr().err


def test_predict_prints_the_datasets_class_names(tiny_study, minivtab, tmp_path, capsys):
    """Names come from the dataset's classnames.txt (mini-VTAB writes one per task)."""
    import yaml
    out = tmp_path / "exported"
    assert main(["export", str(tiny_study), "--out", str(out)]) == 0
    cell = out / "digits__linear"
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    (tmp_path / "data" / "digits").mkdir(parents=True)
    (tmp_path / "data" / "digits" / "classnames.txt").write_text("\n".join(names) + "\n")
    config = yaml.safe_load((cell / "config.yaml").read_text())
    (cell / "config.yaml").write_text(yaml.safe_dump({**config, "data_path": str(tmp_path / "data")}))
    image = sorted((minivtab / "digits" / "images").glob("*.png"))[0]
    capsys.readouterr()
    assert main(["predict", str(cell), str(image)]) == 0
    line = capsys.readouterr().out.strip()
    shown = [part.split()[0] for part in line.split(": ", 1)[1].split(", ")]
    assert len(shown) == 5 and set(shown) <= set(names), line
