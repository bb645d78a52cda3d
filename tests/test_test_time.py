"""The test-time refinements (`modeling/test_time.py`): flip augmentation merged on the dense
outputs, checked by mirror symmetry of the whole prediction and against a naive merge written
here; mask rescoring against a loop; both in `--preset auto`, the time budget and the export."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.models import boxy_model, shapes_images

from blendmask.modeling.inference_step import infer
from blendmask.modeling.postprocess import attentions_at
from blendmask.modeling.test_time import (
    flip_views,
    flipped_input,
    grid_mirror,
    merge_views,
    rescored,
)
from blendmask.structures import ImageBatch
from blendmask.training.budget import TimeBudget


def _image(seed: int = 0) -> torch.Tensor:
    """A (1, 3, 64, 96) shapes image: both sides multiples of 32, so nothing is padded."""
    pixels = torch.from_numpy(shapes_images(1, seed=seed)[0]).permute(2, 0, 1).float() / 255
    return torch.nn.functional.interpolate(pixels[None], size=(64, 96), mode="bilinear")


def _predict(model, post, image: torch.Tensor):
    h, w = image.shape[-2:]
    return infer(model, post, ImageBatch(image, [(h, w)]), [(h, w)])[0]


def _mirror_boxes(boxes: torch.Tensor, dims: tuple[int, ...], h: int, w: int) -> torch.Tensor:
    x1, y1, x2, y2 = boxes.unbind(1)
    if -1 in dims:
        x1, x2 = w - x2, w - x1
    if -2 in dims:
        y1, y2 = h - y2, h - y1
    return torch.stack([x1, y1, x2, y2], dim=1)


@pytest.mark.parametrize(
    "vflip, mirror", [(False, (-1,)), (True, (-1,)), (True, (-2,)), (True, (-2, -1))]
)
def test_flip_augmented_prediction_of_a_mirrored_image_is_the_mirrored_prediction(
    vflip: bool, mirror: tuple[int, ...]
) -> None:
    """Without padding, the mirrored image's views are the image's views in another order, so
    its merged detections must be the mirror of the image's: this fails if any merged output
    (classes, centerness, box sides, bases, the attention grid or the top layer's kernel) is
    not mapped back. The network alone is not mirror symmetric (checked first)."""
    cfg, model, post = boxy_model()
    image = _image()
    plain = _predict(model, post, image)
    plain_mirror = _predict(model, post, image.flip(mirror))
    same = len(plain.scores) == len(plain_mirror.scores) and torch.allclose(
        plain.scores.sort().values, plain_mirror.scores.sort().values
    )
    assert not same

    post = copy.deepcopy(post)
    post.test_flip, post.test_vflip = True, vflip
    a = _predict(model, post, image)
    b = _predict(model, post, image.flip(mirror))
    assert len(a.scores) >= 20 and len(a.scores) == len(b.scores)
    assert torch.allclose(a.scores, b.scores, atol=1e-5)
    h, w = image.shape[-2:]
    assert torch.allclose(_mirror_boxes(a.boxes, mirror, h, w), b.boxes, atol=1e-3)
    ma, mb = a.masks.flip(mirror), b.masks
    iou = (ma & mb).sum((1, 2)).float() / (ma | mb).sum((1, 2)).clamp(min=1).float()
    assert iou.mean() >= 0.99, iou


def test_flipped_input_is_what_normalising_the_mirrored_batch_gives() -> None:
    """The padding of the mirrored batch (now on the left and top-aligned) must normalise to
    0, as the right-padded batch's does with `image_sizes`."""
    _, model, _ = boxy_model()
    images = torch.zeros(2, 3, 64, 96)
    images[0, :, :50, :70] = torch.rand(3, 50, 70)
    images[1, :, :64, :33] = torch.rand(3, 64, 33)
    sizes = [(50, 70), (64, 33)]
    want = model.normalize(images, sizes).flip(-1)
    got = model.normalize(flipped_input(model, images, sizes, (-1,)))
    assert torch.allclose(got, want, atol=1e-5)
    want = model.normalize(images, sizes).flip((-2, -1))
    got = model.normalize(flipped_input(model, images, sizes, (-2, -1)))
    assert torch.allclose(got, want, atol=1e-5)


def _mirror_points(values: torch.Tensor, shapes: list[tuple[int, int]]) -> torch.Tensor:
    """Naive: values (P, X) with each level's location (y, x) taken from (y, Wl - 1 - x)."""
    out, start = torch.empty_like(values), 0
    for h, w in shapes:
        for y in range(h):
            for x in range(w):
                out[start + y * w + x] = values[start + y * w + (w - 1 - x)]
        start += h * w
    return out


def test_merged_outputs_equal_a_naive_merge_of_both_runs() -> None:
    """Class and centerness probabilities averaged, box sides swapped and averaged, and the
    attention (from the merged towers and top layer) the mean of the run's and the mirrored
    run's (its M x M grid mirrored), all at the mirrored location."""
    cfg, model, _ = boxy_model()
    x = _image(1)
    a = model(x, [(64, 96)], dense_attentions=False, with_sem=False)
    b = model(x.flip(-1), [(64, 96)], dense_attentions=False, with_sem=False)
    dense_a = model(x, [(64, 96)], with_sem=False).attentions[0]
    dense_b = model(x.flip(-1), [(64, 96)], with_sem=False).attentions[0]
    m = cfg.model.blender.attn_size
    merged = merge_views([((), a), ((-1,), b)], m)
    shapes = [tuple(t.shape[-2:]) for t in a.bbox_towers]

    cls_b = _mirror_points(b.cls_logits[0], shapes)
    want_cls = torch.logit((a.cls_logits[0].sigmoid() + cls_b.sigmoid()) / 2)
    assert torch.allclose(merged.cls_logits[0], want_cls, atol=1e-4)
    reg_b = _mirror_points(b.bbox_reg[0], shapes)[:, [2, 1, 0, 3]]
    assert torch.allclose(merged.bbox_reg[0], (a.bbox_reg[0] + reg_b) / 2, atol=1e-5)
    assert torch.allclose(merged.bases, (a.bases + b.bases.flip(-1)) / 2)

    mirrored_b = _mirror_points(dense_b, shapes)
    k = dense_b.shape[1] // (m * m)
    mirrored_b = mirrored_b.view(-1, k, m, m).flip(-1).flatten(1)  # the grid, naively
    assert torch.equal(
        grid_mirror(k * m * m, m), torch.arange(k * m * m).view(k, m, m).flip(-1).flatten()
    )
    points = torch.arange(dense_a.shape[0])
    weight, bias = merged.top_layer_params
    got = attentions_at(merged.bbox_towers, weight, bias, torch.zeros_like(points), points)
    assert torch.allclose(got, (dense_a + mirrored_b) / 2, atol=1e-4)


def test_rescoring_multiplies_by_maskness_and_sorts_again() -> None:
    probs = torch.tensor(
        [
            [[0.6, 0.6], [0.1, 0.2]],  # unsure: maskness 0.6
            [[0.99, 0.95], [0.9, 0.0]],  # sure: (0.99 + 0.95 + 0.9) / 3
            [[0.1, 0.2], [0.3, 0.4]],  # no foreground: maskness 0
        ]
    )
    det = {"scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([0, 1, 2])}
    got, got_probs = rescored(det, probs, 0.5, 2.0)
    want = [0.8 * ((0.99 + 0.95 + 0.9) / 3) ** 2, 0.9 * 0.6**2, 0.0]
    assert torch.allclose(got["scores"], torch.tensor(want))
    assert got["labels"].tolist() == [1, 0, 2]
    assert torch.equal(got_probs, probs[[1, 0, 2]])


def test_views_and_the_budgets_evaluation_reserve() -> None:
    assert flip_views(False, False) == [()]
    assert flip_views(True, False) == [(), (-1,)]
    assert flip_views(True, True) == [(), (-1,), (-2,), (-2, -1)]
    one = TimeBudget(900.0, clock=lambda: 0.0)
    four = TimeBudget(900.0, clock=lambda: 0.0, eval_runs=4)
    assert four.reserve() == pytest.approx(4 * one.reserve())


def test_onnx_export_holds_the_rescoring(tmp_path) -> None:
    """The end-to-end graph rescores and sorts as the post-processor does (flip stays
    PyTorch-only, and the export says so)."""
    pytest.importorskip("onnxruntime")
    from blendmask.export.compare import compare
    from blendmask.export.end_to_end_onnx import export_end_to_end_onnx
    from blendmask.onnx_runtime import OnnxSegmenter
    from blendmask.predictor import Predictor

    cfg, model, post = boxy_model()
    post.mask_score_power = 2.0
    post.test_flip = True
    with pytest.warns(UserWarning, match="test_flip"):
        path = export_end_to_end_onnx(
            model, post, tmp_path / "r.onnx", height=64, width=96, cfg=cfg
        )
    post.test_flip = False
    predictor = Predictor(cfg, model, post, "cpu", score_threshold=None)
    report = compare(lambda im: predictor([im])[0], OnnxSegmenter(path), shapes_images(4))
    assert report.expected >= 40
    assert report.passed(), report.summary()
