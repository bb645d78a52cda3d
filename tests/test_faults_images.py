"""Hostile images at every entry point: one check (`blendmask.image_checks`) of shape, size,
dtype, value range and finite values, and no valid image that stops a run.

- the Python API reads uint8 (and other integer dtypes) as 0-255 and float as [0, 1]; a float
  image in 0-255, NaN / infinite values, bool pixels and empty images raise one ValueError
  saying what to do, never a silently wrong answer or an error from inside torch;
- a 1 x N (or N x 1) image is predicted: the resize keeps every side >= 1 pixel.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from blendmask.adapter import TorchvisionDetector
from blendmask.checkpoint_io import save_model_file
from blendmask.cli import main
from blendmask.data.transforms import get_output_size
from blendmask.explain import explain_figure
from blendmask.image_checks import check_image
from blendmask.predictor import Predictor
from blendmask.presets import get_preset

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    """A random tiny model (test size 64 / 96) that keeps every candidate."""
    torch.manual_seed(0)
    cfg = get_preset("tiny")
    cfg.model.fcos.inference_th_test = 0.0
    return Predictor.from_config(cfg.validate(), device="cpu", score_threshold=None)


def image_u8(height: int = 48, width: int = 64) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def nan_image() -> np.ndarray:
    image = image_u8().astype(np.float32) / 255
    image[3, 4, 1] = np.nan
    return image


REFUSED = [
    (image_u8().astype(np.float64), r"float64 .* \[0, 1\], found \[0, 255\].*divide .* by 255"),
    (torch.from_numpy(image_u8()).permute(2, 0, 1).float(), r"float32 .*divide .* by 255"),
    (image_u8().astype(np.float32) / 127.5 - 1, "do not normalise"),
    (image_u8().astype(np.int64) * 16, r"int64 pixel values must lie in 0-255.*257"),
    (nan_image(), "NaN or infinite"),
    (np.full((8, 8, 3), np.inf, np.float32), "NaN or infinite"),
    (np.ones((8, 8, 3), bool), "dtype bool"),
    (np.zeros((0, 0, 3), np.uint8), r"empty \(0 x 0 px\)"),
    (np.zeros((0, 5, 3), np.float32), r"empty \(0 x 5 px\)"),
    (torch.zeros(3, 7, 0), r"empty \(7 x 0 px\)"),
]


@pytest.mark.parametrize("image, message", REFUSED)
def test_predictor_refuses_images_it_would_misread(predictor, image, message):
    """Fails if the API takes a 0-255 float image (or a normalised one) as [0, 1], runs NaN
    through the network, or meets an empty image with a ZeroDivisionError (before: 4 detections
    instead of 7, 0 detections, ZeroDivisionError)."""
    with pytest.raises(ValueError, match=message) as info:
        predictor([image])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("image, message", REFUSED[:2] + REFUSED[4:5])
def test_explain_refuses_them_too(predictor, image, message):
    with pytest.raises(ValueError, match=message):
        explain_figure(predictor, image)


def test_integer_images_are_read_as_0_to_255(predictor):
    """Fails if an int64 (or int32 / uint16) copy of an 8-bit image gives other detections than
    the uint8 image (before: read as [0, 1] floats, i.e. a white image)."""
    image = image_u8()
    want = predictor([image])[0]
    assert len(want) > 0
    for dtype in (np.int64, np.int32, np.uint16):
        got = predictor([image.astype(dtype)])[0]
        assert torch.equal(got.boxes, want.boxes) and torch.equal(got.scores, want.scores)


def test_float_images_in_0_1_are_accepted_with_a_rounding_margin(predictor):
    image = image_u8().astype(np.float32) / 255
    image[0, 0] = [-0.5 / 255, 1 + 0.5 / 255, 1.0]  # a user's own resize may overshoot
    assert check_image(image, "HWC") == "float"
    want = predictor([image])[0]
    assert want.image_size == (48, 64)
    big_endian = predictor([image.astype(">f4")])[0]  # e.g. read from a FITS file
    assert torch.equal(big_endian.scores, want.scores)


def test_adapter_uses_the_same_check():
    """The torchvision adapter refuses what the Predictor refuses, with the same message."""
    model = TorchvisionDetector(preset="tiny", num_classes=3).eval()
    with pytest.raises(ValueError, match=r"images\[0\] is empty \(0 x 4 px\)"):
        model([torch.zeros(3, 0, 4)])
    with pytest.raises(ValueError, match=r"images\[0\]: float32 .*divide .* by 255"):
        model([torch.full((3, 8, 8), 200.0)])


@pytest.mark.parametrize("size", [(1, 200), (200, 1), (1, 10000)])
def test_a_one_pixel_wide_image_is_predicted(predictor, size):
    """Fails if the resize makes a 0-pixel side (before: "height and width must be > 0" from
    inside torch, which stopped `predict` at such an image)."""
    height, width = size
    out_h, out_w = get_output_size(height, width, 64, 96)
    assert min(out_h, out_w) == 1 and max(out_h, out_w) == 96
    det = predictor([image_u8(height, width)])[0]
    assert det.image_size == size and det.masks.shape == (len(det), height, width)


@pytest.mark.slow
def test_predict_folder_with_a_thin_image_predicts_every_image(predictor, tmp_path, capsys):
    """Fails if a valid 1 x N image stops `blendmask predict` (before: exit 2 at that file,
    and every rerun stopped there, the images after it never predicted)."""
    model_file = tmp_path / "model.pt"
    save_model_file(model_file, predictor.cfg, predictor.model)
    folder = tmp_path / "images"
    folder.mkdir()
    for name, size in [("a.png", (48, 64)), ("b_thin.png", (1, 300)), ("c_tall.png", (300, 1))]:
        Image.fromarray(image_u8(*size)).save(folder / name)
    Image.fromarray(image_u8()).save(folder / "d.png")
    out = tmp_path / "out"
    args = ["predict", "--weights", str(model_file), str(folder), "--out", str(out)]
    assert main([*args, "--device", "cpu", "--conf", "0"]) == 0
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    sizes = {Path(r["file_name"]).name: (r["height"], r["width"]) for r in records}
    assert sizes == {
        "a.png": (48, 64),
        "b_thin.png": (1, 300),
        "c_tall.png": (300, 1),
        "d.png": (48, 64),
    }
    assert "4 predicted" in capsys.readouterr().out


@pytest.fixture(scope="module")
def segmenter(predictor, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from blendmask.export.end_to_end_onnx import export_end_to_end_onnx
    from blendmask.onnx_runtime import OnnxSegmenter

    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    model, post = predictor.model, predictor.postprocessor
    return OnnxSegmenter(
        export_end_to_end_onnx(model, post, path, height=64, width=96, cfg=predictor.cfg)
    )


@pytest.mark.slow
def test_onnx_segmenter_refuses_an_empty_image_and_predicts_a_thin_one(segmenter):
    """Fails if the numpy runtime meets a 0 x 0 image with a ZeroDivisionError or a 1 x N image
    with onnxruntime's / PIL's "height and width must be > 0" (its resize is the package's)."""
    for empty in (np.zeros((0, 0, 3), np.uint8), np.zeros((5, 0, 3), np.uint8)):
        with pytest.raises(ValueError, match=r"image is empty \(\d x 0 px\)"):
            segmenter(empty)
    for size in [(1, 300), (300, 1)]:
        result = segmenter(image_u8(*size))
        assert result.masks is not None and result.masks.shape[1:] == size


@pytest.mark.slow
def test_explain_of_a_large_image_draws_at_display_size(predictor, monkeypatch):
    """Fails if `explain` pastes every detection's mask at the original size or draws the
    detections panel there (before: 8000 x 8000 took 5.6 GB; now 1.7 GB, most of it torch):
    pasted pixels and the panel's picture stay within the display size."""
    from blendmask.explain import PANEL_MAX_SIDE
    from blendmask.structures import paste

    pasted: list[int] = []
    original = paste.paste_masks

    def counting(masks, boxes, image_size, threshold=0.5):
        pasted.append(masks.shape[0] * image_size[0] * image_size[1])
        return original(masks, boxes, image_size, threshold)

    monkeypatch.setattr(paste, "paste_masks", counting)
    top = 2
    fig = explain_figure(predictor, image_u8(2100, 3000), top=top)
    panel = next(ax for ax in fig.axes if ax.get_title() == "detections")
    assert max(panel.images[0].get_array().shape[:2]) == PANEL_MAX_SIDE
    assert sum(pasted) <= top * PANEL_MAX_SIDE**2
