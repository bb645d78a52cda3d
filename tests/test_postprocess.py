"""BlendMaskPostProcessor on hand-built outputs: each reference quirk of docs/reference.md §4, §1.8,
§1.9 in its own test."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from blendmask.modeling.blender import merge_bases, pool_bases
from blendmask.modeling.postprocess import BlendMaskPostProcessor, top_k_per_group
from blendmask.structures import BlenderSpec, BlendMaskOutputs
from blendmask.structures.paste import paste_masks

STRIDES = [8, 16, 32]
C, K, M, R = 3, 4, 2, 8
SPEC = BlenderSpec(resolution=R, attn_size=M)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def make_outputs(n: int = 1, padded: tuple[int, int] = (64, 64), seed: int = 0) -> BlendMaskOutputs:
    """Nothing detected (cls logits -20, ctr 1) unless a test sets a location."""
    g = torch.Generator().manual_seed(seed)
    points, point_strides, counts = [], [], []
    for s in STRIDES:
        h, w = math.ceil(padded[0] / s), math.ceil(padded[1] / s)
        ys, xs = torch.meshgrid(
            torch.arange(h) * s + s // 2, torch.arange(w) * s + s // 2, indexing="ij"
        )
        points.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1).float())
        point_strides.append(torch.full((h * w,), float(s)))
        counts.append(h * w)
    p = sum(counts)
    return BlendMaskOutputs(
        cls_logits=torch.full((n, p, C), -20.0),
        bbox_reg=torch.ones(n, p, 4),
        ctrness=torch.full((n, p), 20.0),
        attentions=torch.randn(n, p, K * M * M, generator=g),
        bases=torch.randn(n, K, padded[0] // 4, padded[1] // 4, generator=g) * 3,
        sem_logits=None,
        points=torch.cat(points),
        strides=torch.cat(point_strides),
        num_points_per_level=tuple(counts),
    )


def processor(**kw) -> BlendMaskPostProcessor:
    args = dict(num_classes=C, blender=SPEC)
    args.update(kw)
    return BlendMaskPostProcessor(**args)


def test_threshold_on_cls_times_ctr_before_sqrt_and_sqrt_score() -> None:
    out = make_outputs()
    # location 0: cls * ctr = 0.2 * 0.2 = 0.04 < 0.05 although sqrt = 0.2 > 0.05 -> dropped
    out.cls_logits[0, 0, 1] = logit(0.2)
    out.ctrness[0, 0] = logit(0.2)
    # location 20: 0.3 * 0.2 = 0.06 > 0.05 -> kept with score sqrt(0.06)
    out.cls_logits[0, 20, 2] = logit(0.3)
    out.ctrness[0, 20] = logit(0.2)
    det = processor().detect(out, [(64, 64)])[0]
    assert det["point_inds"].tolist() == [20] and det["labels"].tolist() == [2]
    assert abs(det["scores"].item() - math.sqrt(0.06)) < 1e-6
    # THRESH_WITH_CTR off: the threshold reads cls alone, the score is still sqrt(cls * ctr).
    det = processor(thresh_with_ctr=False).detect(out, [(64, 64)])[0]
    assert sorted(det["point_inds"].tolist()) == [0, 20]
    got = dict(zip(det["point_inds"].tolist(), det["scores"].tolist()))
    assert abs(got[0] - 0.2) < 1e-6 and abs(got[20] - math.sqrt(0.06)) < 1e-6


def test_boxes_decoded_in_stride_units_and_not_clipped_before_pooling() -> None:
    out = make_outputs()
    p = 0  # P3 point (4, 4)
    out.cls_logits[0, p, 0] = 5.0
    out.bbox_reg[0, p] = torch.tensor([2.0, 1.0, 3.0, 4.0])
    post = processor()
    det = post.detect(out, [(64, 64)])[0]
    assert det["boxes"].tolist() == [[4 - 16.0, 4 - 8.0, 4 + 24.0, 4 + 32.0]]
    probs = post.blend(out.bases, [det["boxes"]], [det["attentions"]])[0]
    unclipped = pool_bases(out.bases, [det["boxes"]], SPEC)
    expected = merge_bases(unclipped, out.attentions[0, [p]], SPEC).sigmoid()
    torch.testing.assert_close(probs, expected)
    clipped = pool_bases(out.bases, [det["boxes"].clamp(min=0)], SPEC)
    other = merge_bases(clipped, out.attentions[0, [p]], SPEC).sigmoid()
    assert (probs - other).abs().max() > 1e-3


def test_blend_follows_its_blender_spec() -> None:
    # Fails if the post-processor blends with settings other than the BlenderSpec it was given
    # (another R, the default pooler or interpolation).
    out = make_outputs()
    out.cls_logits[0, 0, 0] = 5.0
    out.bbox_reg[0, 0] = torch.tensor([2.0, 1.0, 3.0, 4.0])
    nearest = BlenderSpec(resolution=6, attn_size=M, pooler_type="ROIPool", top_interp="nearest")
    probs = {}
    for spec in (SPEC, nearest):
        post = processor(blender=spec)
        det = post.detect(out, [(64, 64)])[0]
        probs[spec] = post.blend(out.bases, [det["boxes"]], [det["attentions"]])[0]
        pooled = pool_bases(out.bases, [det["boxes"]], spec)
        expected = merge_bases(pooled, det["attentions"], spec).sigmoid()
        assert probs[spec].shape == (1, spec.resolution, spec.resolution)
        torch.testing.assert_close(probs[spec], expected, rtol=0, atol=0)
    resized = F.interpolate(probs[SPEC][None], size=(6, 6), mode="bilinear", align_corners=False)
    assert (resized[0] - probs[nearest]).abs().max() > 1e-3


def test_boxes_rescaled_clipped_before_pasting() -> None:
    out = make_outputs()
    out.cls_logits[0, 0, 0] = 5.0
    out.bbox_reg[0, 0] = torch.tensor([2.0, 1.0, 3.0, 4.0])  # box (-12, -4, 28, 36)
    post = processor()
    image_size, orig = (60, 50), (120, 150)  # scale y 2, x 3
    det = post(out, [image_size], [orig])[0]
    assert det.boxes.tolist() == [[0.0, 0.0, 84.0, 72.0]]
    raw = post.detect(out, [image_size])[0]
    probs = post.blend(out.bases, [raw["boxes"]], [raw["attentions"]])[0]
    expected = paste_masks(probs, torch.tensor([[0.0, 0.0, 84.0, 72.0]]), orig)
    assert torch.equal(det.masks, expected)
    unclipped = paste_masks(probs, torch.tensor([[-36.0, -8.0, 84.0, 72.0]]), orig)
    assert not torch.equal(det.masks, unclipped)


def test_mask_threshold_is_inclusive() -> None:
    # Zero bases blend to logit 0 = probability 0.5 everywhere: with >= the box fills (with >
    # it would stay empty). The box is R pixels wide so pasting samples exactly 0.5.
    out = make_outputs()
    out = out._replace(bases=torch.zeros_like(out.bases))
    out.cls_logits[0, 9, 0] = 5.0  # P3 point (12, 12), box (8, 8, 16, 16)
    out.bbox_reg[0, 9] = torch.tensor([0.5, 0.5, 0.5, 0.5])
    det = processor()(out, [(64, 64)])[0]
    assert det.boxes.tolist() == [[8.0, 8.0, 16.0, 16.0]]
    assert det.masks[0, 8:16, 8:16].all() and det.masks.sum() == 8 * 8


def test_post_nms_top_k_keeps_ties_like_kthvalue() -> None:
    # 150 equal scores, small disjoint boxes: the kthvalue threshold keeps all 150 (the
    # reference's behaviour); distinct scores keep exactly 100.
    out = make_outputs(padded=(128, 128))
    out.bbox_reg.fill_(0.4)
    out.cls_logits[0, :150, 0] = 2.0
    det = processor().detect(out, [(128, 128)])[0]
    assert len(det["scores"]) == 150
    out.cls_logits[0, :150, 0] = torch.linspace(1.0, 3.0, 150)
    det = processor().detect(out, [(128, 128)])[0]
    assert len(det["scores"]) == 100
    assert det["point_inds"].sort().values.tolist() == list(range(50, 150))
    assert (det["scores"][:-1] >= det["scores"][1:]).all()


def test_pre_nms_top_k_is_per_level() -> None:
    out = make_outputs()
    g = torch.Generator().manual_seed(1)
    out.cls_logits.copy_(torch.randn(out.cls_logits.shape, generator=g) + 1)
    k = 5
    # NMS and the final top-k off, so every survivor of the per-level top-k shows.
    det = processor(pre_nms_topk=k, nms_thresh=1.0, post_nms_topk=0).detect(out, [(64, 64)])[0]
    scores = out.cls_logits[0].sigmoid()  # ctr = 1
    start = 0
    for level, count in enumerate(out.num_points_per_level):
        sel = det["levels"] == level
        level_scores = scores[start : start + count].reshape(-1)
        num_candidates = int((level_scores > 0.05).sum())
        assert int(sel.sum()) == min(k, num_candidates)
        expected = level_scores.topk(min(k, num_candidates)).values.sqrt()
        torch.testing.assert_close(det["scores"][sel].sort(descending=True).values, expected)
        start += count
    assert out.num_points_per_level[0] * C > k  # the test needs more candidates than k


def test_top_k_per_group() -> None:
    scores = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.3, 0.8])
    groups = torch.tensor([1, 0, 1, 1, 0, 0])
    assert top_k_per_group(scores, groups, 2).tolist() == [1, 5, 3, 2]


def test_batch_of_different_sizes_gives_masks_at_each_original_size() -> None:
    out = make_outputs(n=2)
    out.cls_logits[:, 9, 1] = 5.0
    out.cls_logits[1, 30, 2] = 5.0
    sizes, origs = [(64, 48), (40, 64)], [(128, 96), (30, 50)]
    dets = processor()(out, sizes, origs)
    assert [len(d) for d in dets] == [1, 2]
    for d, (h0, w0) in zip(dets, origs):
        assert d.masks.shape == (len(d), h0, w0) and d.masks.dtype == torch.bool
        assert (d.boxes[:, 0::2] <= w0).all() and (d.boxes[:, 1::2] <= h0).all()
        assert d.masks.any()
    # default: original size = resized size
    dets = processor()(out, sizes)
    assert [tuple(d.masks.shape[1:]) for d in dets] == sizes


def test_empty_detections_have_the_right_shapes_and_dtypes() -> None:
    out = make_outputs(n=2)
    dets = processor()(out, [(64, 64), (50, 40)], [(100, 80), (25, 20)])
    for d, (h0, w0) in zip(dets, [(100, 80), (25, 20)]):
        assert len(d) == 0
        assert d.boxes.shape == (0, 4) and d.boxes.dtype == torch.float32
        assert d.scores.shape == (0,) and d.scores.dtype == torch.float32
        assert d.labels.shape == (0,) and d.labels.dtype == torch.int64
        assert d.masks.shape == (0, h0, w0) and d.masks.dtype == torch.bool


def test_detection_in_the_padding_is_dropped() -> None:
    # A detection from a point in the padding (x = 52 beyond the image width 32) has a box that
    # is empty once clipped to the image, and is dropped.
    out = make_outputs()
    p = 8 + 6  # P3 row 1, col 6 -> (52, 12)
    assert out.points[p].tolist() == [52.0, 12.0]
    out.cls_logits[0, p, 0] = 5.0
    out.bbox_reg[0, p] = torch.tensor([0.5, 0.5, 0.5, 0.5])
    dets = processor()(out, [(64, 32)])
    assert len(dets[0]) == 0 and dets[0].masks.shape == (0, 64, 32)
