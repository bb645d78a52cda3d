"""The `blendmask` command: argument parsing and dispatch only; the work lives in the package.

Exit codes: 0 success, 2 bad usage or bad input (one line naming the file and the problem),
1 anything else.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def _add_eval_results(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", default=None, help="score a COCO results json without a model")


def _run_eval(args: argparse.Namespace) -> int:
    if getattr(args, "results", None):
        from blendmask.evaluation.results import evaluate_results_file

        if not args.json:
            raise ValueError("eval --results needs --json (the ground-truth COCO json)")
        metrics = evaluate_results_file(args.json, args.results, args.out)
        print(json.dumps(metrics, indent=2))
        return 0
    from blendmask.engine.cli_args import run_eval

    return run_eval(args) or 0


def build_parser() -> argparse.ArgumentParser:
    from blendmask.engine import cli_args

    parser = argparse.ArgumentParser(
        prog="blendmask",
        description="BlendMask instance segmentation: train, evaluate, predict, export.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="shapes data -> train on CPU -> evaluate -> draw")
    cli_args.add_demo_args(p)
    p.set_defaults(func=cli_args.run_demo)

    p = sub.add_parser("train", help="train a model (resumes from OUT/last.pt)")
    cli_args.add_train_args(p)
    p.set_defaults(func=cli_args.run_train)

    p = sub.add_parser("eval", help="COCO evaluation of a model or of a results json")
    cli_args.add_eval_args(p)
    _add_eval_results(p)
    p.set_defaults(func=_run_eval)

    p = sub.add_parser("predict", help="predict on images or folders")
    cli_args.add_predict_args(p)
    p.set_defaults(func=cli_args.run_predict)

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
