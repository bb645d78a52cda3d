"""Fault suite, data side: every json the package reads (training / validation ground truth,
the ground truth and the results of `eval --results`) and every image file ends in one clear
ValueError / FileNotFoundError naming the file and the field, never a hang inside pycocotools
and never a silently wrong mask or image. Run alone with `pytest -m faults`.
"""

from __future__ import annotations

import io
import json
import math
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util

from blendmask.cli.main import main
from blendmask.data.coco import CocoDataset
from blendmask.data.segmentation import compressed_rle_runs
from blendmask.io import load_image
from blendmask.metrics.coco import load_coco_gt
from blendmask.metrics.results import evaluate_results_file

pytestmark = pytest.mark.faults

# annotations[2] of tests/data/tiny_coco is id 13: a compressed RLE on image 1 (32 x 48).
RLE_INDEX, RLE_ID = 2, 13
# annotations[1] is id 12, an uncompressed RLE; annotations[0] is id 11, a polygon.
LIST_RLE_INDEX, POLYGON_INDEX = 1, 0


def _compressed_rle_of(height: int, width: int) -> str:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[2:9, 3:7] = 1
    return mask_util.encode(np.asfortranarray(mask))["counts"].decode("ascii")


def _set(index: int, key: str, value: Any) -> Callable[[dict], None]:
    def mutate(data: dict) -> None:
        data["annotations"][index][key] = value

    return mutate


def _set_seg(index: int, key: str, value: Any) -> Callable[[dict], None]:
    def mutate(data: dict) -> None:
        data["annotations"][index]["segmentation"][key] = value

    return mutate


def _drop_box_and_mask(data: dict) -> None:
    del data["annotations"][0]["bbox"], data["annotations"][0]["segmentation"]


def _set_image(key: str, value: Any) -> Callable[[dict], None]:
    def mutate(data: dict) -> None:
        data["images"][0][key] = value

    return mutate


# (id, mutation of the parsed tiny_coco json, pattern the error must contain)
BAD_ANNOTATIONS = [
    ("garbage-rle", _set_seg(RLE_INDEX, "counts", "garbage!!"), "compressed RLE.*outside '0'"),
    ("empty-rle", _set_seg(RLE_INDEX, "counts", ""), "covers 0 pixels"),
    ("truncated-rle", _set_seg(RLE_INDEX, "counts", "\\h01l06L2N2O000O20N10001N2N4Jg"), "RLE"),
    ("rle-cut-mid-number", _set_seg(RLE_INDEX, "counts", "\\h"), "middle of a number"),
    ("rle-of-larger-image", _set_seg(RLE_INDEX, "counts", _compressed_rle_of(64, 48)), "3072"),
    ("rle-number-too-long", _set_seg(RLE_INDEX, "counts", "oooooooo0"), "9 characters"),
    ("rle-non-ascii", _set_seg(RLE_INDEX, "counts", "\\h0é"), "non-ASCII"),
    ("rle-wrong-size", _set_seg(RLE_INDEX, "size", [48, 32]), "RLE size"),
    ("rle-size-strings", _set_seg(RLE_INDEX, "size", ["32", "48"]), "'size'"),
    ("rle-counts-number", _set_seg(RLE_INDEX, "counts", 5), "'counts' must be"),
    ("list-rle-negative", _set_seg(LIST_RLE_INDEX, "counts", [-8, 1544]), r"\[0, height"),
    ("list-rle-short", _set_seg(LIST_RLE_INDEX, "counts", [84, 8]), "covers 92 pixels"),
    ("list-rle-huge", _set_seg(LIST_RLE_INDEX, "counts", [10**30, 1]), r"\[0, height"),
    ("polygon-nan", _set(POLYGON_INDEX, "segmentation", [[4, 2, math.nan, 2, 16, 12]]), "NaN"),
    ("polygon-inf", _set(POLYGON_INDEX, "segmentation", [[4, 2, math.inf, 2, 16, 12]]), "NaN"),
    ("polygon-far", _set(POLYGON_INDEX, "segmentation", [[0, 0, 1e8, 0, 0, 1e8]]), "outside"),
    ("polygon-strings", _set(POLYGON_INDEX, "segmentation", [["4", 2, 16, 2, 16, 12]]), "numbers"),
    ("segmentation-string", _set(POLYGON_INDEX, "segmentation", "mask.png"), "polygons or an RLE"),
    ("bbox-nan", _set(POLYGON_INDEX, "bbox", [4, 2, math.nan, 10]), "'bbox'"),
    ("bbox-huge-int", _set(POLYGON_INDEX, "bbox", [4, 2, 10**400, 10]), "'bbox'"),
    ("area-negative", _set(POLYGON_INDEX, "area", -5), "'area'"),
    ("iscrowd-2", _set(POLYGON_INDEX, "iscrowd", 2), "'iscrowd'"),
    ("image-id-list", _set(POLYGON_INDEX, "image_id", [1]), "image_id"),
    ("category-id-dict", _set(POLYGON_INDEX, "category_id", {"id": 3}), "category_id"),
    ("no-box-no-mask", _drop_box_and_mask, "needs a 'segmentation' or a 'bbox'"),
    ("image-width-zero", _set_image("width", 0), "positive width"),
    ("image-too-large", _set_image("width", 2**30), r"2\*\*31"),
]


