"""int8 post-training quantization of the end-to-end graph and its accuracy gate
(`export/int8.py`, `export/int8_gate.py`, `blendmask export --int8`).

Fails when the gate passes an int8 file that loses detections or moves masks, when export
writes a file that failed the gate (without --int8-force) or exits 0 for it, when the int8 file
loses the metadata the runtimes need or the gate's figures, when convs other than the
network's are quantized, or when the file stops running in `SegmenterPredictor` (onnxruntime
and OpenVINO).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.models import shapes_images, spread_model
from PIL import Image

from blendmask.export import int8_gate
from blendmask.export.int8_gate import Int8Report, add_image


def _detections(count: int, shift: int = 0):
    """`count` 8 x 8 square detections on a 64 x 64 image, masks moved right by `shift` px."""
    boxes = np.array([[8 * i, 0, 8 * i + 8, 8] for i in range(count)], dtype=np.float64)
    masks = np.zeros((count, 64, 64), dtype=bool)
    for i in range(count):
        masks[i, 0:8, 8 * i + shift : 8 * i + 8 + shift] = True
    scores = np.linspace(0.9, 0.5, count)
    return boxes, scores, np.zeros(count, dtype=np.int64), masks


def test_the_gate_passes_equal_detections_and_reports_score_differences() -> None:
    report = Int8Report()
    boxes, scores, labels, masks = _detections(6)
    add_image(report, (boxes, scores, labels, masks), (boxes, scores + 0.01, labels, masks))
    assert report.passed() and report.matched == 6
    assert report.summary()["max_score_diff"] == pytest.approx(0.01)


def test_the_gate_fails_on_moved_masks_and_on_lost_detections() -> None:
    moved = Int8Report()
    add_image(moved, _detections(6), _detections(6, shift=1))  # IoU 7/9 each
    assert moved.matched == 6 and moved.mean_mask_iou == pytest.approx(7 / 9)
    assert not moved.passed()
    lost = Int8Report()
    boxes, scores, labels, masks = _detections(6)
    add_image(lost, (boxes, scores, labels, masks), (boxes[:5], scores[:5], labels[:5], masks[:5]))
    assert lost.mean_mask_iou == 1.0 and lost.matched == 5
    assert not lost.passed(), "a sixth of the detections lost must not pass"


onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")


@pytest.fixture(scope="module")
def model_and_images(tmp_path_factory: pytest.TempPathFactory):
    """A tiny model file and a folder of 6 small shapes images."""
    from blendmask.checkpoint_io import save_model_file

    folder = tmp_path_factory.mktemp("int8")
    cfg, model, _ = spread_model()
    save_model_file(folder / "model.pt", cfg, model)
    images = folder / "calib"
    images.mkdir()
    for k, pixels in enumerate(shapes_images(6)):
        Image.fromarray(pixels).save(images / f"{k:02d}.png")
    return folder / "model.pt", images


def _export(weights, images, out, *extra: str) -> int:
    from blendmask.cli.main import main

    argv = ["export", "--weights", str(weights), "--out", str(out), "--int8", "--no-check"]
    return main([*argv, "--calib", str(images), "--calib-count", "3", *extra])


@pytest.mark.slow
def test_export_int8_writes_only_what_passes_the_gate(model_and_images, tmp_path, capsys):
    """The random spread model's masks fail the gate (its bases are noise): nothing is written
    and the status is 1; --int8-force writes it, and its metadata says so."""
    from blendmask.export.int8 import INT8_METADATA_KEY, read_int8_metadata
    from blendmask.export.segmenter_predictor import SegmenterPredictor

    weights, images = model_and_images
    out = tmp_path / "model_int8.onnx"
    assert _export(weights, images, out) == 1
    text = capsys.readouterr().out
    assert "int8 vs fp32 (accuracy gate), 3 image(s)" in text and "FAIL" in text
    assert "nothing written" in text and not out.exists()

    assert _export(weights, images, out, "--int8-force") == 0
    entry = read_int8_metadata(out)
    assert entry["forced"] is True and entry["gate"]["passed"] is False
    assert entry["calibration_images"] == ["00.png", "01.png", "02.png"]
    assert entry["gate_images"] == "held out"
    proto = onnx.load(str(out))
    keys = {e.key for e in proto.metadata_props}
    assert {"blendmask_end_to_end", "blendmask_config", INT8_METADATA_KEY} <= keys
    convs = {n.input[0] for n in proto.graph.node if n.op_type == "Conv"}
    dequantized = {n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    assert convs & dequantized, "no conv runs on int8 inputs"
    on_int8 = [n for n in proto.graph.node if any(i in dequantized for i in n.input)]
    post_ops = {"NonMaxSuppression", "RoiAlign", "TopK", "MatMul", "Sigmoid", "GatherElements"}
    assert not post_ops & {n.op_type for n in on_int8}, "post-processing must stay float"
    float_convs = ("/cls_logits", "/bbox_pred", "/ctrness")
    assert not [n.name for n in on_int8 if any(f in n.name for f in float_convs)]

    image = torch.from_numpy(shapes_images(1)[0]).permute(2, 0, 1).contiguous()
    backends = ["onnxruntime"]
    if __import__("importlib").util.find_spec("openvino"):
        backends.append("openvino")
    for backend in backends:
        (dets,) = SegmenterPredictor(out, backend=backend).predict_tensors([image])
        assert len(dets) > 0 and dets.masks.shape[1:] == image.shape[1:], backend


@pytest.mark.slow
def test_export_int8_writes_a_passing_file_with_its_gate(model_and_images, tmp_path, monkeypatch):
    """The pass branch: with the gate's mask threshold lowered below this model's figure the
    file is written, unforced, with the figures the command printed."""
    from blendmask.export.int8 import read_int8_metadata

    monkeypatch.setattr(int8_gate, "GATE_MASK_IOU", 0.0)
    monkeypatch.setattr(int8_gate, "MIN_MATCHED", 0.0)
    weights, images = model_and_images
    out = tmp_path / "model_int8.onnx"
    assert _export(weights, images, out) == 0
    entry = read_int8_metadata(out)
    assert entry["forced"] is False and entry["gate"]["passed"] is True
    assert entry["gate"]["fp32_detections"] > 0


@pytest.mark.faults
@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "--int8 needs --calib DIR"),
        (["--calib", "MISSING"], "is not a folder of images"),
        (["--calib", "EMPTY"], "no images in"),
        (["--calib", "EMPTY", "--calib-count", "0"], "--calib-count: expected at least 1"),
        (["--calib", "EMPTY", "--no-paste"], "--int8: end-to-end ONNX with pasted masks"),
    ],
)
def test_bad_int8_arguments_are_one_line_errors(tmp_path, capsys, extra, message) -> None:
    from blendmask.cli.main import main

    (tmp_path / "EMPTY").mkdir()
    extra = [str(tmp_path / e) if e in ("MISSING", "EMPTY") else e for e in extra]
    argv = ["export", "--weights", str(tmp_path / "model.pt"), "--out", str(tmp_path / "o.onnx")]
    assert main([*argv, "--int8", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
