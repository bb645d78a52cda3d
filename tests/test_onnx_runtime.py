"""Tests of the numpy-only runtime (`blendmask.onnx_runtime`): it runs without torch in the
process, its preprocessing equals the package's (`data/preprocess.py`, `io.load_image`) number
for number, and it refuses files and images it cannot handle with a clear message.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from helpers.models import boxy_model, shapes_images, spread_model  # noqa: E402

from blendmask.data.preprocess import preprocess  # noqa: E402
from blendmask.data.transforms import get_output_size as package_output_size  # noqa: E402
from blendmask.export.end_to_end_onnx import export_end_to_end_onnx  # noqa: E402
from blendmask.export.onnx import export_onnx  # noqa: E402
from blendmask.io import load_image  # noqa: E402
from blendmask.onnx_runtime import (  # noqa: E402
    OnnxSegmenter,
    get_output_size,
    load_rgb,
    preprocess_images,
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg, model, post = boxy_model()
    folder = tmp_path_factory.mktemp("runtime")
    return export_end_to_end_onnx(model, post, folder / "tiny.onnx", height=64, width=96, cfg=cfg)


@pytest.mark.slow
def test_runtime_runs_without_torch(exported: Path, tmp_path: Path) -> None:
    """In a fresh interpreter: import the runtime, segment an image file, and torch (or any
    blendmask module that needs it) was never imported. The results equal this process's."""
    image = tmp_path / "a.png"
    Image.fromarray(shapes_images(1)[0]).save(image)
    script = f"""
import json, sys
from blendmask.onnx_runtime import OnnxSegmenter
boxes, scores, labels, masks = OnnxSegmenter({str(exported)!r})({str(image)!r})
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
print(json.dumps({{"heavy": heavy, "labels": labels.tolist(), "scores": scores.tolist(),
                  "pixels": int(masks.sum()), "shape": list(masks.shape)}}))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["heavy"] == []
    want = OnnxSegmenter(exported)(image)
    assert out["labels"] == want.labels.tolist() and len(out["labels"]) > 0
    np.testing.assert_array_equal(out["scores"], want.scores)
    assert out["pixels"] == int(want.masks.sum()) > 0
    assert out["shape"] == [len(want.labels), *shapes_images(1)[0].shape[:2]]


@pytest.mark.parametrize("max_size", [1333, 96, 0, 100])
def test_output_size_equals_the_packages(max_size: int) -> None:
    rng = np.random.default_rng(max_size)
    for height, width in rng.integers(1, 3000, size=(300, 2)).tolist() + [[1, 1], [800, 1333]]:
        for min_size, scale in ((64, 0.0), (320, 0.0), (800, 0.0), (800, 3.0), (64, 0.37)):
            assert get_output_size(height, width, min_size, max_size, scale) == package_output_size(
                height, width, min_size, max_size, scale
            )


def test_preprocessing_equals_the_packages() -> None:
    """Same batch to the bit, same sizes: PIL bilinear on uint8, zero padding to /32, / 255.
    Fails if the runtime's resize, padding or division drifts from `preprocess`."""
    images = shapes_images(4, seed=3) + [np.full((7, 300, 3), 200, np.uint8)]
    for batch_images, min_size, max_size in ((images[:1], 64, 96), (images, 320, 533)):
        batch, sizes, origs = preprocess_images(batch_images, min_size, max_size, 32)
        want, want_origs = preprocess(batch_images, min_size, max_size)
        assert torch.equal(torch.from_numpy(batch), want.tensor)
        assert sizes.tolist() == [list(s) for s in want.image_sizes]
        assert origs.tolist() == [list(s) for s in want_origs]
    # a fixed factor (data.test_scale, the end-to-end metadata's "scale")
    batch, sizes, _ = preprocess_images(images, 64, 0, 32, 1.5)
    want, _ = preprocess(images, 64, 0, scale=1.5)
    assert torch.equal(torch.from_numpy(batch), want.tensor)
    assert sizes.tolist() == [list(s) for s in want.image_sizes]


def _save(path: Path, image: Image.Image, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def test_decoding_equals_io_load_image(tmp_path: Path) -> None:
    """EXIF rotation, gray, palette, RGBA, CMYK, 16-bit and float images decode to the pixels
    `io.load_image` gives."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    files = [
        _save(tmp_path / "exif.png", rgb, exif=exif),
        _save(tmp_path / "gray.png", rgb.convert("L")),
        _save(tmp_path / "palette.png", rgb.convert("P")),
        _save(tmp_path / "rgba.png", rgb.convert("RGBA")),
        _save(tmp_path / "cmyk.jpg", rgb.convert("CMYK")),
        _save(
            tmp_path / "deep.png",
            Image.fromarray(rng.integers(0, 65536, (20, 30), dtype=np.uint16)),
        ),
        _save(tmp_path / "unit.tif", Image.fromarray(rng.random((20, 30), dtype=np.float32))),
        _save(tmp_path / "wide.tif", Image.fromarray(rng.random((20, 30)).astype("f4") * 300)),
    ]
    for path in files:
        got = load_rgb(path)
        np.testing.assert_array_equal(got, np.asarray(load_image(path)), err_msg=path.name)
    assert load_rgb(files[0]).shape == (30, 20, 3)  # rotated by its EXIF tag


def test_bad_input(exported: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        OnnxSegmenter(tmp_path / "missing.onnx")
    cfg, model, _ = spread_model(seed=1)
    raw = export_onnx(model, tmp_path / "raw.onnx", height=64, width=64, cfg=cfg)
    with pytest.raises(ValueError, match="end-to-end"):
        OnnxSegmenter(raw)
    segmenter = OnnxSegmenter(exported)
    with pytest.raises(ValueError, match="uint8"):
        segmenter(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match="H x W x 3"):
        segmenter(np.zeros((10, 10), np.uint8))
    with pytest.raises(FileNotFoundError, match="nope.png"):
        segmenter(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.png"):
        segmenter(tmp_path / "bad.png")
