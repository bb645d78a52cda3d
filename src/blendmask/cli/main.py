"""The `blendmask` command: argument parsing and dispatch only; the work lives in the package.

Exit codes: 0 success, 2 bad usage or bad input (one line naming the file and the problem),
1 anything else.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blendmask",
        description="BlendMask instance segmentation: train, evaluate, predict, export.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    from blendmask.cli import demo as demo_cmd
    from blendmask.cli import eval as eval_cmd
    from blendmask.cli import predict as predict_cmd
    from blendmask.cli import train as train_cmd

    for name, module in (
        ("demo", demo_cmd),
        ("train", train_cmd),
        ("eval", eval_cmd),
        ("predict", predict_cmd),
    ):
        p = sub.add_parser(name, help=module.__doc__.strip().splitlines()[0])
        module.add_arguments(p)
        p.set_defaults(func=module.run)

    from blendmask.cli import config as config_cmd
    from blendmask.cli import convert as convert_cmd
    from blendmask.cli import explain as explain_cmd
    from blendmask.cli import export as export_cmd
    from blendmask.cli import presets as presets_cmd
    from blendmask.cli import shapes as shapes_cmd

    for name, module in (
        ("explain", explain_cmd),
        ("export", export_cmd),
        ("shapes", shapes_cmd),
        ("presets", presets_cmd),
        ("config", config_cmd),
        ("convert", convert_cmd),
    ):
        p = sub.add_parser(name, help=module.__doc__.strip().splitlines()[0])
        module.add_arguments(p)
        p.set_defaults(func=module.run)

    for name, adder, runner in _optional_commands():
        p = sub.add_parser(name, help=adder.__doc__)
        adder(p)
        p.set_defaults(func=runner)

    return parser


def _optional_commands() -> list[tuple]:
    """explain / export / convert register themselves when their modules exist."""
    out = []
    for module, name in (
    ):
        try:
            mod = __import__(module, fromlist=["add_args", "run"])
        except ImportError:
            continue
        if hasattr(mod, f"add_{name}_args") and hasattr(mod, f"run_{name}"):
            out.append((name, getattr(mod, f"add_{name}_args"), getattr(mod, f"run_{name}")))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from blendmask.config import ConfigError

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
