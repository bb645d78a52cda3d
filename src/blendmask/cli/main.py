"""The `blendmask` command: argument parsing and dispatch only; the work lives in the package.

Each subcommand is one module of this package with `add_arguments(parser)` and `run(args)`;
the first line of its docstring is its help text.

Exit codes: 0 success, 2 bad usage or bad input (one line naming the file and the problem),
1 anything else.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from blendmask import __version__
from blendmask.cli import (
    config,
    convert,
    demo,
    evaluate,
    explain,
    export,
    predict,
    presets,
    shapes,
    train,
)
from blendmask.config import ConfigError

# name -> module, in the order `blendmask --help` lists them.
SUBCOMMANDS: dict[str, ModuleType] = {
    "demo": demo,
    "shapes": shapes,
    "train": train,
    "eval": evaluate,
    "predict": predict,
    "explain": explain,
    "export": export,
    "convert": convert,
    "presets": presets,
    "config": config,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blendmask",
        description="BlendMask instance segmentation: train, evaluate, predict, export.",
    )
    parser.add_argument("--version", action="version", version=f"blendmask {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in SUBCOMMANDS.items():
        doc = (module.__doc__ or "").strip().splitlines()
        p = sub.add_parser(name, help=doc[0] if doc else None)
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, ConfigError) as exc:
        print(f"blendmask {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
