"""`InferenceModel`, the one interface `blendmask predict` takes of a model: the PyTorch
`Predictor` and the ONNX runtime predictors meet it, and any object that meets it (a stub with
no network) runs through `predict_images` to the written records and overlays."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import Tensor

from blendmask.config import Config
from blendmask.factory import build
from blendmask.prediction.predict import predict_images
from blendmask.predictor import MAX_IMAGE_PIXELS, Predictor
from blendmask.presets import get_preset
from blendmask.structures import Detections
from blendmask.structures.inference import InferenceModel


def tiny_cfg() -> Config:
    cfg = get_preset("tiny")
    cfg.data.category_names = ["square", "disc"]
    cfg.data.category_ids = [5, 9]
    cfg.model.fcos.num_classes = 2
    return cfg.validate()


class StubModel:
    """One fixed detection per image (a box and its dense mask over the top-left quarter)."""

    def __init__(self) -> None:
        self.cfg = tiny_cfg()
        self.max_image_pixels = MAX_IMAGE_PIXELS
        self.calls = 0

    def predict_tensors(self, images: Sequence[Tensor]) -> list[Detections]:
        self.calls += 1
        out = []
        for image in images:
            height, width = image.shape[-2:]
            masks = torch.zeros(1, height, width, dtype=torch.bool)
            masks[:, : height // 2, : width // 2] = True
            out.append(
                Detections(
                    boxes=torch.tensor([[0.0, 0.0, width / 2, height / 2]]),
                    scores=torch.tensor([0.9]),
                    labels=torch.tensor([1]),
                    masks=masks,
                )
            )
        return out


def test_predictor_meets_the_protocol():
    cfg = tiny_cfg()
    model, _, post = build(cfg, load_pretrained=False)
    assert isinstance(Predictor(cfg, model, post, "cpu"), InferenceModel)


def test_onnx_predictor_meets_the_protocol(tmp_path):
    """Fails if OnnxPredictor loses one of the members predict needs (it had no
    `max_image_pixels` before it was checked against the Protocol)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from blendmask.export.onnx import export_onnx
    from blendmask.export.onnx_predictor import OnnxPredictor

    cfg = tiny_cfg()
    model, _, _ = build(cfg, load_pretrained=False)
    path = export_onnx(model.eval(), tmp_path / "tiny.onnx", height=64, width=64, cfg=cfg)
    assert isinstance(OnnxPredictor(path), InferenceModel)


@pytest.mark.slow
def test_end_to_end_onnx_predictor_meets_the_protocol(tmp_path):
    """`predict --onnx`: the torch-free `OnnxSegmenter` behind `SegmenterPredictor`."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from blendmask.export.end_to_end_onnx import export_end_to_end_onnx
    from blendmask.export.segmenter_predictor import SegmenterPredictor

    cfg = tiny_cfg()
    model, _, post = build(cfg, load_pretrained=False)
    path = export_end_to_end_onnx(
        model.eval(), post.eval(), tmp_path / "e2e.onnx", height=64, width=64, cfg=cfg
    )
    assert isinstance(SegmenterPredictor(path), InferenceModel)


def test_an_object_missing_a_member_is_not_an_inference_model():
    stub = StubModel()
    del stub.max_image_pixels
    assert not isinstance(stub, InferenceModel)


def test_a_stub_meeting_the_protocol_runs_through_predict_images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (40, 30), (200, 100, 50)).save(folder / name)
    stub = StubModel()
    assert isinstance(stub, InferenceModel)
    summary = predict_images(
        weights=None, inputs=[folder], out=tmp_path / "out", device="cpu", predictor=stub
    )
    assert stub.calls == 2 and summary["predicted"] == 2 and summary["detections"] == 2
    lines = (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert sorted(Path(r["file_name"]).name for r in records) == ["a.png", "b.png"]
    dets = [d for r in records for d in r["detections"]]
    assert [(d["name"], d["category_id"], d["box"]) for d in dets] == [
        ("disc", 9, [0.0, 0.0, 20.0, 15.0])
    ] * 2
    assert (tmp_path / "out" / "overlays" / "a.png").is_file()
