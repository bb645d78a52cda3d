"""What detection users reach for, checked on a tiny model:

- `Detections`: 0-based labels, class names and category ids from the model's config,
  indexing / `filter` by score and class (names or labels), soft mask probabilities, `plot` /
  `save`, `numpy`, `to_json`, `to_coco` (equal to what predict / eval write);
- one default score threshold for `Predictor` and `blendmask predict`; every post-processing
  knob on `Predictor` and on `predict` / `eval` (--conf, --iou, --max-det, --classes, --set),
  each changing the detections as it says, none changing the caller's post-processor;
- `eval` prints the COCO table and the AP per category, and keeps them in metrics.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util

from blendmask.checkpoint_io import save_model_file
from blendmask.cli import main
from blendmask.cli.main import build_parser
from blendmask.factory import build
from blendmask.metrics.coco import detections_to_coco_results, run_coco_eval
from blendmask.metrics.tables import format_tables
from blendmask.predictor import DEFAULT_SCORE_THRESHOLD, Predictor
from blendmask.presets import get_preset
from blendmask.structures import Detections
from blendmask.structures.paste import paste_mask_probabilities, paste_masks

NAMES = ["circle", "rectangle", "triangle", "star"]  # the shapes dataset's, ids 1-4


def tiny_config(category_ids=(1, 2, 3, 4)):
    cfg = get_preset("tiny")
    cfg.model.fcos.num_classes = 4
    cfg.data.category_names = list(NAMES)
    cfg.data.category_ids = list(category_ids)
    return cfg.validate()


def tiny_model(cfg):
    """A random tiny network whose scores spread around 0.3 (a raised classification bias) and
    whose boxes span a few strides (so that NMS has overlaps to remove), and its
    post-processor."""
    torch.manual_seed(0)
    model, _, post = build(cfg, load_pretrained=False)
    with torch.no_grad():
        model.head.cls_logits.bias.add_(3.0)
        model.head.bbox_pred.bias.add_(2.0)
    return model, post


@pytest.fixture(scope="module")
def image(shapes_dataset) -> np.ndarray:
    path = sorted(Path(shapes_dataset["val_images"]).glob("*.png"))[0]
    return np.array(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def parts():
    cfg = tiny_config(category_ids=(11, 12, 13, 14))
    return (cfg, *tiny_model(cfg))


def predictor(parts, **knobs) -> Predictor:
    cfg, model, post = parts
    return Predictor(cfg, model, post, "cpu", **knobs)


@pytest.fixture
def dets(parts, image) -> Detections:
    (det,) = predictor(parts, score_threshold=None)([image])
    assert len(det) > 20 and len(set(det.labels.tolist())) > 1  # non-vacuous
    return det


# ---------------------------------------------------------------------------------------------
# Detections
# ---------------------------------------------------------------------------------------------


def test_labels_are_0_based_and_category_ids_appear_only_in_coco(dets):
    assert dets.labels.dtype == torch.int64
    assert 0 <= int(dets.labels.min()) and int(dets.labels.max()) < 4
    assert dets.class_names == tuple(NAMES) and dets.category_ids == (11, 12, 13, 14)
    # `names` is the class table (as ultralytics' Results.names), `detection_names` one name
    # per detection.
    assert dets.names == dict(enumerate(NAMES))
    assert dets.detection_names == [NAMES[k] for k in dets.labels.tolist()]
    coco = dets.to_coco(image_id=7)
    assert [r["category_id"] for r in coco] == [11 + k for k in dets.labels.tolist()]
    assert all(r["image_id"] == 7 for r in coco)
    # The same results as predict / eval write, RLE for RLE.
    assert coco == detections_to_coco_results([dets], [7], [11, 12, 13, 14])
    # Given ids win; without any, label + 1 (as predict writes for a model without ids).
    given = dets.to_coco(3, category_ids=[5, 6, 7, 8])
    assert [r["category_id"] for r in given] == [5 + k for k in dets.labels.tolist()]
    plain = Detections(dets.boxes, dets.scores, dets.labels, dets.masks)
    assert [r["category_id"] for r in plain.to_coco(0)] == [1 + k for k in dets.labels.tolist()]
    with pytest.raises(ValueError, match="category id"):
        dets.to_coco(0, category_ids=[1])


def test_indexing_keeps_the_box_local_form(dets):
    high = dets[dets.scores > 0.3]
    assert len(high) == int((dets.scores > 0.3).sum()) and not high.has_dense_masks
    assert high.class_names == dets.class_names and high.category_ids == dets.category_ids
    assert torch.equal(dets[0].boxes, dets.boxes[:1]) and len(dets[-1]) == 1
    assert torch.equal(dets[-1].scores, dets.scores[-1:])
    assert torch.equal(dets[[0, 2]].labels, dets.labels[[0, 2]])
    assert torch.equal(dets[:3].masks, dets.masks[:3])
    assert len(dets[[]]) == 0
    with pytest.raises(IndexError):
        dets[len(dets)]


def test_filter_by_score_and_class_names_or_labels(dets):
    kept = dets.filter(score=0.3)
    assert len(kept) > 0 and bool((kept.scores >= 0.3).all())
    assert len(kept) == int((dets.scores >= 0.3).sum())
    label = int(dets.labels[0])
    by_name = dets.filter(classes=[NAMES[label]])
    by_label = dets.filter(classes=[label])
    assert torch.equal(by_name.boxes, by_label.boxes) and len(by_name) > 0
    assert set(by_name.labels.tolist()) == {label}
    both = dets.filter(score=0.3, classes=[NAMES[label], (label + 1) % 4])
    assert set(both.labels.tolist()) <= {label, (label + 1) % 4}
    for bad, match in (("square", "square"), (4, "out of range"), (-1, "out of range")):
        with pytest.raises(ValueError, match=match):
            dets.filter(classes=[bad])
    with pytest.raises(ValueError, match="finite"):
        dets.filter(score=float("nan"))


def test_mask_probabilities_are_the_soft_masks(dets):
    probs = dets.mask_probabilities()
    assert probs.shape == dets.masks.shape and probs.dtype == torch.float32
    assert 0 <= float(probs.min()) and float(probs.max()) <= 1
    assert bool(((probs > 0) & (probs < 1)).any())  # soft, not 0 / 1
    assert torch.equal(probs >= 0.5, dets.masks)
    dense = Detections(dets.boxes, dets.scores, dets.labels, dets.masks)
    assert torch.equal(dense.mask_probabilities(), dets.masks.float())


def test_paste_mask_probabilities_thresholded_is_paste_masks():
    gen = torch.Generator().manual_seed(1)
    masks = torch.rand((6, 28, 28), generator=gen)
    xy = torch.rand((6, 2), generator=gen) * 60
    boxes = torch.cat([xy, xy + 5 + torch.rand((6, 2), generator=gen) * 40], dim=1)
    boxes = boxes.clamp(max=80)
    probs = paste_mask_probabilities(masks, boxes, (70, 80))
    assert probs.shape == (6, 70, 80)
    assert torch.equal(probs >= 0.5 - 1e-6, paste_masks(masks, boxes, (70, 80), 0.5))
    assert paste_mask_probabilities(masks[:0], boxes[:0], (70, 80)).shape == (0, 70, 80)


def test_plot_and_save_draw_over_the_image(dets, image, tmp_path):
    picture = dets.plot(image)
    assert picture.shape == image.shape and picture.dtype == np.uint8
    masks = dets.masks.any(0).numpy()
    assert masks.any() and (picture[masks] != image[masks]).any()
    assert np.array_equal(np.asarray(dets.plot(image, pil=True)), picture)
    path = dets.save(tmp_path / "sub" / "pred.png", image)
    assert np.array_equal(np.array(Image.open(path)), picture)
    none = dets[dets.scores > 2]
    assert np.array_equal(none.plot(image), image)  # nothing to draw
    with pytest.raises(ValueError, match="suffix"):
        dets.save(tmp_path / "pred.txt", image)
    # Any Detections draws, not only a Predictor's: the same picture from the same values.
    plain = Detections(dets.boxes, dets.scores, dets.labels, dets.masks, class_names=NAMES)
    assert np.array_equal(plain.plot(image), picture)


def test_numpy_and_to_json(dets):
    arrays = dets.numpy()
    assert arrays["boxes"].shape == (len(dets), 4) and arrays["boxes"].dtype == np.float32
    assert arrays["scores"].dtype == np.float32 and arrays["labels"].dtype == np.int64
    assert arrays["masks"].dtype == bool and arrays["masks"].shape == tuple(dets.masks.shape)
    records = json.loads(json.dumps(dets.to_json()))
    assert len(records) == len(dets)
    first = records[0]
    assert first["label"] == int(dets.labels[0]) and first["name"] == dets.detection_names[0]
    assert first["category_id"] == dets.category_ids[first["label"]]
    assert first["box"] == pytest.approx(dets.boxes[0].tolist())
    decoded = mask_util.decode({**first["mask"], "counts": first["mask"]["counts"].encode()})
    assert np.array_equal(decoded.astype(bool), arrays["masks"][0])


# ---------------------------------------------------------------------------------------------
# Predictor knobs
# ---------------------------------------------------------------------------------------------


def test_one_default_score_threshold_for_predictor_and_predict(parts, dets, image):
    parser = build_parser()
    args = parser.parse_args(["predict", "--weights", "w.pt", "a.png", "--out", "o"])
    assert args.score_threshold == DEFAULT_SCORE_THRESHOLD == 0.3
    default = predictor(parts)
    assert default.score_threshold == DEFAULT_SCORE_THRESHOLD
    (got,) = default([image])
    assert 0 < len(got) < len(dets)
    assert torch.equal(got.boxes, dets.boxes[dets.scores >= DEFAULT_SCORE_THRESHOLD])
    # eval keeps every detection by default: AP needs the low scores.
    args = parser.parse_args(["eval", "--weights", "w.pt", "--json", "j", "--out", "o"])
    assert args.score_threshold is None


def test_a_low_score_threshold_reaches_below_the_candidate_threshold(image):
    cfg = tiny_config()
    model, _, post = build(cfg, load_pretrained=False)  # random: cls * ctr ~ 0.005 < 0.05
    everything = Predictor(cfg, model, post, "cpu", score_threshold=None)([image])[0]
    low = Predictor(cfg, model, post, "cpu", score_threshold=0.05)([image])[0]
    assert len(everything) == 0 < len(low)
    assert bool((low.scores >= 0.05).all()) and float(low.scores.max()) < 0.22
    assert post.score_thresh == cfg.model.fcos.inference_th_test  # the caller's is unchanged


def test_knobs_change_the_detections_not_the_callers_postprocessor(parts, dets, image):
    _, _, post = parts
    before = (post.score_thresh, post.nms_thresh, post.post_nms_topk, post.classes)
    loose = predictor(parts, score_threshold=None, nms_iou=0.9, max_detections=1000)([image])[0]
    tight = predictor(parts, score_threshold=None, nms_iou=0.1, max_detections=1000)([image])[0]
    assert len(tight) < len(loose)
    top5 = predictor(parts, score_threshold=None, max_detections=5)([image])[0]
    fifth = dets.scores.sort(descending=True).values[4]
    assert 5 <= len(top5) < len(dets) and bool((top5.scores >= fifth).all())
    label = int(dets.labels[0])
    only = predictor(parts, score_threshold=None, classes=[NAMES[label]])([image])[0]
    assert len(only) > 0 and set(only.labels.tolist()) == {label}
    # Classes are chosen before NMS and top-k: the budget goes to them.
    assert len(only) >= len(dets.filter(classes=[label]))
    assert (post.score_thresh, post.nms_thresh, post.post_nms_topk, post.classes) == before
    small = predictor(parts, min_size=64, max_size=64)
    assert small.preprocess([image])[0].tensor.shape[-2:] == (64, 64)


def test_bad_knobs_are_refused_naming_them(parts):
    for knobs, match in (
        ({"score_threshold": float("nan")}, "score_threshold"),
        ({"nms_iou": 1.5}, "nms_iou"),
        ({"max_detections": 0}, "max_detections"),
        ({"min_size": -1}, "min_size"),
        ({"classes": ["square"]}, "square"),
        ({"classes": [4]}, "out of range"),
    ):
        with pytest.raises(ValueError, match=match):
            predictor(parts, **knobs)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    cfg = tiny_config()
    model, _ = tiny_model(cfg)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model_file(path, cfg, model)
    return path


def test_from_checkpoint_takes_knobs_and_inference_overrides(model_file):
    loaded = Predictor.from_checkpoint(
        model_file, device="cpu", overrides=["data.min_size_test=64"], classes=["star"]
    )
    assert loaded.min_size == 64 and loaded.cfg.data.min_size_test == 64
    assert loaded.postprocessor.classes == (3,)
    with pytest.raises(ValueError, match="model.fcos.num_classes"):
        Predictor.from_checkpoint(model_file, device="cpu", overrides=["model.fcos.num_classes=2"])


# ---------------------------------------------------------------------------------------------
# predict / eval
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_predict_conf_iou_max_det_classes_set(model_file, shapes_dataset, tmp_path):
    images = Path(shapes_dataset["val_images"])
    base = ["predict", "--weights", str(model_file), str(images), "--device", "cpu", "--coco"]
    every_args = ["--conf", "0", "--max-det", "30", "--no-overlays"]
    assert main([*base, "--out", str(tmp_path / "all"), *every_args]) == 0
    every = json.loads((tmp_path / "all" / "results.json").read_text())
    assert {r["category_id"] for r in every} == {1, 2, 3, 4}
    args = ["--score-threshold", "0.1", "--iou", "0.5", "--max-det", "3", "--classes", "star,0"]
    args += ["--set", "data.min_size_test=96"]
    assert main([*base, "--out", str(tmp_path / "some"), *args]) == 0
    some = json.loads((tmp_path / "some" / "results.json").read_text())
    assert 0 < len(some) < len(every)
    assert {r["category_id"] for r in some} <= {1, 4} and min(r["score"] for r in some) >= 0.1
    per_image = [sum(r["image_id"] == i for r in some) for i in range(4)]
    assert max(per_image) <= 4  # 3, and ties with the third score


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--conf", "nan"], "--conf"),
        (["--iou", "2"], "--iou"),
        (["--max-det", "0"], "--max-det"),
    ],
)
def test_predict_refuses_bad_knobs_at_parse_time(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--weights", "w.pt", "a.png", "--out", "o", *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_predict_refuses_unknown_classes_and_training_keys(model_file, tmp_path, capsys):
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 50, 3), dtype=np.uint8)).save(image)
    base = ["predict", "--weights", str(model_file), str(image), "--out", str(tmp_path / "o")]
    capsys.readouterr()
    assert main([*base, "--classes", "square"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "square" in err and "circle" in err
    assert main([*base, "--set", "model.fcos.num_classes=2"]) == 2
    assert "model.fcos.num_classes" in capsys.readouterr().err


def eval_args(model_file: Path, shapes_dataset, out: Path, *extra: str) -> list[str]:
    return [
        "eval",
        "--weights",
        str(model_file),
        "--json",
        str(shapes_dataset["val_json"]),
        "--images",
        str(shapes_dataset["val_images"]),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--num-workers",
        "0",
        *extra,
    ]


@pytest.mark.slow
def test_eval_prints_and_keeps_ap_per_category(model_file, shapes_dataset, tmp_path, capsys):
    assert main(eval_args(model_file, shapes_dataset, tmp_path / "ev", "--max-det", "20")) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert set(metrics["per_category"]) == set(NAMES)
    assert all(set(aps) == {"bbox_AP", "segm_AP"} for aps in metrics["per_category"].values())
    assert printed.startswith(format_tables(metrics))
    for name in NAMES:
        assert any(line.split()[0] == name for line in printed.splitlines() if line.strip())
    assert "bbox AP" in printed and "segm AP" in printed and "AP50" in printed

    # --classes: detections of that class only, AP over that category only.
    star_args = ["--classes", "3", "--max-det", "20"]
    assert main(eval_args(model_file, shapes_dataset, tmp_path / "star", *star_args)) == 0
    capsys.readouterr()
    star = json.loads((tmp_path / "star" / "metrics.json").read_text())
    assert set(star["per_category"]) == {"star"}
    assert star["segm_AP"] == star["per_category"]["star"]["segm_AP"]
    results = json.loads((tmp_path / "star" / "results.json").read_text())
    assert {r["category_id"] for r in results} <= {4}


def test_eval_results_refuses_model_knobs(shapes_dataset, tmp_path, capsys):
    args = ["eval", "--results", "r.json", "--json", str(shapes_dataset["val_json"])]
    assert main([*args, "--out", str(tmp_path), "--iou", "0.5"]) == 2
    assert "--iou" in capsys.readouterr().err


def test_format_tables_and_category_subsets(shapes_dataset):
    metrics = {f"{t}_{n}": 0.5 for t in ("bbox", "segm") for n in ("AP", "AP50", "AP75")}
    metrics |= {"per_category": {"circle": {"bbox_AP": 0.25, "segm_AP": -1.0}}}
    lines = format_tables(metrics).splitlines()
    assert lines[1].split()[:2] == ["bbox", "50.00"] and lines[1].split()[-1] == "-1"
    assert lines[-1].split() == ["circle", "25.00", "-1"]
    with pytest.raises(ValueError, match="category ids"):
        run_coco_eval(shapes_dataset["val_json"], [], category_ids=[99])


@pytest.mark.slow
@pytest.mark.parametrize("flag, counted", [((), 100), (("--max-det", "150"), 150)])
def test_eval_counts_the_detections_max_det_asks_for(
    model_file, shapes_dataset, tmp_path, monkeypatch, flag, counted
):
    """COCOeval counts COCO's 100 detections per image unless `--max-det` asks the model for
    another number; then it counts those (`test_evaluation` checks that the count changes AP
    on an image with 150 objects)."""
    from blendmask.evaluation import evaluate

    seen = []

    class Spy(evaluate.COCOEvaluator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append(self.max_detections)

    monkeypatch.setattr(evaluate, "COCOEvaluator", Spy)
    assert main(eval_args(model_file, shapes_dataset, tmp_path / "ev", *flag)) == 0
    assert seen == [counted]
