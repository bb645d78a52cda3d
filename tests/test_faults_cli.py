"""Threshold and count flags refuse what argparse's float() / int() would let through (nan, inf,
negative counts), with argparse's one-line usage error (exit 2)."""

from __future__ import annotations

import pytest

from blendmask.cli.main import main

pytestmark = pytest.mark.faults


@pytest.mark.parametrize("value", ["nan", "inf", "-0.1", "1.5", "abc"])
def test_explain_score_threshold_must_be_a_probability(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "explain",
                "--weights",
                "w.pt",
                "img.png",
                "--out",
                "o.png",
                "--score-threshold",
                value,
            ]
        )
    assert exit_info.value.code == 2
    assert "--score-threshold" in capsys.readouterr().err


def test_explain_top_must_not_be_negative(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["explain", "--weights", "w.pt", "img.png", "--out", "o.png", "--top", "-1"])
    assert exit_info.value.code == 2
    assert "--top" in capsys.readouterr().err
