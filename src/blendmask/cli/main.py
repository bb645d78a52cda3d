"""The `blendmask` command: argument parsing and dispatch only; the work lives in the package.

Exit codes: 0 success, 2 bad usage or bad input (one line naming the file and the problem),
1 anything else.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def _add_shapes(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shapes", help="write the synthetic shapes dataset (COCO json + PNGs)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--train", type=int, default=200, help="number of training images")
    p.add_argument("--val", type=int, default=50, help="number of validation images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=256)
    p.set_defaults(func=_run_shapes)


def _run_shapes(args: argparse.Namespace) -> int:
    from blendmask.data.shapes import write_shapes_dataset

    paths = write_shapes_dataset(
        args.out, args.train, args.val, seed=args.seed, image_size=args.image_size
    )
    for key, value in paths.items():
        print(f"{key}: {value}")
    return 0


def _add_presets(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("presets", help="list the presets")
    p.set_defaults(func=_run_presets)
    c = sub.add_parser("config", help="print a resolved config as YAML")
    c.add_argument("--preset", default=None)
    c.add_argument("--config", default=None, help="YAML file: `preset:` plus overrides")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    c.set_defaults(func=_run_config)


def _run_presets(args: argparse.Namespace) -> int:
    from blendmask.presets import PRESETS

    for name, fn in PRESETS.items():
        doc = (fn.__doc__ or "").strip().splitlines()[0]
        print(f"{name:20s} {doc}")
    return 0


def _run_config(args: argparse.Namespace) -> int:
    from blendmask.config import load_config

    cfg = load_config(args.preset, args.config, args.set)
    print(cfg.to_yaml(), end="")
    return 0


def _add_eval_results(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", default=None, help="score a COCO results json without a model")


def _run_eval(args: argparse.Namespace) -> int:
    if getattr(args, "results", None):
        from blendmask.evaluation.coco import evaluate_results_file

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

    _add_shapes(sub)

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

    for name, adder, runner in _optional_commands():
        p = sub.add_parser(name, help=adder.__doc__)
        adder(p)
        p.set_defaults(func=runner)

    _add_presets(sub)
    return parser


def _optional_commands() -> list[tuple]:
    """explain / export / convert register themselves when their modules exist."""
    out = []
    for module, name in (
        ("blendmask.explain", "explain"),
        ("blendmask.export.onnx", "export"),
        ("blendmask.interop.adelaidet", "convert"),
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
