"""`blendmask analyze`: the facts of a small COCO json built here with known counts, sizes,
overlaps and one mask that disagrees with its box; a bad json is one line naming the file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_util

from blendmask.cli.main import main
from blendmask.metrics.dataset_report import short_summary
from blendmask.metrics.dataset_stats import analyze_coco, nearest_rank


def _rle(height: int, width: int, x: int, y: int, side: int) -> dict:
    m = np.zeros((height, width), dtype=np.uint8, order="F")
    m[y : y + side, x : x + side] = 1
    rle = mask_util.encode(m)
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def _ann(k: int, image_id: int, cat: int, hw: tuple[int, int], x: int, y: int, side: int, **kw):
    return {
        "id": k,
        "image_id": image_id,
        "category_id": cat,
        "iscrowd": 0,
        "bbox": [x, y, side, side],
        "segmentation": _rle(*hw, x, y, side),
        **kw,
    }


@pytest.fixture
def small_json(tmp_path):
    """Image 1 (100x100): A 20 px square and B 10 px overlapping it (class a), C 8 px (class b)
    whose annotated box is elsewhere, and a crowd region; image 2 (200x100): E 40 px (class b);
    image 3 (50x50): nothing."""
    images = [
        {"id": 1, "file_name": "1.png", "width": 100, "height": 100},
        {"id": 2, "file_name": "2.png", "width": 200, "height": 100},
        {"id": 3, "file_name": "3.png", "width": 50, "height": 50},
    ]
    c = _ann(3, 1, 2, (100, 100), 60, 60, 8)
    c["bbox"] = [0, 0, 5, 5]
    anns = [
        _ann(1, 1, 1, (100, 100), 10, 10, 20),
        _ann(2, 1, 1, (100, 100), 25, 25, 10),
        c,
        _ann(4, 1, 1, (100, 100), 80, 0, 15, iscrowd=1),
        _ann(5, 2, 2, (100, 200), 0, 0, 40),
    ]
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "1.png").write_bytes(b"")
    return path


def test_nearest_rank_is_a_value_of_the_data():
    assert nearest_rank([0, 1, 3], 50) == 1
    assert nearest_rank([0, 1, 3], 99) == 3
    assert nearest_rank(list(range(1, 101)), 99) == 99
    assert nearest_rank([], 99) == 0


def test_known_counts(small_json):
    s = analyze_coco(small_json, small_json.parent / "images").summary
    assert s["images"]["count"] == 3
    assert s["images"]["missing_files"] == 2
    ins = s["instances"]
    assert (ins["count"], ins["per_image_p50"], ins["per_image_p99"], ins["per_image_max"]) == (
        4,
        1,
        3,
        3,
    )
    assert ins["per_image_mean"] == pytest.approx(4 / 3, abs=1e-4)
    assert ins["empty_images"] == 1
    assert s["classes"] == {"a": 2, "b": 2}
    assert s["crowd"] == {"regions": 1, "images": 1}
    assert s["size_px"]["min"] == 8 and s["size_px"]["max"] == 40 and s["size_px"]["p50"] == 10
    assert s["size_px_histogram"]["8-16"] == 2
    assert s["size_px_histogram"]["16-32"] == 1 and s["size_px_histogram"]["32-64"] == 1
    assert s["size_relative"]["max"] == pytest.approx(40 / np.sqrt(200 * 100), abs=1e-4)
    assert s["size_relative_histogram"]["0.05-0.1"] == 1  # C: 8 / 100
    assert s["overlap"]["instances_overlapping_another"] == 2
    assert s["overlap"]["overlapping_pairs"] == 1
    assert s["overlap"]["box_pairs_iou_over_0.5"] == 0
    assert s["mask_box_disagreements"]["count"] == 1
    assert s["mask_box_disagreements"]["annotation_ids"] == [3]


def test_cli_writes_json_and_png(small_json, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["analyze", "--json", str(small_json), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "masks disagreeing with their box" in printed and "p99 3" in printed
    assert json.loads((out / "dataset.json").read_text())["instances"]["count"] == 4
    assert (out / "dataset.png").read_bytes()[:4] == b"\x89PNG"


def test_short_summary_is_a_few_lines(small_json):
    lines = short_summary(analyze_coco(small_json).summary)
    assert len(lines) == 3
    assert "p99 3, max 3" in lines[1]


@pytest.mark.faults
@pytest.mark.parametrize("text", ["not json", '{"images": []}', "[1, 2]"])
def test_bad_json_is_one_line_naming_the_file(tmp_path, capsys, text):
    path = tmp_path / "bad.json"
    path.write_text(text)
    assert main(["analyze", "--json", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err


@pytest.mark.faults
def test_missing_json_is_exit_2(tmp_path, capsys):
    assert main(["analyze", "--json", str(tmp_path / "nope.json")]) == 2
    assert "nope.json" in capsys.readouterr().err
