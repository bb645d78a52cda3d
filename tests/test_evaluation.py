"""COCO evaluation: ground truth scores 1, damage lowers AP, empty results score 0, files."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from blendmask.data.coco import CocoDataset
from blendmask.metrics.coco import (
    COCOEvaluator,
    detections_to_coco_results,
    evaluate_coco,
    metric_keys,
    run_coco_eval,
)
from blendmask.metrics.results import evaluate_results_file
from blendmask.structures import Detections

KEYS = [f"{t}_{n}" for t in ("bbox", "segm") for n in ("AP", "AP50", "AP75", "APs", "APm", "APl")]


@pytest.fixture(scope="module")
def val_set(shapes_dataset):
    """(dataset, image ids, ground truth of every val image as Detections with score 1)."""
    ds = CocoDataset(shapes_dataset["val_json"], shapes_dataset["val_images"])
    detections = []
    for index in range(len(ds)):
        _, target = ds[index]
        n = len(target["labels"])
        detections.append(
            Detections(target["boxes"], torch.ones(n), target["labels"], target["masks"].bool())
        )
    return ds, list(ds.image_ids), detections


def test_ground_truth_as_predictions_scores_one(val_set):
    ds, image_ids, detections = val_set
    evaluator = COCOEvaluator(ds.coco, ds.contiguous_to_category_id)
    for image_id, dets in zip(image_ids, detections):
        evaluator.process([image_id], [dets])
    metrics = evaluator.evaluate()
    assert list(metrics) == KEYS == metric_keys()
    for key in ("bbox_AP", "bbox_AP50", "bbox_AP75", "segm_AP", "segm_AP50", "segm_AP75"):
        assert metrics[key] == 1.0, key
    # 128 px images hold no object of >= 96**2 pixels: "no such objects" stays -1.
    assert metrics["segm_APl"] == -1.0
    assert "AP per category" in evaluator.summary and "circle" in evaluator.summary


def test_shifted_masks_lower_mask_ap_only(val_set):
    ds, image_ids, detections = val_set
    shifted = [
        Detections(d.boxes, d.scores, d.labels, torch.roll(d.masks, shifts=(3, 3), dims=(1, 2)))
        for d in detections
    ]
    metrics = evaluate_coco(
        ds.coco, detections_to_coco_results(shifted, image_ids, ds.contiguous_to_category_id)
    )
    assert metrics["bbox_AP"] == 1.0
    assert metrics["segm_AP"] < 0.9


def test_dropping_half_the_predictions_lowers_ap(val_set):
    ds, image_ids, detections = val_set
    results = detections_to_coco_results(detections, image_ids, ds.contiguous_to_category_id)
    metrics = evaluate_coco(ds.coco, results[::2])
    assert metrics["bbox_AP"] < 0.75 and metrics["segm_AP"] < 0.75
    assert metrics["segm_AP"] > 0.25


def test_zero_detections_give_zero_ap(val_set):
    ds, image_ids, _ = val_set
    empty = [Detections.empty(128, 128) for _ in image_ids]
    assert detections_to_coco_results(empty, image_ids, ds.contiguous_to_category_id) == []
    metrics = evaluate_coco(ds.coco, [])
    assert metrics["bbox_AP"] == 0.0 and metrics["segm_AP"] == 0.0 and metrics["segm_APs"] == 0.0
    assert metrics["segm_APl"] == -1.0


def test_metrics_match_pycocotools_summarize(val_set):
    ds, image_ids, detections = val_set
    generator = torch.Generator().manual_seed(0)
    noisy = [
        Detections(
            d.boxes + torch.randn(d.boxes.shape, generator=generator) * 2,
            torch.rand(len(d), generator=generator),
            d.labels,
            torch.roll(d.masks, shifts=1, dims=2),
        )
        for d in detections
    ]
    results = detections_to_coco_results(noisy, image_ids, ds.contiguous_to_category_id)
    metrics = evaluate_coco(ds.coco, results)
    for iou_type in ("bbox", "segm"):
        gt = COCO()
        gt.dataset = json.loads(ds.json_path.read_text())
        with contextlib.redirect_stdout(io.StringIO()):
            gt.createIndex()
            dt_anns = [
                {k: v for k, v in r.items() if not (iou_type == "segm" and k == "bbox")}
                for r in json.loads(json.dumps(results))
            ]
            coco_eval = COCOeval(gt, gt.loadRes(dt_anns), iou_type)
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        ours = [metrics[f"{iou_type}_{n}"] for n in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
        assert ours == pytest.approx(coco_eval.stats[:6].tolist(), abs=1e-12)
        assert 0.0 < ours[0] < 1.0


def test_results_are_json_ready_and_map_categories():
    masks = torch.zeros(2, 10, 12, dtype=torch.bool)
    masks[0, 1:4, 2:7] = True
    masks[1, 5:9, 0:3] = True
    dets = Detections(
        boxes=torch.tensor([[2.0, 1.0, 7.0, 4.0], [0.0, 5.0, 3.0, 9.0]]),
        scores=torch.tensor([0.9, 0.25]),
        labels=torch.tensor([1, 0]),
        masks=masks,
    )
    results = json.loads(json.dumps(detections_to_coco_results([dets], [42], [5, 9])))
    assert [r["category_id"] for r in results] == [9, 5]
    assert [r["image_id"] for r in results] == [42, 42]
    assert results[0]["bbox"] == [2.0, 1.0, 5.0, 3.0]  # xyxy -> xywh
    assert results[1]["score"] == 0.25
    for result, mask in zip(results, masks):
        assert result["segmentation"]["size"] == [10, 12]
        assert np.array_equal(mask_util.decode(result["segmentation"]), mask.numpy())


def test_evaluate_results_file_writes_metrics(val_set, shapes_dataset, tmp_path):
    ds, image_ids, detections = val_set
    results = detections_to_coco_results(detections, image_ids, ds.contiguous_to_category_id)
    results_json = tmp_path / "in.json"
    results_json.write_text(json.dumps(results))
    metrics = evaluate_results_file(shapes_dataset["val_json"], results_json, tmp_path / "out")
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert written == metrics
    assert set(written) == set(KEYS) | {"images", "seconds", "per_category"}
    assert written["images"] == 4 and written["seconds"] >= 0
    assert written["segm_AP"] == 1.0
    assert set(written["per_category"]) == {c["name"] for c in ds.coco.dataset["categories"]}
    assert all(aps == {"bbox_AP": 1.0, "segm_AP": 1.0} for aps in written["per_category"].values())
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == results

    # Box-only results: box metrics only.
    boxes_only = [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
    results_json.write_text(json.dumps(boxes_only))
    metrics = evaluate_results_file(shapes_dataset["val_json"], results_json, tmp_path / "boxes")
    assert metrics["bbox_AP"] == 1.0 and "segm_AP" not in metrics


def test_evaluator_scores_only_processed_images(val_set):
    ds, image_ids, detections = val_set
    evaluator = COCOEvaluator(ds.coco, ds.contiguous_to_category_id, iou_types=("segm",))
    evaluator.process(image_ids[:2], detections[:2])
    assert evaluator.evaluate()["segm_AP"] == 1.0
    # All images, half of them unpredicted: recall halves.
    assert evaluate_coco(ds.coco, evaluator.results, ("segm",))["segm_AP"] < 0.9
    evaluator.reset()
    assert evaluator.results == [] and evaluator.image_ids == []


def test_max_detections_for_crowded_images():
    # 150 tiny boxes in one image: COCO's default of 100 detections cannot reach AP 1.
    boxes = [[float(4 * (k % 15)), float(4 * (k // 15)), 3.0, 3.0] for k in range(150)]
    gt = COCO()
    gt.dataset = {
        "images": [{"id": 1, "width": 64, "height": 64, "file_name": "x.png"}],
        "categories": [{"id": 1, "name": "dot"}],
        "annotations": [
            {"id": k + 1, "image_id": 1, "category_id": 1, "bbox": b, "area": 9.0, "iscrowd": 0}
            for k, b in enumerate(boxes)
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    results = [{"image_id": 1, "category_id": 1, "bbox": b, "score": 1.0} for b in boxes]
    assert evaluate_coco(gt, results, ("bbox",))["bbox_AP"] < 0.75
    metrics, summary = run_coco_eval(gt, results, ("bbox",), max_detections=200)
    assert metrics["bbox_AP"] == 1.0 and "maxDets 200" in summary
