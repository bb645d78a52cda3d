"""bases, attentions and blended masks of the top detections of one image (PNG)

`blendmask explain --weights W IMAGE --out PNG`: parses the arguments and calls
`blendmask.explain.save_explanation`, which computes and draws the figure. --out names the PNG
(".png" is added when it has no suffix); an existing folder (or a path ending in "/") gets
FOLDER/IMAGE-STEM_explain.png. The line printed names the file written.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from blendmask.cli.arguments import (
    DEVICE_HELP,
    DEVICES,
    add_hidden_alias,
    non_negative_int,
    probability,
)
from blendmask.explain import save_explanation


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True, help="model file (model.pt)")
    parser.add_argument("image", metavar="IMAGE", help="an image file")
    parser.add_argument(
        "--out",
        required=True,
        help="output PNG (.png added without a suffix); a folder: FOLDER/IMAGE-STEM_explain.png",
    )
    parser.add_argument("--top", type=non_negative_int, default=4, help="detections to explain")
    parser.add_argument(
        "--conf",
        dest="score_threshold",
        type=probability,
        metavar="CONF",
        default=None,
        help="explain detections scoring at least this (default: every detection the model "
        "gives); below the model's candidate threshold it lowers that too, as in predict",
    )
    add_hidden_alias(parser, "--score-threshold", "score_threshold", probability)
    parser.add_argument("--device", default="auto", choices=DEVICES, help=DEVICE_HELP)


def output_path(out: str, image: Path) -> Path:
    """FOLDER/IMAGE-STEM_explain.png for a folder (existing, or written with a trailing
    separator), else `out` (`save_explanation` adds ".png" to a name without suffix)."""
    if Path(out).is_dir() or out.endswith((os.sep, "/")):
        # not IMAGE-STEM.png: with --out on the image's own folder that would replace a PNG input
        return Path(out) / f"{image.stem}_explain.png"
    return Path(out)


def run(args: argparse.Namespace) -> int:
    image = Path(args.image)
    if not image.is_file():
        raise FileNotFoundError(f"{image}: image not found")
    path = save_explanation(
        args.weights,
        image,
        output_path(args.out, image),
        top=args.top,
        device=args.device,
        score_threshold=args.score_threshold,
    )
    print(f"wrote {path}")
    return 0
