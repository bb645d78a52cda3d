"""the facts of a COCO dataset before training: sizes, instances per image, classes, problems

Prints a table; with --out also writes OUT/dataset.json and OUT/dataset.png
(`metrics.dataset_report`).
"""

from __future__ import annotations

import argparse
import logging

from blendmask.metrics.dataset_report import analyze_to, format_table

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", required=True, help="COCO instances json")
    parser.add_argument("--images", default=None, help="folder of its images (checks the files)")
    parser.add_argument("--out", default=None, help="folder for dataset.json and dataset.png")


def run(args: argparse.Namespace) -> int:
    analysis = analyze_to(args.json, args.images, args.out)
    logger.info(format_table(analysis.summary))
    if args.out:
        logger.info(f"wrote {args.out}/dataset.json, {args.out}/dataset.png")
    return 0
