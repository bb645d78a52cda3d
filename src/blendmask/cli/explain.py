"""bases, attentions and blended masks of the top detections of one image (PNG)

`blendmask explain --weights W IMAGE --out PNG`: parses the arguments and calls
`blendmask.explain.save_explanation`, which computes and draws the figure.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from blendmask.cli.arguments import DEVICES, non_negative_int, probability
from blendmask.explain import save_explanation


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True, help="model file (model.pt)")
    parser.add_argument("image", metavar="IMAGE", help="an image file")
    parser.add_argument("--out", required=True, help="output PNG")
    parser.add_argument("--top", type=non_negative_int, default=4, help="detections to explain")
    parser.add_argument("--score-threshold", type=probability, default=0.0)
    parser.add_argument("--device", default="auto", choices=DEVICES)


def run(args: argparse.Namespace) -> int:
    image = Path(args.image)
    if not image.is_file():
        raise FileNotFoundError(f"{image}: image not found")
    path = save_explanation(
        args.weights,
        image,
        args.out,
        top=args.top,
        device=args.device,
        score_threshold=args.score_threshold,
    )
    print(f"wrote {path}")
    return 0