def _train_reader(json_path: Path, images: Path) -> None:
    CocoDataset(json_path, images, skip_empty=True)


def _val_reader(json_path: Path, images: Path) -> None:
    load_coco_gt(json_path)  # the evaluator's ground truth (engine eval, COCOEvaluator)


def _results_gt_reader(json_path: Path, images: Path) -> None:
    results = json_path.with_name("results.json")
    results.write_text(json.dumps([]))
    evaluate_results_file(json_path, results, json_path.parent / "out")


READERS = {"train": _train_reader, "val": _val_reader, "eval-results-gt": _results_gt_reader}


@pytest.fixture
def coco_copy(tiny_coco, tmp_path) -> tuple[Path, Path, dict]:
    """A writable copy of tests/data/tiny_coco: (json path, images dir, parsed json)."""
    json_path, images_dir = tiny_coco
    images = tmp_path / "images"
    shutil.copytree(images_dir, images)
    return tmp_path / "instances.json", images, json.loads(json_path.read_text())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize(
    "mutate, pattern", [c[1:] for c in BAD_ANNOTATIONS], ids=[c[0] for c in BAD_ANNOTATIONS]
)
def test_bad_ground_truth_fails_at_load_naming_the_file(coco_copy, reader, mutate, pattern):
    json_path, images, data = coco_copy
    mutate(data)
    json_path.write_text(json.dumps(data))  # NaN / Infinity written as json5 tokens, read back
    with pytest.raises(ValueError, match=re.escape(str(json_path)) + ".*" + pattern):
        READERS[reader](json_path, images)


def test_garbage_rle_error_names_the_annotation(coco_copy):
    json_path, images, data = coco_copy
    data["annotations"][RLE_INDEX]["segmentation"]["counts"] = "garbage!!"
    json_path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"annotation {RLE_ID} \\(annotations\\[{RLE_INDEX}\\]\\)"):
        CocoDataset(json_path, images)


@pytest.mark.timeout(60)
def test_eval_results_with_garbage_ground_truth_rle_exits_2_with_one_line(coco_copy, capsys):
    """The reported hang: pycocotools' IoU spun forever on this ground truth."""
    json_path, _, data = coco_copy
    data["annotations"][RLE_INDEX]["segmentation"]["counts"] = "garbage!!"
    json_path.write_text(json.dumps(data))
    results = json_path.with_name("results.json")
    rle = {"size": [32, 48], "counts": _compressed_rle_of(32, 48)}
    results.write_text(json.dumps([{"image_id": 1, "category_id": 20, "segmentation": rle,
                                    "score": 0.9}]))  # fmt: skip
    code = main(["eval", "--json", str(json_path), "--results", str(results), "--out",
                 str(json_path.parent / "out")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert str(json_path) in err and "annotation 13" in err


# -- results json -----------------------------------------------------------------------------

GOOD_RESULT = {"image_id": 1, "category_id": 20, "score": 0.9}
BAD_RESULTS = [
    ("garbage-rle", {"segmentation": {"size": [32, 48], "counts": "garbage!!"}}, "outside '0'"),
    ("rle-wrong-size", {"segmentation": {"size": [96, 96], "counts": "0"}}, "not the image's"),
    (
        "rle-of-larger-image",
        {"segmentation": {"size": [32, 48], "counts": _compressed_rle_of(96, 96)}},
        "covers 9216 pixels",
    ),
    ("empty-rle", {"segmentation": {"size": [32, 48], "counts": ""}}, "covers 0 pixels"),
    ("polygon-nan", {"segmentation": [[1, 1, math.nan, 1, 5, 5]]}, "NaN"),
    ("polygon-far", {"segmentation": [[0, 0, 1e9, 0, 0, 1e9]]}, "outside"),
    ("score-nan", {"bbox": [0, 0, 4, 4], "score": math.nan}, "'score'"),
    ("bbox-inf", {"bbox": [0, 0, math.inf, 4]}, "'bbox'"),
    ("image-id-list", {"bbox": [0, 0, 4, 4], "image_id": [1]}, "image_id"),
    ("category-id-dict", {"bbox": [0, 0, 4, 4], "category_id": {"a": 1}}, "category_id"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "fields, pattern", [c[1:] for c in BAD_RESULTS], ids=[c[0] for c in BAD_RESULTS]
)
def test_bad_results_json_fails_naming_the_result(tiny_coco, tmp_path, fields, pattern):
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{**GOOD_RESULT, **fields}]))
    with pytest.raises(ValueError, match="result 0 of " + re.escape(str(results)) + ".*" + pattern):
        evaluate_results_file(tiny_coco[0], results, tmp_path / "out")


