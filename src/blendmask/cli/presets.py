"""list the presets"""

from __future__ import annotations

import argparse
import inspect
import shutil
import textwrap

from blendmask.presets import PRESETS

NAME_WIDTH = 21  # the longest preset name (RT_R_50_4x_bn_head) and a space


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options


def run(args: argparse.Namespace) -> int:
    # Wrapped to the terminal (at most 100 columns, as --help), each description whole.
    width = min(shutil.get_terminal_size().columns, 100)
    print(format_presets(width))
    return 0


def format_presets(width: int = 100) -> str:
    """One entry per preset: its name, then its whole docstring wrapped to `width` columns,
    continuation lines indented under the first."""
    entries = []
    for name, fn in PRESETS.items():
        text = " ".join(inspect.cleandoc(fn.__doc__ or "").split())
        entries.append(
            textwrap.fill(
                text,
                width=max(width, NAME_WIDTH + 20),
                initial_indent=f"{name:<{NAME_WIDTH - 1}} ",
                subsequent_indent=" " * NAME_WIDTH,
                break_on_hyphens=False,
            )
        )
    return "\n".join(entries)
