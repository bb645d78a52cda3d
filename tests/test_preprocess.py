"""The one preprocessing path (data/preprocess.py): the reference's resize, padding, float
conversion, and the same batch for every kind of image input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.reference import reference_resize
from PIL import Image

from blendmask.data.preprocess import preprocess, to_image_tensor
from blendmask.data.transforms import ResizeShortestEdge, resize_image


def photo() -> np.ndarray:
    """A natural photo when scikit-image's test data is there, a textured image otherwise."""
    try:
        from skimage import data

        return data.coffee()  # 400 x 600 x 3 uint8
    except ImportError:
        rng = np.random.default_rng(0)
        base = rng.integers(0, 256, (25, 38, 3), dtype=np.uint8)
        return np.array(Image.fromarray(base).resize((600, 400), Image.BICUBIC))


@pytest.mark.parametrize("sizes", [(800, 1333), (300, 1000), (1000, 1100)])
def test_uint8_resize_is_the_references_pil_bilinear(sizes):
    """Fails if the test-time resize differs from the reference's by even one grey level (an
    antialiased torch resize differs on ~1% of the pixels, which moves detections)."""
    array = photo()
    got = resize_image(torch.from_numpy(array).permute(2, 0, 1), *sizes)
    assert got.dtype == torch.uint8
    assert np.array_equal(got.permute(1, 2, 0).numpy(), reference_resize(array, *sizes))


def test_training_resize_is_the_same_resize():
    """Fails if training resizes images differently from inference."""
    array = photo()
    image = torch.from_numpy(array).permute(2, 0, 1)
    target = {
        "boxes": torch.tensor([[10.0, 20.0, 100.0, 200.0]]),
        "labels": torch.tensor([0]),
        "masks": torch.zeros((1, *array.shape[:2]), dtype=torch.uint8),
    }
    out, out_target = ResizeShortestEdge(800, 1333)(image, target)
    assert np.array_equal(out.permute(1, 2, 0).numpy(), reference_resize(array, 800, 1333))
    assert torch.allclose(out_target["boxes"], torch.tensor([[20.0, 40.0, 200.0, 400.0]]))


def test_preprocess_pads_converts_and_keeps_original_sizes():
    array = photo()
    batch, orig = preprocess([array, array[:300]], 200, 1000)
    assert orig == [(400, 600), (300, 600)]
    assert batch.image_sizes == [(200, 300), (200, 400)]
    assert batch.tensor.dtype == torch.float32 and batch.tensor.shape == (2, 3, 224, 416)
    expected = torch.from_numpy(reference_resize(array, 200, 1000)).permute(2, 0, 1) / 255.0
    assert torch.equal(batch.tensor[0, :, :200, :300], expected)
    assert (
        batch.tensor[0, :, 200:].abs().sum() == 0 and batch.tensor[0, :, :, 300:].abs().sum() == 0
    )


def test_every_input_kind_gives_the_same_batch(tmp_path):
    """Fails if a path, a PIL image, an array and a uint8 tensor of the same pixels are
    preprocessed differently (before, tensors took another resize than files)."""
    array = photo()
    path = tmp_path / "photo.png"
    Image.fromarray(array).save(path)
    inputs = [path, str(path), Image.open(path), array, torch.from_numpy(array).permute(2, 0, 1)]
    batches = [preprocess([x], 240, 1000)[0].tensor for x in inputs]
    for other in batches[1:]:
        assert torch.equal(batches[0], other)


def test_float_input_is_taken_as_zero_to_one():
    array = photo()
    as_float = torch.from_numpy(array).permute(2, 0, 1).float() / 255.0
    assert to_image_tensor(as_float).dtype == torch.float32
    batch, _ = preprocess([as_float], 400, 1000)  # no resize: values pass through
    assert torch.equal(batch.tensor[0, :, :400, :600], as_float)
    resized, _ = preprocess([as_float], 200, 1000)
    assert 0.0 <= float(resized.tensor.min()) and float(resized.tensor.max()) <= 1.0


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="H x W x 3"):
        to_image_tensor(np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        to_image_tensor(torch.zeros(1, 4, 4))


def test_predictor_resizes_by_the_configs_fixed_scale():
    """data.test_scale > 0 (the nuclei preset: 3x): every image is resized by that factor,
    whatever its size, in the Predictor, explain and the adapter alike; an explicit min_size
    (or --set data.test_scale=0) brings the shortest-edge rule back."""
    from blendmask.adapter import TorchvisionDetector
    from blendmask.explain import explain_image
    from blendmask.factory import build
    from blendmask.predictor import Predictor, inference_config
    from blendmask.presets import get_preset

    cfg = get_preset("tiny")
    cfg.data.test_scale, cfg.data.max_size_test = 2.0, 1000
    torch.manual_seed(0)
    model, _, post = build(cfg)
    images = [torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8),
              torch.randint(0, 256, (3, 70, 50), dtype=torch.uint8)]  # fmt: skip
    predictor = Predictor(cfg, model, post, "cpu")
    batch, orig_sizes = predictor.preprocess(images)
    assert batch.image_sizes == [(40, 60), (140, 100)] and orig_sizes == [(20, 30), (70, 50)]
    dets = predictor(images)
    assert [d.image_size for d in dets] == [(20, 30), (70, 50)]
    assert explain_image(predictor, images[1], top=2).image.shape[-2:] == (140, 100)
    shortest = Predictor(cfg, model, post, "cpu", min_size=64)
    assert shortest.preprocess(images[:1])[0].image_sizes == [(64, 96)]
    off = inference_config(cfg, ["data.test_scale=0"])
    assert Predictor(off, model, post, "cpu").preprocess(images[:1])[0].image_sizes == [(64, 96)]
    with pytest.raises(ValueError, match="test_scale"):
        inference_config(cfg, ["data.test_scale=-1"])
    assert TorchvisionDetector(config=cfg).test_scale == 2.0
    assert TorchvisionDetector(config=cfg, min_size=64).test_scale == 0.0
