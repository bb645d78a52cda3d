"""Reference quirks (docs/reference.md §1.2-1.9, 4, 8) that decide whether imported AdelaiDet
weights give AdelaiDet's outputs, each pinned by a small test written from the reference's maths.

Where each quirk is tested (this file unless a file is named):

| quirk | test |
|---|---|
| stride on the 1x1 conv (MSRA), FrozenBN maths | test_msra_block_puts_the_stride_on_the_1x1_conv; test_network.py::test_stride_in_1x1_and_freeze_at |
| DCNv2 offset layout / modulation (dcni3) | test_dcn_block_matches_naive_modulated_deformable_conv; test_network.py::test_dcn_block_with_zero_offsets_is_half_the_plain_conv |
| BGR, 0-255, MSRA mean, std 1 | test_network.py::test_normalisation_bgr_255_and_zeroed_padding |
| padding is 0 after normalisation | test_predictor_pads_with_zero_after_normalisation; test_network.py::test_normalisation_bgr_255_and_zeroed_padding |
| P6 from P5, ReLU before P7, nearest x2 top-down | test_network.py::test_fpn_top_down_and_p6_from_p5_relu_before_p7 |
| ctrness and top layer on the bbox tower, per-level BN | test_network.py::test_top_layer_reads_bbox_tower_in_network, ::test_shared_tower_with_bn_per_level_feeds_top_layer |
| regression ReLU (no exp), times the stride at inference | test_network.py::test_shared_tower_with_bn_per_level_feeds_top_layer; test_postprocess.py::test_boxes_decoded_in_stride_units_and_not_clipped_before_pooling |
| points at (j*s + s//2, i*s + s//2) | test_network.py::test_points_match_double_loop |
| basis: sum at P3, bilinear align_corners=False, x2, stride 4 | test_network.py::test_protonet_sums_at_p3_and_bases_at_stride_4 |
| threshold on cls*ctr before the sqrt, score sqrt(cls*ctr) | test_postprocess.py::test_threshold_on_cls_times_ctr_before_sqrt_and_sqrt_score |
| pre-NMS top-k per level, class-aware NMS 0.6 | test_postprocess.py::test_pre_nms_top_k_is_per_level; test_postprocessor_matches_adelaidet_inference_written_out |
| kthvalue top-100 (ties keep more) | test_postprocess.py::test_post_nms_top_k_keeps_ties_like_kthvalue |
| unclipped boxes before RoI pooling | test_postprocess.py::test_boxes_decoded_in_stride_units_and_not_clipped_before_pooling |
| RoIAlignV2 (aligned=True, sampling 1, 1/4) | test_blender.py::test_pool_bases_roialignv2_convention |
| attention resized bilinearly (align_corners=False), then softmax over K | test_blender.py::test_merge_bases_matches_naive_loop |
| boxes rescaled and clipped before pasting, empty dropped | test_postprocess.py::test_boxes_rescaled_clipped_before_pasting, ::test_detection_in_the_padding_is_dropped |
| pasting: grid_sample at pixel centres, `>= 0.5` | test_blender.py::test_paste_full_box_of_ones_fills_exactly_the_box, ::test_paste_threshold_is_inclusive; test_postprocess.py::test_mask_threshold_is_inclusive |
| all of post-processing together | test_postprocessor_matches_adelaidet_inference_written_out |
| the whole network on AdelaiDet names | test_adelaidet.py::test_checkpoint_lands_and_network_equals_adelaidet_forward |
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.resnet import Bottleneck
from torchvision.ops import FrozenBatchNorm2d, batched_nms, roi_align

from blendmask.modeling.backbone import DeformBottleneck, ResNetBody
from blendmask.modeling.postprocess import BlendMaskPostProcessor
from blendmask.predictor import Predictor
from blendmask.presets import get_preset
from blendmask.structures import BlenderSpec, BlendMaskOutputs


def _randomise_frozen_bn(module: torch.nn.Module, g: torch.Generator) -> None:
    for m in module.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def _frozen_bn(x: Tensor, bn: FrozenBatchNorm2d) -> Tensor:
    """detectron2 FrozenBatchNorm2d: x * w / sqrt(rv + 1e-5) + (b - rm * w / sqrt(rv + 1e-5))."""
    scale = bn.weight * (bn.running_var + 1e-5).rsqrt()
    shift = bn.bias - bn.running_mean * scale
    return x * scale[None, :, None, None] + shift[None, :, None, None]


@torch.no_grad()
def test_msra_block_puts_the_stride_on_the_1x1_conv():
    """detectron2 BottleneckBlock with STRIDE_IN_1X1 (MSRA weights, docs/reference.md §1.3): block 0 of
    res3-res5 strides its first 1x1 conv, not the 3x3 (torchvision's placement), and FrozenBN
    uses eps 1e-5. Fails if the body keeps torchvision's placement or another norm formula."""
    g = torch.Generator().manual_seed(0)
    body = ResNetBody(depth=50, norm="FrozenBN", stride_in_1x1=True)
    block = body.layer2[0]  # res3.0: 256 -> 512, width 128, stride 2
    _randomise_frozen_bn(block, g)
    x = torch.randn(1, 256, 10, 14, generator=g)

    def detectron2_block(stride_1x1: int, stride_3x3: int) -> Tensor:
        y = F.relu(_frozen_bn(F.conv2d(x, block.conv1.weight, stride=stride_1x1), block.bn1))
        y = F.conv2d(y, block.conv2.weight, stride=stride_3x3, padding=1)
        y = F.relu(_frozen_bn(y, block.bn2))
        y = _frozen_bn(F.conv2d(y, block.conv3.weight), block.bn3)
        shortcut = _frozen_bn(F.conv2d(x, block.downsample[0].weight, stride=2), block.downsample[1])  # fmt: skip
        return F.relu(y + shortcut)

    got = block(x)
    assert got.shape == (1, 512, 5, 7)
    torch.testing.assert_close(got, detectron2_block(2, 1), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, detectron2_block(1, 2), atol=1e-3)


def _bilinear_zero_outside(img: Tensor, h: float, w: float) -> Tensor:
    """detectron2's deformable im2col sampling of all channels at (h, w): zero if the point is
    at or beyond one pixel outside the map, corners outside the map count as zero."""
    channels, height, width = img.shape
    out = torch.zeros(channels, dtype=img.dtype)
    if h <= -1 or h >= height or w <= -1 or w >= width:
        return out
    h0, w0 = math.floor(h), math.floor(w)
    lh, lw = h - h0, w - w0
    for yy, xx, weight in (
        (h0, w0, (1 - lh) * (1 - lw)),
        (h0, w0 + 1, (1 - lh) * lw),
        (h0 + 1, w0, lh * (1 - lw)),
        (h0 + 1, w0 + 1, lh * lw),
    ):
        if 0 <= yy < height and 0 <= xx < width:
            out += weight * img[:, yy, xx]
    return out


@torch.no_grad()
def test_dcn_block_matches_naive_modulated_deformable_conv():
    """dcni3 blocks (docs/reference.md §1.3): the 27 channels of conv2_offset are chunked 3 x 9; offset =
    chunks 0-1 laid out as (dy, dx) per kernel tap, mask = sigmoid(chunk 2); the 3x3 (stride 1,
    pad 1) samples bilinearly at tap + offset, zero outside. Fails on a swapped (dx, dy) order,
    another tap order, a missing sigmoid or sampling that is not zero outside the map."""
    g = torch.Generator().manual_seed(1)
    plain = Bottleneck(16, 4, norm_layer=FrozenBatchNorm2d).double()
    _randomise_frozen_bn(plain, g)
    block = DeformBottleneck(copy.deepcopy(plain)).double()
    block.conv2_offset.weight.copy_(torch.randn(27, 4, 3, 3, generator=g, dtype=torch.float64) * 0.4)  # fmt: skip
    block.conv2_offset.bias.copy_(torch.randn(27, generator=g, dtype=torch.float64))
    x = torch.randn(1, 16, 5, 6, generator=g, dtype=torch.float64)

    y = F.relu(block.bn1(block.conv1(x)))
    offset_mask = block.conv2_offset(y)[0]  # (27, H, W)
    weight = block.conv2.weight  # (Cout, Cin, 3, 3)
    _, height, width = offset_mask.shape
    sampled = torch.zeros(weight.shape[1], 9, height, width, dtype=torch.float64)
    for i in range(height):
        for j in range(width):
            for k in range(9):
                ki, kj = divmod(k, 3)
                dy, dx = offset_mask[2 * k, i, j].item(), offset_mask[2 * k + 1, i, j].item()
                mask = torch.sigmoid(offset_mask[18 + k, i, j]).item()
                value = _bilinear_zero_outside(y[0], i - 1 + ki + dy, j - 1 + kj + dx)
                sampled[:, k, i, j] = mask * value
    conv2 = torch.einsum("ock,ckhw->ohw", weight.reshape(*weight.shape[:2], 9), sampled)[None]
    out = F.relu(block.bn2(conv2))
    want = F.relu(block.bn3(block.conv3(out)) + x)
    assert (offset_mask[:18].abs() > 0.5).any()  # real, fractional, partly outside offsets
    torch.testing.assert_close(block(x), want, rtol=1e-9, atol=1e-9)


@torch.no_grad()
def test_predictor_pads_with_zero_after_normalisation():
    """ImageList.from_tensors pads with 0 after (x - mean) / std (docs/reference.md §1.1, §8 quirk 8): the
    backbone sees zeros in the padding, not -mean / std. Fails if the Predictor stops passing
    the image sizes to the network."""
    cfg = get_preset("tiny")
    cfg.data.min_size_test, cfg.data.max_size_test = 64, 96
    cfg.model.input_format, cfg.model.input_scale = "BGR", 255.0
    cfg.model.pixel_mean, cfg.model.pixel_std = [103.53, 116.28, 123.675], [1.0, 1.0, 1.0]
    predictor = Predictor.from_config(cfg, device="cpu")
    seen: list[Tensor] = []
    predictor.model.body.register_forward_pre_hook(lambda m, i: seen.append(i[0]))
    predictor([torch.rand(3, 40, 70)])
    # 40 x 70 -> short side 64 would make the long side 112 > 96: scale 96/70 -> 55 x 96,
    # padded to 64 x 96.
    (x,) = seen
    assert x.shape == (1, 3, 64, 96)
    assert (x[:, :, 55:] == 0).all()
    assert (x[:, :, :55] != 0).float().mean() > 0.99


def adelaidet_inference(
    out: BlendMaskOutputs,
    image_size: tuple[int, int],
    orig_size: tuple[int, int],
    *,
    pre_nms_thresh: float,
    pre_nms_top_n: int,
    nms_thresh: float,
    post_nms_top_n: int,
    attn_size: int,
    resolution: int,
) -> dict[str, Tensor]:
    """One image through AdelaiDet's inference, written out from docs/reference.md §4, 1.8, 1.9:
    FCOSOutputs.forward_for_single_feature_map (THRESH_WITH_CTR) per level,
    select_over_all_levels (ml_nms, kthvalue), Blender (ROIAlignV2 on unclipped boxes,
    merge_bases) and detector_postprocess (scale, clip, nonempty, paste_masks_in_image)."""
    boxes_l, scores_l, labels_l, attns_l = [], [], [], []
    start = 0
    for count in out.num_points_per_level:
        sl = slice(start, start + count)
        start += count
        logits = out.cls_logits[0, sl].sigmoid()  # (HW, C)
        ctrness = out.ctrness[0, sl].sigmoid()  # (HW,)
        logits = logits * ctrness[:, None]  # thresh_with_ctr
        candidate_inds = logits > pre_nms_thresh
        top_n = min(int(candidate_inds.sum()), pre_nms_top_n)
        per_box_cls = logits[candidate_inds]
        nonzeros = candidate_inds.nonzero()
        if int(candidate_inds.sum()) > top_n:
            per_box_cls, top_k = per_box_cls.topk(top_n, sorted=False)
            nonzeros = nonzeros[top_k]
        loc, label = nonzeros[:, 0], nonzeros[:, 1]
        reg = out.bbox_reg[0, sl][loc] * out.strides[sl][loc, None]
        xy = out.points[sl][loc]
        boxes_l.append(torch.stack([xy[:, 0] - reg[:, 0], xy[:, 1] - reg[:, 1], xy[:, 0] + reg[:, 2], xy[:, 1] + reg[:, 3]], dim=1))  # fmt: skip
        scores_l.append(torch.sqrt(per_box_cls))
        labels_l.append(label)
        attns_l.append(out.attentions[0, sl][loc])
    boxes, scores = torch.cat(boxes_l), torch.cat(scores_l)
    labels, attentions = torch.cat(labels_l), torch.cat(attns_l)
    keep = batched_nms(boxes, scores, labels, nms_thresh)  # ml_nms
    boxes, scores, labels, attentions = boxes[keep], scores[keep], labels[keep], attentions[keep]
    if len(scores) > post_nms_top_n > 0:
        image_thresh, _ = torch.kthvalue(scores.cpu(), len(scores) - post_nms_top_n + 1)
        keep = torch.nonzero(scores >= image_thresh.item()).squeeze(1)
        boxes, scores, labels, attentions = (
            boxes[keep],
            scores[keep],
            labels[keep],
            attentions[keep],
        )
    # Blender: pool with the unclipped boxes, attention resized then softmax over K.
    rois = torch.cat([torch.zeros(len(boxes), 1), boxes], dim=1)
    pooled = roi_align(out.bases, rois, resolution, 0.25, 1, aligned=True)
    coeffs = attentions.view(len(boxes), -1, attn_size, attn_size)
    coeffs = F.interpolate(coeffs, (resolution, resolution), mode="bilinear", align_corners=False)
    masks = (pooled * coeffs.softmax(dim=1)).sum(dim=1).sigmoid()
    # detector_postprocess
    (h, w), (out_h, out_w) = image_size, orig_size
    boxes = boxes.clone()
    boxes[:, 0::2] *= out_w / w
    boxes[:, 1::2] *= out_h / h
    boxes[:, 0::2] = boxes[:, 0::2].clamp(min=0, max=out_w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(min=0, max=out_h)
    nonempty = (boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)
    boxes, scores, labels, masks = boxes[nonempty], scores[nonempty], labels[nonempty], masks[nonempty]  # fmt: skip
    # paste_masks_in_image (_do_paste_mask over the whole image, the GPU path)
    img_y = torch.arange(out_h, dtype=torch.float32) + 0.5
    img_x = torch.arange(out_w, dtype=torch.float32) + 0.5
    x0, y0, x1, y1 = boxes.split(1, dim=1)
    gy = (img_y[None] - y0) / (y1 - y0) * 2 - 1  # (D, H0)
    gx = (img_x[None] - x0) / (x1 - x0) * 2 - 1  # (D, W0)
    grid = torch.stack([gx[:, None, :].expand(-1, out_h, -1), gy[:, :, None].expand(-1, -1, out_w)], dim=3)  # fmt: skip
    soft = F.grid_sample(masks[:, None], grid, align_corners=False)[:, 0]
    return {"boxes": boxes, "scores": scores, "labels": labels, "masks": soft >= 0.5, "soft": soft}


def test_postprocessor_matches_adelaidet_inference_written_out():
    """Boxes, scores, labels and pasted masks of our post-processor equal AdelaiDet's inference
    path written out step by step, on outputs where every step matters: more candidates than
    the per-level top-k, overlapping boxes for NMS, more survivors than the final top-k, boxes
    beyond the image (pooled unclipped, pasted clipped) and a resized image."""
    g = torch.Generator().manual_seed(0)
    strides, padded, image_size, orig_size = [8, 16, 32, 64, 128], (64, 96), (60, 90), (90, 120)
    num_classes, k, m, r = 3, 4, 4, 16
    points, point_strides, counts = [], [], []
    for s in strides:
        h, w = math.ceil(padded[0] / s), math.ceil(padded[1] / s)
        ys, xs = torch.meshgrid(torch.arange(h) * s + s // 2, torch.arange(w) * s + s // 2, indexing="ij")  # fmt: skip
        points.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1).float())
        point_strides.append(torch.full((h * w,), float(s)))
        counts.append(h * w)
    p = sum(counts)
    out = BlendMaskOutputs(
        cls_logits=torch.randn(1, p, num_classes, generator=g) * 1.5,
        bbox_reg=torch.rand(1, p, 4, generator=g) * 2.0,
        ctrness=torch.randn(1, p, generator=g),
        attentions=torch.randn(1, p, k * m * m, generator=g) * 2,
        bases=torch.randn(1, k, padded[0] // 4, padded[1] // 4, generator=g) * 3,
        sem_logits=None,
        points=torch.cat(points),
        strides=torch.cat(point_strides),
        num_points_per_level=tuple(counts),
    )
    settings = dict(pre_nms_thresh=0.05, pre_nms_top_n=40, nms_thresh=0.6, post_nms_top_n=30)
    post = BlendMaskPostProcessor(
        num_classes=num_classes,
        score_thresh=settings["pre_nms_thresh"],
        pre_nms_topk=settings["pre_nms_top_n"],
        nms_thresh=settings["nms_thresh"],
        post_nms_topk=settings["post_nms_top_n"],
        blender=BlenderSpec(resolution=r, attn_size=m),
    )
    ours = post(out, [image_size], [orig_size])[0]
    want = adelaidet_inference(out, image_size, orig_size, **settings, attn_size=m, resolution=r)
    # The case exercises what it claims to.
    cls_ctr = out.cls_logits[0].sigmoid() * out.ctrness[0, :, None].sigmoid()
    assert int((cls_ctr[: counts[0]] > 0.05).sum()) > settings["pre_nms_top_n"]
    detected = post.detect(out, [image_size])[0]
    assert len(detected["scores"]) == settings["post_nms_top_n"]
    assert (detected["boxes"][:, 2] > image_size[1]).any() and (detected["boxes"][:, :2] < 0).any()

    assert len(ours) == len(want["scores"]) > 0
    torch.testing.assert_close(ours.scores, want["scores"])
    torch.testing.assert_close(ours.boxes, want["boxes"])
    assert torch.equal(ours.labels, want["labels"])
    assert ours.masks.shape == (len(ours), *orig_size)
    # Pasting is the same bilinear maths computed separably (two matmuls instead of
    # grid_sample): only a pixel whose probability is within float rounding of 0.5 may flip.
    differ = ours.masks != want["masks"]
    assert ((want["soft"][differ] - 0.5).abs() < 1e-5).all()
    # Random weights leave plateaus of exactly 0.5 (boxes outside the bases pool zeros) where
    # either implementation's rounding decides; nothing else may differ.
    assert int(differ.sum()) < 0.01 * ours.masks.sum()
