"""Tests of the blender explanation figure (`blendmask explain`): PNG output with and without
detections, the attention maps shown (softmax over K), consistency with the real blender (K > 1
and K = 1), CLI.

Tiny preset at random init; the post-processor's score threshold is lowered to 0 where
detections are needed (at the reference init every score is ~0.01 < 0.05).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from blendmask.checkpoint_io import save_model_file
from blendmask.explain import (
    draw_explanation,
    explain_figure,
    explain_image,
    save_explanation,
)
from blendmask.predictor import Predictor
from blendmask.presets import get_preset

# Slow: every test predicts and draws figures (`pytest -m "not slow"` leaves them out).
pytestmark = pytest.mark.slow

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.manual_seed(0)
    pred = Predictor.from_config(get_preset("tiny"), device="cpu")
    pred.postprocessor.score_thresh = 0.0
    return pred


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    # 50 x 70 resizes to 64 x 90 inside a 64 x 96 padded input.
    return torch.rand(3, 50, 70, generator=torch.Generator().manual_seed(1))


def test_attention_maps_shown_sum_to_one_over_bases(predictor: Predictor, image) -> None:
    """Fails if the figure shows raw logits or a softmax over the wrong axis (Eq. 3: the K
    attentions of a detection sum to 1 at every pixel), or if detection rows are missing."""
    num_bases = predictor.cfg.model.basis_module.num_bases
    assert num_bases > 1
    fig = explain_figure(predictor, image, top=3)
    shown: dict[int, dict[int, torch.Tensor]] = {}
    for ax in fig.axes:
        if ax.get_label().startswith("attention/"):
            _, det, base = ax.get_label().split("/")
            shown.setdefault(int(det), {})[int(base)] = torch.as_tensor(ax.images[0].get_array())
    assert sorted(shown) == [0, 1, 2]
    r = predictor.postprocessor.blender.resolution
    for maps in shown.values():
        assert sorted(maps) == list(range(num_bases))
        stack = torch.stack([maps[k] for k in range(num_bases)]).double()
        assert stack.shape == (num_bases, r, r)
        assert bool((stack >= 0).all())
        torch.testing.assert_close(stack.sum(0), torch.ones(r, r, dtype=torch.float64))
        # and not a constant 1/K: the maps carry the detection's attention
        assert float(stack.std()) > 1e-4


def test_explanation_recomposes_the_blenders_masks(predictor: Predictor, image) -> None:
    """Fails if the shown attentions or crops are not what the blender uses: Eq. 4 applied
    to them by hand must give the post-processor's blended masks."""
    expl = explain_image(predictor, image, top=4)
    assert expl.boxes.shape[0] == 4
    # sum_k attention_k * cropped_base_k, written as a loop over k
    logits = torch.zeros_like(expl.masks)
    for k in range(expl.attention_weights.shape[1]):
        logits += expl.attention_weights[:, k] * expl.pooled_bases[:, k]
    torch.testing.assert_close(logits.sigmoid(), expl.masks, rtol=0, atol=1e-5)
    # the bases shown are the image's part of the padded bases: ceil(64 / 4) x ceil(90 / 4)
    assert expl.bases.shape[1:] == (16, 23)
    assert torch.equal(expl.scores, expl.scores.sort(descending=True).values)
    assert len(expl.detections) <= 4
    assert expl.detections.masks.shape[1:] == image.shape[1:]


def test_explanation_follows_predict_with_rescoring_and_flip(image) -> None:
    """An auto model rescores by maskness, which reorders the detections, and predicts the
    mirrored image too: fails if the explained detections are not the predicted ones, row by
    row (scores, masks), or if the explanation runs the network on the image alone."""
    torch.manual_seed(0)
    pred = Predictor.from_config(get_preset("tiny"), device="cpu", score_threshold=0.0)
    with torch.no_grad():  # boxes of a few pixels: none is emptied by clipping
        pred.model.head.bbox_pred.bias.fill_(1.0)
    post = pred.postprocessor
    post.score_thresh, post.mask_score_power, post.test_flip = 0.0, 2.0, True
    expl = explain_image(pred, image, top=6)
    final = pred.predict_tensors([image])[0]
    assert len(expl.detections) == len(expl.scores) == 6
    torch.testing.assert_close(expl.scores, expl.detections.scores)
    torch.testing.assert_close(expl.detections.scores, final.scores[:6])
    torch.testing.assert_close(expl.masks, expl.detections.mask_probs.float(), rtol=0, atol=1e-5)
    post.test_flip = False  # the image alone predicts other scores: the flip was used above
    assert not torch.allclose(explain_image(pred, image, top=6).scores, expl.scores)


