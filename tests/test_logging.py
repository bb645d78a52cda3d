"""Library code logs through `logging` (the `blendmask` logger); the command line prints those
records (INFO on stdout, warnings on stderr, the text alone), and a program importing
blendmask silences them like any library's."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from blendmask.cli.main import command_logging
from blendmask.presets import get_preset
from blendmask.training.train_config import warn_if_random_body


def test_a_program_silences_blendmask_with_the_logging_module(caplog):
    import blendmask

    cfg = blendmask.get_preset("R_50_1x")  # a ResNet body without ImageNet weights
    with caplog.at_level(logging.WARNING):
        warn_if_random_body(cfg)
    assert "RANDOM weights" in caplog.text
    caplog.clear()
    logger = logging.getLogger("blendmask")
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        warn_if_random_body(cfg)
    finally:
        logger.setLevel(old)
    assert caplog.records == []


@pytest.mark.slow
def test_unconfigured_warnings_reach_stderr_and_are_silenced_in_a_plain_program():
    """In a fresh interpreter (no handlers): Python's last-resort handler prints warnings to
    stderr; `setLevel(ERROR)` on the `blendmask` logger silences them."""
    code = (
        "import logging, sys, blendmask\n"
        "from blendmask.training.train_config import warn_if_random_body\n"
        "cfg = blendmask.get_preset('R_50_1x')\n"
        "warn_if_random_body(cfg)\n"
        "sys.stderr.write('--silenced--\\n')\n"
        "logging.getLogger('blendmask').setLevel(logging.ERROR)\n"
        "warn_if_random_body(cfg)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    before, after = proc.stderr.split("--silenced--\n")
    assert "RANDOM weights" in before and after == ""
    assert proc.stdout == ""


def test_the_command_line_prints_info_to_stdout_and_warnings_to_stderr(capsys):
    logger = logging.getLogger("blendmask.training.example")
    root = logging.getLogger("blendmask")
    handlers, level = list(root.handlers), root.level
    with command_logging():
        logger.info("progress line")
        logger.debug("not shown")
        warn_if_random_body(get_preset("tiny"))
    captured = capsys.readouterr()
    assert captured.out == "progress line\n"
    assert captured.err.startswith("WARNING: the resnet18 body starts from RANDOM weights")
    # main() may run many times in one process: the logger is left as it was.
    assert root.handlers == handlers and root.level == level
    logger.info("after the command")
    assert capsys.readouterr().out == ""
