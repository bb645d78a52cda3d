"""Threshold, count and time flags refuse what argparse's float() / int() would let through (nan,
inf, negative counts), with argparse's one-line usage error (exit 2); flags that cannot go
together, or an --opset the exporter cannot write, are refused in one line too."""

from __future__ import annotations

import pytest

from blendmask.cli.main import main

pytestmark = pytest.mark.faults


@pytest.mark.parametrize("value", ["nan", "inf", "-0.1", "1.5", "abc"])
@pytest.mark.parametrize("flag", ["--conf", "--score-threshold"])
def test_explain_score_threshold_must_be_a_probability(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "explain",
                "--weights",
                "w.pt",
                "img.png",
                "--out",
                "o.png",
                flag,
                value,
            ]
        )
    assert exit_info.value.code == 2
    assert flag in capsys.readouterr().err


def test_explain_top_must_not_be_negative(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["explain", "--weights", "w.pt", "img.png", "--out", "o.png", "--top", "-1"])
    assert exit_info.value.code == 2
    assert "--top" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1"])
@pytest.mark.parametrize("command", ["train", "demo"])
def test_minutes_must_be_finite_and_positive(command, value, tmp_path, capsys):
    """`train --minutes nan` ran the whole schedule (nan <= 0 is False, and every comparison
    of the budget with nan is False): a non-finite or non-positive budget is a usage error."""
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--out", str(tmp_path / "run"), "--minutes", value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--minutes" in err and "finite positive" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("seconds", [float("nan"), float("inf"), 0.0, -5.0])
def test_time_budget_refuses_a_budget_that_never_ends(seconds):
    """The library's own check, for callers of `train_command` / `run_demo`."""
    from blendmask.training.budget import TimeBudget

    with pytest.raises(ValueError, match="finite time > 0"):
        TimeBudget(seconds)


@pytest.mark.parametrize("opset", ["99", "3"])
def test_export_opset_out_of_range_is_one_line(opset, tmp_path, capsys):
    """`export --opset 99` ended in exit 1 after torch printed the whole traced graph; an opset
    the installed exporter cannot write is refused before the model is even read."""
    argv = ["export", "--weights", str(tmp_path / "never_read.pt"), "--out", str(tmp_path / "m")]
    assert main([*argv, "--opset", opset]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--opset {opset}" in err and "exports opsets" in err


def test_export_needs_out(tmp_path, capsys, monkeypatch):
    """`export` without --out wrote ./model.onnx silently: now a usage error, nothing written."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--weights", "model.pt"])
    assert exit_info.value.code == 2
    assert "--out" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_eval_weights_and_results_exclude_each_other(tmp_path, capsys):
    """`eval --weights M --results R` scored R and ignored M without a word."""
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--weights", "m.pt", "--results", "r.json", "--json", "g.json", "--out", "o"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--results" in err and "--weights" in err


@pytest.mark.parametrize("command", ["predict", "eval", "train"])
def test_num_workers_must_not_be_negative(command, capsys):
    argv = {
        "predict": ["predict", "--weights", "w.pt", "img.png"],
        "eval": ["eval"],
        "train": ["train"],
    }[command]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", "o", "--num-workers", "-1"])
    assert exit_info.value.code == 2
    assert "--num-workers" in capsys.readouterr().err