def test_explanation_with_one_base_shows_the_sigmoid_blend(image) -> None:
    """K = 1 blends sigmoid(attention) * sigmoid(base) (no softmax): fails if the figure shows
    a softmax over one base (all ones) or the masks are not that product."""
    cfg = get_preset("tiny")
    cfg.model.basis_module.num_bases = 1
    torch.manual_seed(0)
    pred = Predictor.from_config(cfg, device="cpu")
    pred.postprocessor.score_thresh = 0.0
    expl = explain_image(pred, image, top=2)
    assert expl.attention_weights.shape[:2] == (2, 1)
    weights = expl.attention_weights[:, 0]
    assert bool(((weights > 0) & (weights < 1)).all()) and float(weights.std()) > 1e-4
    expected = weights * expl.pooled_bases[:, 0].sigmoid()
    torch.testing.assert_close(expl.masks, expected, rtol=0, atol=1e-5)


def test_save_explanation_writes_png(predictor: Predictor, image, tmp_path: Path) -> None:
    from PIL import Image

    out = save_explanation(predictor, image, tmp_path / "sub" / "explain.png", top=2)
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(out) as png:
        with_dets = png.size
    assert with_dets[0] > 300 and with_dets[1] > 200

    # No detection passes: the figure still shows the image and the bases, one row only.
    threshold = predictor.postprocessor.score_thresh
    predictor.postprocessor.score_thresh = 1.1
    try:
        expl = explain_image(predictor, image)
        assert expl.boxes.shape == (0, 4) and len(expl.detections) == 0
        fig = draw_explanation(expl)
        assert any(ax.get_title() == "no detections" for ax in fig.axes)
        empty = save_explanation(predictor, image, tmp_path / "empty.png")
    finally:
        predictor.postprocessor.score_thresh = threshold
    assert empty.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(empty) as png:
        assert png.size[1] < with_dets[1]


def test_explain_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`blendmask explain --weights W IMAGE --out PNG` from a model file (random weights: at the
    default threshold there may be no detection, which must not fail)."""
    from PIL import Image

    from blendmask.cli import main

    torch.manual_seed(0)
    pred = Predictor.from_config(get_preset("tiny"), device="cpu")
    weights = tmp_path / "model.pt"
    save_model_file(weights, pred.cfg, pred.model)
    image_path = tmp_path / "image.png"
    Image.new("RGB", (70, 50), (120, 30, 200)).save(image_path)
    out = tmp_path / "explain.png"
    argv = ["explain", "--weights", str(weights), str(image_path), "--out", str(out)]
    assert main([*argv, "--top", "2", "--device", "cpu"]) == 0
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    assert str(out) in capsys.readouterr().out
    # a missing image is bad input: exit code 2 with the file named
    assert main([*argv[:3], str(tmp_path / "nope.png"), *argv[4:]]) == 2
    assert "nope.png" in capsys.readouterr().err


def test_figure_has_colour_bars_and_a_large_detections_panel(predictor: Predictor, image) -> None:
    """Fails if the colour bars go (one per base, shared with its crops; one for the
    attentions; one for the blended masks) or the detections panel shrinks back to the size
    of a map."""
    num_bases = predictor.cfg.model.basis_module.num_bases
    fig = explain_figure(predictor, image, top=2)
    with_bars = [im for ax in fig.axes for im in ax.images if im.colorbar is not None]
    assert len(with_bars) == num_bases + 2
    cmaps = sorted(im.get_cmap().name for im in with_bars)
    assert cmaps == sorted(["RdBu_r"] * num_bases + ["viridis", "gray"])
    fig.canvas.draw()
    (panel,) = [ax for ax in fig.axes if ax.get_title() == "detections"]
    attention = next(ax for ax in fig.axes if ax.get_label() == "attention/0/0")
    # the drawn image sizes (axes keep the image's aspect)
    assert panel.get_window_extent().height > 2 * attention.get_window_extent().height
