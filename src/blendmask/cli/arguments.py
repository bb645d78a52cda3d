"""Argument types shared by the subcommands."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from blendmask.config import ConfigError, check_probability

DEVICES = ("cpu", "cuda", "auto")
DEVICE_HELP = "cpu, cuda, or auto: cuda when available (default: %(default)s)"


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (float() alone takes "nan" and "inf", and nan <= 0
    is False: `--minutes nan` would pass as a time budget that never ends)."""
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite positive number, got {text}")
    return value


def probability(text: str) -> float:
    """argparse type for thresholds: a finite number in [0, 1] (float() alone takes "nan")."""
    try:
        return check_probability("value", float(text))
    except (ValueError, ConfigError) as exc:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text}") from exc


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def add_hidden_alias(
    parser: argparse.ArgumentParser, alias: str, dest: str, parse: Callable[[str], Any]
) -> None:
    """Accept `alias` as an old spelling of the option stored in `dest` (parsed by `parse`),
    left out of --help so that each option has one name there. Its default is SUPPRESS: the
    canonical option's default is the one that applies."""
    parser.add_argument(
        alias, dest=dest, type=parse, default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