def test_mask_results_against_box_only_ground_truth(coco_copy, tmp_path):
    json_path, _, data = coco_copy
    del data["annotations"][0]["segmentation"]
    json_path.write_text(json.dumps(data))
    results = tmp_path / "results.json"
    rle = {"size": [32, 48], "counts": _compressed_rle_of(32, 48)}
    results.write_text(json.dumps([{**GOOD_RESULT, "segmentation": rle}]))
    with pytest.raises(ValueError, match=re.escape(str(json_path)) + ".*annotation 11"):
        evaluate_results_file(json_path, results, tmp_path / "out")


# -- the compressed-RLE parser itself ---------------------------------------------------------


def test_compressed_rle_runs_match_pycocotools_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(50):
        height, width = (int(v) for v in rng.integers(1, 60, 2))
        mask = (rng.random((height, width)) < rng.random()).astype(np.uint8)
        rle = mask_util.encode(np.asfortranarray(mask))
        runs = compressed_rle_runs(rle["counts"])
        flat = mask.flatten(order="F")
        # Expected runs: alternate 0 / 1 stretches of the column-major mask, starting with 0s.
        changes = np.flatnonzero(np.diff(flat)) + 1
        bounds = np.concatenate(([0], changes, [flat.size]))
        expected = np.diff(bounds).tolist()
        if flat[0] == 1:
            expected = [0, *expected]
        assert runs.tolist() == expected


# -- image files ------------------------------------------------------------------------------


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_float_tiff_in_unit_range_is_scaled_not_black(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32), mode="F").save(path)
    assert np.asarray(load_image(path))[0, :, 0].tolist() == [0, 64, 128, 255]


def test_float_tiff_in_byte_range_is_kept(tmp_path):
    path = tmp_path / "float255.tif"
    values = np.array([[0.0, 2.0, 100.0, 300.0]], dtype=np.float32)
    Image.fromarray(values, mode="F").save(path)
    assert np.asarray(load_image(path))[0, :, 1].tolist() == [0, 2, 100, 255]


def test_float_tiff_with_nan_is_an_error(tmp_path):
    path = tmp_path / "nan.tif"
    Image.fromarray(np.array([[0.0, np.nan]], dtype=np.float32), mode="F").save(path)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*NaN"):
        load_image(path)


def test_16bit_png_is_scaled(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 65535]], dtype=np.uint16)).save(path)
    assert np.asarray(load_image(path))[0, :, 0].tolist() == [0, 255]


GOOD_PNG = _png_bytes(np.full((16, 16, 3), 90, dtype=np.uint8))
BAD_IMAGE_BYTES = {
    "zero-byte": b"",
    "truncated-png": GOOD_PNG[: len(GOOD_PNG) // 2],
    "png-header-only": GOOD_PNG[:8],
    "corrupt-png": GOOD_PNG[:40] + bytes(range(256)) + GOOD_PNG[296:],
    "random-bytes": np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8).tobytes(),
    "text": b"not an image at all",
    "truncated-jpeg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
}


@pytest.mark.parametrize("content", list(BAD_IMAGE_BYTES.values()), ids=list(BAD_IMAGE_BYTES))
def test_bad_image_bytes_raise_value_error_naming_the_file(tmp_path, content):
    path = tmp_path / "image.png"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_image(path)


def test_bad_image_in_a_dataset_names_the_image_id(coco_copy):
    json_path, images, data = coco_copy
    (images / "b.png").write_bytes(BAD_IMAGE_BYTES["truncated-png"])
    json_path.write_text(json.dumps(data))
    dataset = CocoDataset(json_path, images)
    with pytest.raises(ValueError, match=re.escape(str(images / "b.png")) + ".*image id 2"):
        dataset[dataset.image_ids.index(2)]


def test_image_larger_than_the_pixel_limit_is_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (40, 30)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*40x30 = 1200 pixels"):
        load_image(path)
