"""write the synthetic shapes dataset (COCO json + PNGs; --panoptic: stuff + COCO panoptic)"""

from __future__ import annotations

import argparse

from blendmask.data.shapes import write_shapes_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--train", type=int, default=200, help="number of training images")
    parser.add_argument("--val", type=int, default=50, help="number of validation images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random shapes")
    parser.add_argument(
        "--image-size", type=int, default=256, help="side of the square images in pixels"
    )
    parser.add_argument(
        "--max-object",
        type=float,
        default=0.5,
        help="largest object extent as a fraction of the image side (default 0.5); e.g. "
        "--image-size 512 --max-object 0.125 for small objects in larger images",
    )
    parser.add_argument(
        "--panoptic",
        action="store_true",
        help="shapes on textured stuff (sky, wall, grass); also writes the COCO panoptic json "
        "+ PNGs (annotations/panoptic_{train,val}.json, annotations/panoptic_{train,val}/)",
    )


def run(args: argparse.Namespace) -> int:
    paths = write_shapes_dataset(
        args.out,
        args.train,
        args.val,
        seed=args.seed,
        image_size=args.image_size,
        panoptic=args.panoptic,
        max_object=args.max_object,
    )
    for key, value in paths.items():
        print(f"{key}: {value}")
    return 0
