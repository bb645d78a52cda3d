"""Shared pytest fixtures: a small synthetic shapes dataset and the paths of shipped data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from blendmask.data.shapes import write_shapes_dataset

# Two cores on CI; more threads only add contention between tiny ops.
torch.set_num_threads(2)

TESTS_DIR = Path(__file__).resolve().parent
TEST_DATA = TESTS_DIR / "data"
TINY_COCO_JSON = TEST_DATA / "tiny_coco" / "annotations.json"
TINY_COCO_IMAGES = TEST_DATA / "tiny_coco" / "images"
# The DSB2018 nuclei set (COCO json with RLE masks): $BLENDMASK_NUCLEI, by default the
# data/dsb2018_nuclei folder of the "shared" folder beside the repository (docs/training.md).
NUCLEI_DIR = Path(
    os.environ.get(
        "BLENDMASK_NUCLEI",
        Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018_nuclei",
    )
)


@pytest.fixture(scope="session")
def shapes_dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """6 train / 4 val synthetic shapes images of 128 px (seed 0); the dict of
    `write_shapes_dataset`: train_json, train_images, val_json, val_images."""
    out_dir = tmp_path_factory.mktemp("shapes")
    return write_shapes_dataset(out_dir, num_train=6, num_val=4, seed=0, image_size=128)


@pytest.fixture(scope="session")
def nuclei_dir() -> Path:
    """The nuclei set (annotations/, images/) at NUCLEI_DIR; the test is skipped without it."""
    if not (NUCLEI_DIR / "annotations" / "instances_val.json").is_file():
        pytest.skip(f"shipped nuclei data not found at {NUCLEI_DIR}")
    return NUCLEI_DIR


@pytest.fixture(scope="session")
def tiny_coco() -> tuple[Path, Path]:
    """(json, images dir) of tests/data/tiny_coco: 4 tiny images, polygons, uncompressed and
    compressed RLE, crowd regions, category ids 20, 3, 7 (out of order, not contiguous)."""
    return TINY_COCO_JSON, TINY_COCO_IMAGES
