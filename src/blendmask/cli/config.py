"""print a resolved config as YAML"""

from __future__ import annotations

import argparse

from blendmask.presets import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default=None, help="a preset name (see `blendmask presets`)")
    parser.add_argument("--config", default=None, help="YAML file: `preset:` plus overrides")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field (repeatable)",
    )


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.preset, args.config, args.set)
    print(cfg.to_yaml(), end="")
    return 0
