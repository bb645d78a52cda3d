"""One JSON record per detection (docs/detections.md), checked against
docs/detections.schema.json with `jsonschema`:

- every line `blendmask predict` writes, and every item of `Detections.to_json()`, validates;
  predict's detections for an image are `to_json()` of the same detections, field for field;
- the schema refuses the old layouts (`bbox` / `segmentation` / `category`, `class_name`), so
  it is not vacuous;
- a predict folder written with the old layout is not resumed into;
- `Detections.names` is the class table, `detection_names` one name per detection.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from jsonschema import Draft202012Validator, ValidationError
from PIL import Image

from blendmask.factory import build
from blendmask.prediction.predict import predict_images
from blendmask.predictor import Predictor
from blendmask.presets import get_preset
from blendmask.structures import Detections

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[1] / "docs" / "detections.schema.json").read_text()
)
NAMES = ["circle", "rectangle", "triangle", "star"]


def validator(definition: str | None = None) -> Draft202012Validator:
    """The schema of a line, or of one of its `$defs` ("detection")."""
    Draft202012Validator.check_schema(SCHEMA)
    if definition is None:
        return Draft202012Validator(SCHEMA)
    return Draft202012Validator({"$defs": SCHEMA["$defs"], "$ref": f"#/$defs/{definition}"})


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    """A random tiny network with scores around 0.3 and boxes a few strides wide (raised
    biases), 4 named classes with non-contiguous ids."""
    torch.manual_seed(0)
    cfg = get_preset("tiny")
    cfg.model.fcos.num_classes = 4
    cfg.data.category_names = list(NAMES)
    cfg.data.category_ids = [3, 5, 7, 9]
    cfg = cfg.validate()
    model, _, post = build(cfg, load_pretrained=False)
    with torch.no_grad():
        model.head.cls_logits.bias.add_(3.0)
        model.head.bbox_pred.bias.add_(2.0)
    return Predictor(cfg, model, post, "cpu", score_threshold=0.0)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("images") / "a.png"
    Image.fromarray(rng.integers(0, 256, (56, 72, 3), dtype=np.uint8)).save(path)
    return path


def test_predict_lines_and_to_json_are_one_record(predictor, image_file, tmp_path):
    """Fails if predict writes another layout than `to_json()` or than the schema says."""
    out = tmp_path / "out"
    run = {"weights": None, "predictor": predictor, "inputs": [image_file], "out": out}
    predict_images(**run, score_threshold=0.0, save_masks="instances")
    (line,) = (out / "predictions.jsonl").read_text().splitlines()
    record = json.loads(line)
    validator().validate(record)
    (dets,) = predictor([image_file])
    assert len(dets) > 5 and len(set(dets.labels.tolist())) > 1  # non-vacuous
    items = json.loads(json.dumps(dets.to_json()))
    for item in items:
        validator("detection").validate(item)
    assert record["detections"] == items
    first = items[0]
    assert first["category_id"] == [3, 5, 7, 9][first["label"]]
    assert first["name"] == NAMES[first["label"]]
    assert first["box"] == pytest.approx(dets.boxes[0].tolist())


@pytest.mark.parametrize(
    "change",
    [
        {"bbox": [1.0, 2.0, 3.0, 4.0]},  # the old predict layout's keys
        {"segmentation": {"size": [4, 5], "counts": "5"}},
        {"class_name": "circle"},  # the old to_json's
        {"box": [1.0, 2.0, 3.0]},
        {"label": -1},
        {"mask": {"size": [4, 5], "counts": [20]}},  # uncompressed RLE
    ],
)
def test_schema_refuses_other_layouts(change):
    good = {
        "box": [1.0, 2.0, 3.0, 4.0],
        "score": 0.5,
        "label": 0,
        "category_id": 1,
        "name": "circle",
        "mask": {"size": [4, 5], "counts": "5"},
    }
    validator("detection").validate(good)
    with pytest.raises(ValidationError):
        validator("detection").validate({**good, **change})


def test_a_folder_of_the_old_layout_is_not_resumed_into(predictor, image_file, tmp_path):
    """Fails if a rerun appends new records to a predictions.jsonl of the old layout."""
    out = tmp_path / "out"
    run = {"weights": None, "predictor": predictor, "inputs": [image_file], "out": out}
    predict_images(**run, score_threshold=0.0)
    settings = json.loads((out / "predict_settings.json").read_text())
    del settings["record_version"]  # as a folder written before the layout had a version
    (out / "predict_settings.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match="record_version.*--no-resume"):
        predict_images(**run, score_threshold=0.0)


def test_names_is_the_class_table_and_detection_names_one_per_detection():
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0]] * 3)
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    labels = torch.tensor([1, 0, 1])
    named = Detections(boxes, torch.tensor([0.9, 0.8, 0.7]), labels, masks, class_names=["a", "b"])
    assert named.names == {0: "a", 1: "b"}  # as ultralytics' Results.names
    assert named.detection_names == ["b", "a", "b"]
    assert [r["name"] for r in named.to_json()] == ["b", "a", "b"]
    plain = Detections(boxes, torch.tensor([0.9, 0.8, 0.7]), labels, masks)
    assert plain.names == {} and plain.detection_names == ["class 1", "class 0", "class 1"]
    # without category ids, label + 1 (as to_coco)
    assert [r["category_id"] for r in plain.to_json()] == [2, 1, 2]
