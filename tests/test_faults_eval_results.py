"""`blendmask eval --results` on large results files: read one result at a time, keep only what
COCOeval scores (the best `max_detections` per image and category), same metrics.
"""

from __future__ import annotations

import json
import random
import tracemalloc

import pytest

from blendmask.metrics.coco import evaluate_coco, load_coco_gt
from blendmask.metrics.results import (
    JsonListStream,
    evaluate_results_file,
    load_results_json,
)

pytestmark = pytest.mark.faults

IMAGES_AND_CATEGORIES = [(i, c) for i in (1, 2, 5, 7) for c in (20, 3, 7)]


def box_results(count: int, seed: int = 0) -> list[dict]:
    """`count` box results over the tiny_coco images and categories, with many equal scores
    (ties must be cut as COCOeval's stable sort cuts them)."""
    rng = random.Random(seed)
    results = []
    for _ in range(count):
        image_id, category_id = rng.choice(IMAGES_AND_CATEGORIES)
        x, y = rng.uniform(0, 20), rng.uniform(0, 20)
        box = [round(x, 2), round(y, 2), round(rng.uniform(1, 12), 2), round(rng.uniform(1, 12), 2)]
        score = rng.choice([0.5, 0.25, round(rng.random(), 3)])
        results.append(
            {"image_id": image_id, "category_id": category_id, "bbox": box, "score": score}
        )
    return results


def test_results_beyond_what_coco_scores_do_not_change_the_metrics(tiny_coco, tmp_path):
    """Fails if keeping the best `max_detections` per (image, category) changes any metric
    (a wrong cut, or ties cut otherwise than COCOeval) or keeps more than that."""
    results = box_results(3000)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    coco_gt = load_coco_gt(tiny_coco[0])
    want = evaluate_coco(coco_gt, results, ("bbox",), max_detections=10, per_category=True)
    got = evaluate_results_file(tiny_coco[0], path, tmp_path / "out", max_detections=10)
    assert {k: got[k] for k in want} == want
    kept = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(kept) == 10 * len(IMAGES_AND_CATEGORIES)
    assert kept == sorted(kept, key=lambda r: results.index(r))  # file order


@pytest.mark.slow
def test_results_file_is_read_in_memory_bounded_by_the_kept_results(tiny_coco, tmp_path):
    """Fails if the whole file is held at once, as text or as raw objects (before: a 200 MB
    results json peaked at 3.2 GB RSS; 2.3 GB now, 0.9 GB of it torch's import): Python's peak
    allocation while loading 5 MB of results stays under a third of the file's size (a read
    window and the kept results; `json.load` alone needs twice the file)."""
    path = tmp_path / "results.json"
    path.write_text(json.dumps(box_results(60000, seed=1)))
    coco_gt = load_coco_gt(tiny_coco[0])
    tracemalloc.start()
    try:
        kept = load_results_json(path, coco_gt, max_detections=10)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(kept) == 10 * len(IMAGES_AND_CATEGORIES)
    assert peak < path.stat().st_size / 3, (peak, path.stat().st_size)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", r"not valid json: Expecting '\[' at character 0"),
        ('{"annotations": []}', "expected a list of result objects, got a dict"),
        ("[1,]", "not valid json: Expecting value at character 3"),
        ('[{"a": 1} {"a": 2}]', r"Expecting ',' delimiter or '\]' at character 10"),
        ("[1", r"Expecting ',' delimiter or '\]' at character 2"),
        ("[1] x", "Extra data after the list at character 4"),
    ],
)
def test_stream_names_the_file_and_the_offset_of_bad_json(tmp_path, text, message):
    path = tmp_path / "results.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        list(JsonListStream(path, chunk_chars=2))
    assert str(path) in str(info.value)


def test_stream_decodes_values_cut_by_any_window(tmp_path):
    """Fails if a value split between two reads is decoded from its first part (a number
    "1." of "1.5e-7", a string, a nested list)."""
    values = [1.5e-7, -12345678901, "a, b ] c", [1, [2, {"x": None}]], True, {"s": "\\"}]
    path = tmp_path / "values.json"
    path.write_text(" \n" + json.dumps(values, indent=1) + "\n")
    for chunk in range(1, 12):
        assert list(JsonListStream(path, chunk_chars=chunk)) == values
