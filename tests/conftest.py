"""Shared pytest fixtures: a small synthetic shapes dataset and the paths of shipped data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.paths import NUCLEI_DIR, TINY_COCO_IMAGES, TINY_COCO_JSON

from blendmask.data.shapes import write_shapes_dataset

# One thread: the tests' ops are tiny, and on a busy two-core machine a second thread mostly
# waits (tests/test_network.py + test_model_presets.py: 38 s with two threads, 8 s with one).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread_count_for_every_test():
    """A test that changes torch's thread count (a benchmark script run in-process, the demo)
    leaves the next test's speed alone: without this the quick run (`-m "not slow"`) ran at
    another thread count than the full one, and a test's time depended on what ran before."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shapes_dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """6 train / 4 val synthetic shapes images of 128 px (seed 0); the dict of
    `write_shapes_dataset`: train_json, train_images, val_json, val_images."""
    out_dir = tmp_path_factory.mktemp("shapes")
    return write_shapes_dataset(out_dir, num_train=6, num_val=4, seed=0, image_size=128)


@pytest.fixture(scope="session")
def nuclei_dir() -> Path:
    """The real nuclei data (annotations/, images/) of `helpers.paths.NUCLEI_DIR`; the test is
    skipped without it."""
    if not (NUCLEI_DIR / "annotations" / "instances_val.json").is_file():
        pytest.skip(f"shipped nuclei data not found at {NUCLEI_DIR}")
    return NUCLEI_DIR


@pytest.fixture(scope="session")
def tiny_coco() -> tuple[Path, Path]:
    """(json, images dir) of tests/data/tiny_coco: 4 tiny images, polygons, uncompressed and
    compressed RLE, crowd regions, category ids 20, 3, 7 (out of order, not contiguous)."""
    return TINY_COCO_JSON, TINY_COCO_IMAGES
