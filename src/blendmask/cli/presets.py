"""list the presets"""

from __future__ import annotations

import argparse

from blendmask.presets import PRESETS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options


def run(args: argparse.Namespace) -> int:
    for name, fn in PRESETS.items():
        doc = (fn.__doc__ or "").strip().splitlines()[0]
        print(f"{name:20s} {doc}")
    return 0
