"""Where the tests' data sits: tests/data (in the repository), and the real nuclei data of a
sibling folder of the checkout (the tests that need it skip without it)."""

from __future__ import annotations

from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parents[1]
TEST_DATA = TESTS_DIR / "data"
TINY_COCO_JSON = TEST_DATA / "tiny_coco" / "annotations.json"
TINY_COCO_IMAGES = TEST_DATA / "tiny_coco" / "images"
# Key lists (name, shape, dtype) read from the reference's built models.
KEYS_DIR = TEST_DATA / "keys"
# Real data, when present beside the checkout: a sibling folder shared/data/dsb2018_nuclei.
SHARED_DATA = TESTS_DIR.parents[1] / "shared" / "data"
NUCLEI_DIR = SHARED_DATA / "dsb2018_nuclei"
