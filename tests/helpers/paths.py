"""Where the tests' data sits: tests/data (in the repository), and the real nuclei data (the
tests that need it skip without it)."""

from __future__ import annotations

import os
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parents[1]
TEST_DATA = TESTS_DIR / "data"
TINY_COCO_JSON = TEST_DATA / "tiny_coco" / "annotations.json"
TINY_COCO_IMAGES = TEST_DATA / "tiny_coco" / "images"
# Key lists (name, shape, dtype) read from the reference's built models.
KEYS_DIR = TEST_DATA / "keys"
# The DSB2018 nuclei set (COCO json with RLE masks): $BLENDMASK_NUCLEI, by default the
# data/dsb2018_nuclei folder of the "shared" folder beside the repository (docs/training.md).
NUCLEI_DIR = Path(
    os.environ.get("BLENDMASK_NUCLEI", TESTS_DIR.parents[1] / "shared" / "data" / "dsb2018_nuclei")
)
