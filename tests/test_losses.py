"""BlendMaskCriterion on hand-built random outputs: values against naive loops, gradients,
empty images, normalisers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss

from blendmask.modeling.blender import merge_bases, pool_bases
from blendmask.modeling.losses import BlendMaskCriterion, compute_ious_ltrb, reduce_mean
from blendmask.modeling.targets import assign_fcos_targets, project_masks_on_boxes
from blendmask.structures import BlenderSpec, BlendMaskOutputs

STRIDES = [8, 16, 32]
SOI = [32, 64]


def make_outputs(
    num_images: int,
    padded: tuple[int, int],
    num_classes: int,
    num_bases: int,
    attn_size: int,
    seed: int = 0,
    sem: bool = True,
) -> BlendMaskOutputs:
    """Random raw outputs with the network's shapes and point layout, all requiring grad."""
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
    n, (hh, ww) = num_images, padded

    def leaf(*shape: int, scale: float = 1.0, offset: float = 0.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale + offset).requires_grad_()

    return BlendMaskOutputs(
        cls_logits=leaf(n, p, num_classes, offset=-2.0),
        bbox_reg=(torch.rand(n, p, 4, generator=g) * 4 + 0.1).requires_grad_(),
        ctrness=leaf(n, p),
        attentions=leaf(n, p, num_bases * attn_size * attn_size),
        bases=leaf(n, num_bases, hh // 4, ww // 4),
        sem_logits=leaf(n, num_classes + 1, hh // 8, ww // 8) if sem else None,
        points=torch.cat(points),
        strides=torch.cat(point_strides),
        num_points_per_level=tuple(counts),
    )


def ellipse_masks(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    ys = torch.arange(size[0])[:, None] + 0.5
    xs = torch.arange(size[1])[None, :] + 0.5
    masks = []
    for x0, y0, x1, y1 in boxes.tolist():
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        masks.append(((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1)
    return torch.stack(masks).to(torch.uint8) if masks else torch.zeros(0, *size, dtype=torch.uint8)


def make_targets(image_sizes, counts, num_classes, seed=1):
    g = torch.Generator().manual_seed(seed)
    targets = []
    for (h, w), num in zip(image_sizes, counts):
        xy0 = torch.rand(num, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = torch.rand(num, 2, generator=g) * torch.tensor([w * 0.4, h * 0.4]) + 6
        boxes = torch.cat([xy0, torch.minimum(xy0 + wh, torch.tensor([float(w), float(h)]))], 1)
        targets.append(
            {
                "boxes": boxes,
                "labels": torch.randint(0, num_classes, (num,), generator=g),
                "masks": ellipse_masks(boxes, (h, w)),
                "image_id": 7,  # ignored
            }
        )
    return targets


def criterion(num_classes: int, *, blender: dict | None = None, **kw) -> BlendMaskCriterion:
    """R = 14, M = 7 unless `blender` (BlenderSpec fields) says otherwise; `kw` for the rest."""
    spec = BlenderSpec(**{"resolution": 14, "attn_size": 7, **(blender or {})})
    return BlendMaskCriterion(num_classes=num_classes, sizes_of_interest=SOI, blender=spec, **kw)


def focal_naive(logit: float, target: float, alpha: float = 0.25, gamma: float = 2.0) -> float:
    p = 1 / (1 + math.exp(-logit))
    if target == 1:
        return -alpha * (1 - p) ** gamma * math.log(p)
    return -(1 - alpha) * p**gamma * math.log(1 - p)


def test_losses_match_naive_loops_with_two_images() -> None:
    # Two images of different sizes: fails if gt indices are not offset per image (the
    # reference's 2020-05 bug), if a normaliser is per image instead of per batch, or if any
    # weighting differs from docs/reference.md §3.2-§3.3.
    c, k, m, r = 3, 4, 7, 14
    padded, sizes = (64, 96), [(64, 96), (50, 70)]
    out = make_outputs(2, padded, c, k, m, seed=3)
    targets = make_targets(sizes, [3, 4], c)
    losses = criterion(c)(out, targets)
    assert set(losses) == {
        "loss_fcos_cls",
        "loss_fcos_loc",
        "loss_fcos_ctr",
        "loss_mask",
        "loss_basis_sem",
    }

    fcos = assign_fcos_targets(
        out.points,
        out.strides,
        out.num_points_per_level,
        [t["boxes"] for t in targets],
        [t["labels"] for t in targets],
        sizes_of_interest=SOI,
        num_classes=c,
    )
    pos = [(i, p) for i in range(2) for p in range(out.points.shape[0]) if fcos.labels[i, p] < c]
    assert len({i for i, _ in pos}) == 2, "both images need positives for this test"
    cls_sum = 0.0
    for i in range(2):
        for p in range(out.points.shape[0]):
            for cl in range(c):
                target = float(fcos.labels[i, p] == cl)
                cls_sum += focal_naive(float(out.cls_logits[i, p, cl].detach()), target)
    torch.testing.assert_close(
        losses["loss_fcos_cls"].item(), cls_sum / len(pos), rtol=1e-4, atol=0
    )

    loc, ctr_bce, mask, ctr_sum = 0.0, 0.0, 0.0, 0.0
    for i, p in pos:
        ctr = float(fcos.ctr_targets[i, p])
        pl, pt, pr, pb = out.bbox_reg[i, p].tolist()
        tl, tt, tr, tb = fcos.reg_targets[i, p].tolist()
        inter = (min(pl, tl) + min(pr, tr)) * (min(pt, tt) + min(pb, tb))
        union = (pl + pr) * (pt + pb) + (tl + tr) * (tt + tb) - inter
        encl = (max(pl, tl) + max(pr, tr)) * (max(pt, tt) + max(pb, tb))
        giou = (inter + 1) / (union + 1) - (encl - union) / encl
        loc += (1 - giou) * ctr
        z = float(out.ctrness[i, p].detach())
        ctr_bce += -(
            ctr * math.log(1 / (1 + math.exp(-z)))
            + (1 - ctr) * math.log(1 - 1 / (1 + math.exp(-z)))
        )
        gi = int(fcos.gt_inds[i, p])
        box = targets[i]["boxes"][gi : gi + 1]
        spec = BlenderSpec(resolution=r, attn_size=m)
        pooled = pool_bases(out.bases[i : i + 1].detach(), [box], spec)
        logits = merge_bases(pooled, out.attentions[i, p][None].detach(), spec)
        tgt = project_masks_on_boxes(targets[i]["masks"][gi : gi + 1], box, r)
        mask += F.binary_cross_entropy_with_logits(logits, tgt).item() * ctr
        ctr_sum += ctr
    torch.testing.assert_close(losses["loss_fcos_loc"].item(), loc / ctr_sum, rtol=1e-4, atol=0)
    torch.testing.assert_close(
        losses["loss_fcos_ctr"].item(), ctr_bce / len(pos), rtol=1e-4, atol=0
    )
    torch.testing.assert_close(losses["loss_mask"].item(), mask / ctr_sum, rtol=1e-4, atol=0)


def test_gradients_reach_every_output() -> None:
    c = 2
    out = make_outputs(2, (64, 64), c, 4, 7, seed=4)
    targets = make_targets([(64, 64), (48, 60)], [2, 1], c)
    losses = criterion(c)(out, targets)
    sum(losses.values()).backward()
    for name in ("cls_logits", "bbox_reg", "ctrness", "attentions", "bases", "sem_logits"):
        grad = getattr(out, name).grad
        assert grad is not None, name
        assert torch.isfinite(grad).all(), name
        assert grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "kw",
    [
        dict(num_bases=1, attn_size=7),
        dict(num_bases=4, attn_size=1),
        dict(num_bases=4, attn_size=2, fixed_onehot=True, top_interp="nearest"),
        dict(num_bases=4, attn_size=7, pooler_type="ROIPool", top_interp="nearest"),
    ],
)
def test_blender_variants_train(kw: dict) -> None:
    # The paper's ablation settings (K = 1, YOLACT M = 1, FCIS, nearest pooling) give finite
    # losses with gradients through the bases.
    c = 2
    num_bases = kw.pop("num_bases")
    out = make_outputs(1, (64, 64), c, num_bases, kw["attn_size"], seed=5)
    losses = criterion(c, blender=kw)(out, make_targets([(64, 64)], [2], c))
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert out.bases.grad.abs().sum() > 0 and out.attentions.grad is not None


def test_empty_images_give_finite_zero_losses_with_gradients() -> None:
    c = 3
    out = make_outputs(2, (64, 64), c, 4, 7, seed=6)
    targets = make_targets([(64, 64), (40, 64)], [0, 0], c)
    losses = criterion(c)(out, targets)
    for name, value in losses.items():
        assert torch.isfinite(value) and value.dim() == 0, name
    assert (
        losses["loss_fcos_loc"] == 0 and losses["loss_fcos_ctr"] == 0 and losses["loss_mask"] == 0
    )
    assert losses["loss_fcos_cls"] > 0 and losses["loss_basis_sem"] > 0
    sum(losses.values()).backward()
    for name in ("cls_logits", "bbox_reg", "ctrness", "attentions", "bases", "sem_logits"):
        grad = getattr(out, name).grad
        assert grad is not None and torch.isfinite(grad).all(), name


def test_one_empty_image_in_batch() -> None:
    c = 3
    out = make_outputs(2, (64, 64), c, 4, 7, seed=7)
    losses = criterion(c)(out, make_targets([(64, 64), (64, 64)], [0, 2], c))
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_mask"] > 0


def test_giou_matches_torchvision_when_smoothing_is_negligible() -> None:
    g = torch.Generator().manual_seed(8)
    pred = torch.rand(50, 4, generator=g) * 300 + 50
    target = torch.rand(50, 4, generator=g) * 300 + 50
    ious, gious = compute_ious_ltrb(pred, target)
    # ltrb around the origin -> xyxy boxes
    to_xyxy = lambda d: torch.stack([-d[:, 0], -d[:, 1], d[:, 2], d[:, 3]], dim=1)  # noqa: E731
    expected = generalized_box_iou_loss(to_xyxy(pred), to_xyxy(target))
    torch.testing.assert_close(1 - gious, expected, atol=1e-4, rtol=0)
    # ...and the reference's smoothing is there: touching tiny boxes, I = 0, U = 1.01, C = 1.21,
    # so IoU = (0 + 1) / (1.01 + 1) instead of 0.
    i_small, g_small = compute_ious_ltrb(
        torch.tensor([[0.1, 0.1, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    )
    assert i_small.item() == pytest.approx(1 / 2.01, abs=1e-6)
    assert g_small.item() == pytest.approx(1 / 2.01 - (1.21 - 1.01) / 1.21, abs=1e-6)


def test_focal_normalised_by_batch_positives() -> None:
    # Losses of two images together equal the summed focal losses / all positives; the mean of
    # the per-image losses differs when the images have different numbers of positives.
    c = 2
    out = make_outputs(2, (64, 64), c, 4, 7, seed=9)
    targets = make_targets([(64, 64), (64, 64)], [1, 4], c)
    crit = criterion(c, sem_loss_on=False)
    both = crit(out, targets)["loss_fcos_cls"].item()
    per_image, num_pos = [], []
    for i in range(2):
        sub = BlendMaskOutputs(*(x[i : i + 1] if j < 6 else x for j, x in enumerate(out)))
        fcos = assign_fcos_targets(
            sub.points, sub.strides, sub.num_points_per_level, [targets[i]["boxes"]],
            [targets[i]["labels"]], sizes_of_interest=SOI, num_classes=c,
        )  # fmt: skip
        n = int((fcos.labels < c).sum())
        per_image.append(crit(sub, [targets[i]])["loss_fcos_cls"].item())
        num_pos.append(n)
    assert num_pos[0] != num_pos[1]
    pooled = sum(loss * n for loss, n in zip(per_image, num_pos)) / sum(num_pos)
    assert both == pytest.approx(pooled, rel=1e-5)
    assert both != pytest.approx(sum(per_image) / 2, rel=1e-3)


def test_semantic_loss_key_and_value() -> None:
    c = 2
    out = make_outputs(1, (64, 64), c, 4, 7, seed=10)
    targets = make_targets([(64, 64)], [2], c)
    losses = criterion(c, sem_loss_weight=0.3)(out, targets)
    canvas = torch.zeros(64, 64, dtype=torch.int64)
    for mask, label in zip(targets[0]["masks"], targets[0]["labels"]):
        canvas[mask.bool()] = label + 1
    sem_t = canvas[::8, ::8][None]
    expected = F.cross_entropy(out.sem_logits, sem_t) * 0.3
    torch.testing.assert_close(losses["loss_basis_sem"], expected)
    assert "loss_basis_sem" not in criterion(c, sem_loss_on=False)(out, targets)
    no_sem = out._replace(sem_logits=None)
    assert "loss_basis_sem" not in criterion(c)(no_sem, targets)


def test_reduce_mean_without_distributed_is_identity() -> None:
    t = torch.tensor(3.5)
    assert reduce_mean(t) is t


def test_bad_targets_raise() -> None:
    c = 2
    out = make_outputs(1, (64, 64), c, 4, 7)
    targets = make_targets([(64, 64)], [1], c)
    with pytest.raises(ValueError, match="masks"):
        criterion(c)(out, [{"boxes": targets[0]["boxes"], "labels": targets[0]["labels"]}])
    with pytest.raises(ValueError, match="2 targets|expected 1 targets"):
        criterion(c)(out, targets * 2)
    big = dict(targets[0], masks=torch.zeros(1, 80, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="larger than the padded"):
        criterion(c)(out, [big])
