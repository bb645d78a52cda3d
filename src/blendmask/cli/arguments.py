"""Argument types shared by the subcommands."""

from __future__ import annotations

import argparse

DEVICES = ("cpu", "cuda", "auto")


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def probability(text: str) -> float:
    """argparse type for thresholds: a finite number in [0, 1] (float() alone takes "nan")."""
    from blendmask.config import ConfigError, check_probability

    try:
        return check_probability("value", float(text))
    except (ValueError, ConfigError) as exc:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text}") from exc


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value
