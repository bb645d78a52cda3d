"""Bad input to the data layer and the evaluator: one clear error that names the file (and the
annotation id), or a documented conversion for unusual-but-valid images."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blendmask.data.coco import CocoDataset
from blendmask.io import load_image
from blendmask.metrics.results import evaluate_results_file

# Part of the fault suite (`pytest -m faults`).
pytestmark = pytest.mark.faults


@pytest.fixture
def coco_copy(tiny_coco, tmp_path) -> tuple[Path, Path, dict]:
    """A writable copy of tests/data/tiny_coco: (json path, images dir, parsed json)."""
    json_path, images_dir = tiny_coco
    images = tmp_path / "images"
    shutil.copytree(images_dir, images)
    data = json.loads(json_path.read_text())
    return tmp_path / "instances.json", images, data


def write(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def names(path: Path) -> str:
    """pytest.raises(match=...) pattern: the message contains this path."""
    return re.escape(str(path))


# -- image files ------------------------------------------------------------------------------


def test_corrupt_png(coco_copy):
    json_path, images, data = coco_copy
    bad = images / "a.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    ds = CocoDataset(write(json_path, data), images)
    with pytest.raises(ValueError, match=names(bad)) as info:
        ds[0]
    assert "image id 1" in str(info.value)


def test_zero_byte_file(tmp_path):
    empty = tmp_path / "empty.png"
    empty.touch()
    with pytest.raises(ValueError, match=names(empty) + ".*empty"):
        load_image(empty)


def test_truncated_jpeg(tmp_path):
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ValueError, match=names(truncated)):
        load_image(truncated)


def test_text_file_with_image_extension(tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_text("this is not an image")
    with pytest.raises(ValueError, match=names(fake)):
        load_image(fake)


def test_missing_image_file(coco_copy):
    json_path, images, data = coco_copy
    (images / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match=names(images / "b.png")):
        CocoDataset(write(json_path, data), images)


def test_missing_images_dir(coco_copy, tmp_path):
    json_path, _, data = coco_copy
    with pytest.raises(FileNotFoundError, match=names(tmp_path / "nowhere")):
        CocoDataset(write(json_path, data), tmp_path / "nowhere")


def test_rgba_image_is_read_as_rgb(tmp_path):
    path = tmp_path / "rgba.png"
    Image.new("RGBA", (7, 5), (200, 100, 50, 0)).save(path)
    image = load_image(path)
    # Alpha is dropped, the colour kept (not composited onto black).
    assert image.mode == "RGB" and np.asarray(image)[2, 3].tolist() == [200, 100, 50]


def test_16bit_image_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(path)
    image = np.asarray(load_image(path))
    # Clipping would give 0, 255, 255, 255.
    assert image[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (image[..., 0] == image[..., 2]).all()


def test_image_size_differs_from_json(coco_copy):
    json_path, images, data = coco_copy
    Image.new("RGB", (40, 40)).save(images / "a.png")
    ds = CocoDataset(write(json_path, data), images)
    with pytest.raises(ValueError, match=names(images / "a.png")):
        ds[0]


# -- the json ---------------------------------------------------------------------------------


def test_missing_json(tmp_path):
    with pytest.raises(FileNotFoundError, match=names(tmp_path / "absent.json")):
        CocoDataset(tmp_path / "absent.json", tmp_path)


def test_invalid_json_syntax(coco_copy):
    json_path, images, _ = coco_copy
    json_path.write_text('{"images": [')
    with pytest.raises(ValueError, match=names(json_path) + ".*not valid json"):
        CocoDataset(json_path, images)


@pytest.mark.parametrize(
    "content",
    [
        [{"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.5}],  # results
        {"annotations": []},
        {"images": {}, "categories": []},
    ],
)
def test_json_that_is_not_coco(coco_copy, content):
    json_path, images, _ = coco_copy
    with pytest.raises(ValueError, match=names(json_path) + ".*not a COCO instances json"):
        CocoDataset(write(json_path, content), images)


def test_annotation_to_missing_image(coco_copy):
    json_path, images, data = coco_copy
    data["annotations"][2]["image_id"] = 99
    with pytest.raises(ValueError, match=r"annotation 13 .*" + names(json_path) + ".*image_id 99"):
        CocoDataset(write(json_path, data), images)


def test_unknown_category_id(coco_copy):
    json_path, images, data = coco_copy
    data["annotations"][0]["category_id"] = 4
    with pytest.raises(
        ValueError, match=r"annotation 11 .*" + names(json_path) + ".*category_id 4"
    ):
        CocoDataset(write(json_path, data), images)


def test_negative_box(coco_copy):
    json_path, images, data = coco_copy
    data["annotations"][0]["bbox"] = [4, 2, -3, 10]
    with pytest.raises(ValueError, match=r"annotation 11 .*" + names(json_path) + ".*negative"):
        CocoDataset(write(json_path, data), images)


def test_zero_size_box_is_dropped_with_a_warning(coco_copy):
    json_path, images, data = coco_copy
    data["annotations"][1]["bbox"] = [2, 20, 0, 8]
    # A box wholly outside the image is zero-size after clipping.
    data["annotations"][0]["bbox"] = [60, 2, 5, 5]
    with pytest.warns(UserWarning, match=names(json_path) + r".*dropped 2 .*ids 11, 12"):
        ds = CocoDataset(write(json_path, data), images)
    assert ds.num_dropped_annotations == 2
    _, target = ds[0]
    assert target["labels"].tolist() == [2]


def test_polygon_with_fewer_than_three_points(coco_copy):
    json_path, images, data = coco_copy
    data["annotations"][0]["segmentation"] = [[4, 2, 16, 2]]
    with pytest.raises(ValueError, match=r"annotation 11 .*" + names(json_path) + ".*at least 3"):
        CocoDataset(write(json_path, data), images)


def test_rle_of_another_size(coco_copy):
    json_path, images, data = coco_copy
    data["annotations"][1]["segmentation"]["size"] = [48, 32]
    with pytest.raises(ValueError, match=r"annotation 12 .*" + names(json_path) + ".*RLE size"):
        CocoDataset(write(json_path, data), images)


def test_duplicate_image_id(coco_copy):
    json_path, images, data = coco_copy
    data["images"][1]["id"] = 1
    with pytest.raises(ValueError, match=names(json_path) + ".*duplicate image id 1"):
        CocoDataset(write(json_path, data), images)


# -- results files ----------------------------------------------------------------------------


def test_results_with_unknown_image_id(tiny_coco, tmp_path):
    results = write(
        tmp_path / "results.json",
        [{"image_id": 42, "category_id": 3, "bbox": [0, 0, 4, 4], "score": 0.9}],
    )
    with pytest.raises(ValueError, match=r"result 0 of " + names(results) + ".*image_id 42"):
        evaluate_results_file(tiny_coco[0], results, tmp_path / "out")


def test_results_that_are_not_a_list(tiny_coco, tmp_path):
    results = write(tmp_path / "results.json", {"annotations": []})
    with pytest.raises(ValueError, match=names(results) + ".*expected a list"):
        evaluate_results_file(tiny_coco[0], results, tmp_path / "out")
