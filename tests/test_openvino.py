"""The OpenVINO backend (`export/openvino_segmenter.py`, `predict --onnx F --backend openvino`).

Fails when OpenVINO's detections on the end-to-end graph drift from onnxruntime's (scores within
1e-4, box IoU >= 0.999, mean mask IoU >= 0.99: `export.compare`), when its default precision
hint stops being f32, or when `SegmenterPredictor` stops meeting `InferenceModel` with it.
Skipped where the `openvino` extra is not installed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from helpers.models import boxy_model, shapes_images  # noqa: E402

from blendmask.export.compare import compare  # noqa: E402
from blendmask.export.end_to_end_onnx import export_end_to_end_onnx  # noqa: E402
from blendmask.export.openvino_segmenter import OpenVinoSegmenter  # noqa: E402
from blendmask.export.segmenter_predictor import SegmenterPredictor  # noqa: E402
from blendmask.onnx_runtime import OnnxSegmenter  # noqa: E402
from blendmask.structures.inference import InferenceModel  # noqa: E402

# Exports a graph (a few seconds).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory):
    cfg, model, post = boxy_model()
    folder = tmp_path_factory.mktemp("openvino")
    return export_end_to_end_onnx(model, post, folder / "tiny.onnx", height=64, width=96, cfg=cfg)


def test_openvino_gives_onnxruntimes_detections(tiny_onnx) -> None:
    openvino = OpenVinoSegmenter(tiny_onnx, threads=1)
    assert openvino.compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "f32"
    report = compare(OnnxSegmenter(tiny_onnx, threads=1), openvino, shapes_images())
    assert report.expected >= 100, "too few detections for the comparison to mean anything"
    assert report.passed(), report.summary()
    assert report.max_score_diff <= 1e-4 and report.mean_mask_iou >= 0.99


def test_openvino_batch_equals_onnxruntimes_batch(tiny_onnx) -> None:
    """Three sizes padded to the largest in one call (dynamic N, H, W in OpenVINO too)."""
    images = shapes_images(3)
    got = OpenVinoSegmenter(tiny_onnx, threads=1).predict_batch(images)
    want = OnnxSegmenter(tiny_onnx, threads=1).predict_batch(images)
    for a, b, image in zip(got, want, images):
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert a.masks.shape[1:] == image.shape[:2]


def test_segmenter_predictor_runs_openvino(tiny_onnx) -> None:
    predictor = SegmenterPredictor(tiny_onnx, backend="openvino")
    assert isinstance(predictor, InferenceModel)
    assert isinstance(predictor.segmenter, OpenVinoSegmenter)
    image = torch.from_numpy(shapes_images(1)[0]).permute(2, 0, 1).contiguous()
    (dets,) = predictor.predict_tensors([image])
    assert len(dets) > 0 and dets.masks.shape[1:] == image.shape[1:]


@pytest.mark.faults
def test_bad_backend_and_hint_are_refused(tiny_onnx) -> None:
    with pytest.raises(ValueError, match="backend: expected one of onnxruntime, openvino"):
        SegmenterPredictor(tiny_onnx, backend="tensorrt")
    with pytest.raises(ValueError, match="openvino precision: expected one of f32, bf16"):
        OpenVinoSegmenter(tiny_onnx, precision="f16")
    with pytest.raises(FileNotFoundError, match="ONNX file not found"):
        OpenVinoSegmenter(tiny_onnx.parent / "missing.onnx")


def test_predict_command_with_the_openvino_backend(tiny_onnx, tmp_path) -> None:
    from PIL import Image

    from blendmask.cli import main

    Image.fromarray(shapes_images(1)[0]).save(tmp_path / "a.png")
    args = ["predict", "--onnx", str(tiny_onnx), str(tmp_path / "a.png"), "--out", str(tmp_path)]
    assert main([*args, "--backend", "openvino", "--num-workers", "0", "--no-overlays"]) == 0
    assert (tmp_path / "predictions.jsonl").read_text().count("\n") == 1
