"""import an official AdelaiDet BlendMask checkpoint into a blendmask model file"""

from __future__ import annotations

import argparse

from blendmask.convert import convert_to_model_file
from blendmask.interop.adelaidet import ADELAIDET_PRESETS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--adelaidet", required=True, metavar="CKPT", help="AdelaiDet .pth (or detectron2 .pkl)"
    )
    parser.add_argument(
        "--preset",
        required=True,
        help=f"preset of the same architecture: {', '.join(ADELAIDET_PRESETS)}",
    )
    parser.add_argument("--out", required=True, metavar="W", help="model file to write")
    parser.add_argument(
        "--allow-partial",
        action="store_true",
        help="load what fits and skip the rest (e.g. fine-tuning with another class count)",
    )
    parser.add_argument(
        "--num-classes", type=int, default=None, help="foreground classes (default: from the file)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field of the preset (repeatable)",
    )
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow full unpickling for files weights_only loading refuses (runs file code)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        choices=("cpu", "cuda", "auto"),
        help="where to run the check on a blank image after loading",
    )


def run(args: argparse.Namespace) -> int:
    """Convert, run the network once on a blank image, write the model file, print a summary."""
    done = convert_to_model_file(
        args.adelaidet,
        args.preset,
        args.out,
        device=args.device,
        allow_partial=args.allow_partial,
        num_classes=args.num_classes,
        overrides=list(args.overrides),
        trust_pickle=args.trust_pickle,
    )
    m = done.cfg.model
    print(done.report.summary())
    print(
        f"wrote {args.out}: {done.num_parameters / 1e6:.2f} M parameters, input "
        f"{m.input_format} x{m.input_scale:g}, mean {m.pixel_mean}, std {m.pixel_std}, "
        f"test size {done.cfg.data.min_size_test}/{done.cfg.data.max_size_test}"
    )
    print(f"next: blendmask predict --weights {args.out} IMAGE... --out DIR")
    return 0
