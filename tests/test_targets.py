"""FCOS assignment, mask targets and semantic targets against brute-force loops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from blendmask.modeling.targets import (
    assign_fcos_targets,
    compute_semantic_targets,
    project_masks_on_boxes,
)


def make_points(padded: tuple[int, int], strides: list[int]):
    """Locations as the network makes them: (j*s + s//2, i*s + s//2), level-major, row-major."""
    points, point_strides, counts = [], [], []
    for s in strides:
        h, w = math.ceil(padded[0] / s), math.ceil(padded[1] / s)
        ys, xs = torch.meshgrid(
            torch.arange(h) * s + s // 2, torch.arange(w) * s + s // 2, indexing="ij"
        )
        points.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1).float())
        point_strides.append(torch.full((h * w,), float(s)))
        counts.append(h * w)
    return torch.cat(points), torch.cat(point_strides), tuple(counts)


def brute_force_assign(points, strides, counts, boxes, labels, soi, num_classes, center, radius):
    """Double loop over locations and gts, written from docs/reference.md §3.1."""
    bounds = [-1.0, *soi, 1e8]
    level = [lv for lv, c in enumerate(counts) for _ in range(c)]
    out_labels, out_inds, out_reg, out_ctr = [], [], [], []
    for p, (x, y) in enumerate(points.tolist()):
        s = float(strides[p])
        lo, hi = bounds[level[p]], bounds[level[p] + 1]
        best, best_area = -1, math.inf
        for g, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
            ltrb = [x - x0, y - y0, x1 - x, y1 - y]
            if center:
                cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
                sx0, sy0 = max(cx - radius * s, x0), max(cy - radius * s, y0)
                sx1, sy1 = min(cx + radius * s, x1), min(cy + radius * s, y1)
                inside = min(x - sx0, y - sy0, sx1 - x, sy1 - y) > 0
            else:
                inside = min(ltrb) > 0
            if not (inside and lo <= max(ltrb) <= hi):
                continue
            area = (x1 - x0) * (y1 - y0)
            if area < best_area:  # strict: the first gt wins ties
                best, best_area = g, area
        if best < 0:
            out_labels.append(num_classes)
            out_inds.append(-1)
            out_reg.append(None)
            out_ctr.append(0.0)
        else:
            x0, y0, x1, y1 = boxes[best].tolist()
            dl, dt, dr, db = x - x0, y - y0, x1 - x, y1 - y
            out_labels.append(int(labels[best]))
            out_inds.append(best)
            out_reg.append([dl / s, dt / s, dr / s, db / s])
            out_ctr.append(math.sqrt(min(dl, dr) / max(dl, dr) * min(dt, db) / max(dt, db)))
    return out_labels, out_inds, out_reg, out_ctr


def check_against_brute_force(padded, strides, soi, boxes, labels, num_classes=3, center=True):
    points, pstrides, counts = make_points(padded, strides)
    got = assign_fcos_targets(
        points,
        pstrides,
        counts,
        [boxes],
        [labels],
        sizes_of_interest=soi,
        num_classes=num_classes,
        center_sample=center,
        pos_radius=1.5,
    )
    exp_labels, exp_inds, exp_reg, exp_ctr = brute_force_assign(
        points, pstrides, counts, boxes, labels, soi, num_classes, center, 1.5
    )
    assert got.labels[0].tolist() == exp_labels
    assert got.gt_inds[0].tolist() == exp_inds
    torch.testing.assert_close(got.ctr_targets[0], torch.tensor(exp_ctr), atol=1e-6, rtol=0)
    for p, reg in enumerate(exp_reg):
        if reg is not None:
            torch.testing.assert_close(got.reg_targets[0, p], torch.tensor(reg), atol=1e-5, rtol=0)
    return got, points, counts


@pytest.mark.parametrize("center", [True, False])
def test_random_boxes_match_brute_force(center: bool) -> None:
    g = torch.Generator().manual_seed(0)
    xy0 = torch.rand(12, 2, generator=g) * 100 - 10
    wh = torch.rand(12, 2, generator=g) ** 2 * 120 + 2
    boxes = torch.cat([xy0, xy0 + wh], dim=1)
    boxes[5] = boxes[3]  # identical boxes: the first index must win
    labels = torch.randint(0, 3, (12,), generator=g)
    got, _, _ = check_against_brute_force(
        (128, 96), [8, 16, 32, 64], [24, 48, 96], boxes, labels, center=center
    )
    assert (got.labels[0] != 3).sum() > 10  # the case is not trivially all background
    assert not (got.gt_inds[0] == 5).any()


def test_size_range_bounds_are_inclusive() -> None:
    # P3 point (36, 36): a box with max(l, t, r, b) = 64 exactly belongs to P3 ([-1, 64]) and,
    # at the P4 point (40, 40) with max = 64, to P4 ([64, 128]).
    points, pstrides, counts = make_points((128, 128), [8, 16])
    p3 = 4 * 16 + 4  # row 4, col 4 of the 16 x 16 P3 grid -> (36, 36)
    p4 = counts[0] + 2 * 8 + 2  # row 2, col 2 of P4 -> (40, 40)
    assert points[p3].tolist() == [36.0, 36.0] and points[p4].tolist() == [40.0, 40.0]
    kw = dict(sizes_of_interest=[64], num_classes=2, center_sample=False)
    exact = torch.tensor([[36.0 - 64, 26.0, 46.0, 46.0], [40.0 - 64, 30.0, 50.0, 50.0]])
    got = assign_fcos_targets(points, pstrides, counts, [exact[:1]], [torch.tensor([1])], **kw)
    assert got.labels[0, p3] == 1
    got = assign_fcos_targets(points, pstrides, counts, [exact[1:]], [torch.tensor([1])], **kw)
    assert got.labels[0, p4] == 1
    beyond = exact[:1].clone()
    beyond[0, 0] -= 0.5  # max = 64.5: no longer P3
    got = assign_fcos_targets(points, pstrides, counts, [beyond], [torch.tensor([1])], **kw)
    assert got.labels[0, p3] == 2
    check_against_brute_force((128, 128), [8, 16], [64], exact, torch.tensor([0, 1]), center=False)


def test_center_sampling_region() -> None:
    # Big box centred at (104, 104): P3 (stride 8) locations are positive only strictly within
    # 1.5 * 8 = 12 px of the centre, so 92 and 116 (exactly 12 px away) are not.
    points, pstrides, counts = make_points((192, 192), [8])
    box = torch.tensor([[59.0, 59.0, 149.0, 149.0]])
    got = assign_fcos_targets(
        points, pstrides, counts, [box], [torch.tensor([0])], sizes_of_interest=[], num_classes=1
    )
    pos = got.labels[0] == 0
    xs, ys = points[pos, 0], points[pos, 1]
    assert sorted(set(xs.tolist())) == [100.0, 108.0]
    assert sorted(set(ys.tolist())) == [100.0, 108.0]
    # A small box: the region is clipped to the box, so only locations inside it count.
    small = torch.tensor([[97.0, 97.0, 103.0, 109.0]])
    got = assign_fcos_targets(
        points, pstrides, counts, [small], [torch.tensor([0])], sizes_of_interest=[], num_classes=1
    )
    assert points[got.labels[0] == 0].tolist() == [[100.0, 100.0], [100.0, 108.0]]
    check_against_brute_force((192, 192), [8], [], torch.cat([box, small]), torch.tensor([0, 0]), 1)


def test_smallest_area_wins_and_background_label() -> None:
    points, pstrides, counts = make_points((64, 64), [8])
    boxes = torch.tensor(
        [[0.0, 0.0, 64.0, 64.0], [20.0, 20.0, 44.0, 44.0], [20.0, 20.0, 44.0, 44.0]]
    )
    labels = torch.tensor([0, 1, 2])
    got = assign_fcos_targets(
        points, pstrides, counts, [boxes], [labels], sizes_of_interest=[], num_classes=3
    )
    centre = 3 * 8 + 3  # (28, 28): inside all three sample regions
    assert got.labels[0, centre] == 1 and got.gt_inds[0, centre] == 1
    corner = 0  # (4, 4): outside every centre region
    assert got.labels[0, corner] == 3 and got.gt_inds[0, corner] == -1
    assert got.ctr_targets[0, corner] == 0
    assert got.labels.dtype == torch.int64 and got.gt_inds.dtype == torch.int64
    check_against_brute_force((64, 64), [8], [], boxes, labels)


def test_first_gt_centre_x_zero_is_not_all_negative() -> None:
    # The reference marks an image all-negative when its first gt has centre x == 0 (a bug we
    # do not reproduce).
    points, pstrides, counts = make_points((64, 64), [8])
    box = torch.tensor([[-10.0, 10.0, 10.0, 40.0]])
    got = assign_fcos_targets(
        points, pstrides, counts, [box], [torch.tensor([0])], sizes_of_interest=[], num_classes=1
    )
    assert (got.labels[0] == 0).sum() > 0


def test_batch_with_empty_image() -> None:
    points, pstrides, counts = make_points((64, 64), [8, 16])
    boxes = [torch.zeros(0, 4), torch.tensor([[10.0, 10.0, 40.0, 50.0]])]
    labels = [torch.zeros(0, dtype=torch.int64), torch.tensor([4])]
    got = assign_fcos_targets(
        points, pstrides, counts, boxes, labels, sizes_of_interest=[32], num_classes=5
    )
    assert got.labels.shape == (2, points.shape[0]) and got.reg_targets.shape == (
        2,
        points.shape[0],
        4,
    )
    assert (
        (got.labels[0] == 5).all()
        and (got.gt_inds[0] == -1).all()
        and (got.ctr_targets[0] == 0).all()
    )
    assert (got.labels[1] == 4).any()


def test_bad_inputs_raise() -> None:
    points, pstrides, counts = make_points((64, 64), [8, 16])
    with pytest.raises(ValueError, match="sizes_of_interest"):
        assign_fcos_targets(
            points,
            pstrides,
            counts,
            [torch.zeros(0, 4)],
            [torch.zeros(0)],
            sizes_of_interest=[],
            num_classes=1,
        )
    with pytest.raises(ValueError, match="labels in"):
        assign_fcos_targets(
            points,
            pstrides,
            counts,
            [torch.ones(1, 4)],
            [torch.tensor([3])],
            sizes_of_interest=[8],
            num_classes=3,
        )


def test_project_masks_on_boxes_matches_block_mean() -> None:
    # A box aligned with the pixel grid, 2 mask pixels per target pixel: each target pixel is
    # the >= 0.5 vote of its 2 x 2 block (aligned=True; aligned=False would shift by half).
    g = torch.Generator().manual_seed(1)
    r = 6
    masks = (torch.rand(2, 30, 30, generator=g) > 0.5).to(torch.uint8)
    boxes = torch.tensor([[4.0, 8.0, 4.0 + 2 * r, 8.0 + 2 * r], [0.0, 0.0, 2.0 * r, 2.0 * r]])
    got = project_masks_on_boxes(masks, boxes, r)
    assert got.dtype == torch.float32 and got.shape == (2, r, r)
    for n in range(2):
        x0, y0 = int(boxes[n, 0]), int(boxes[n, 1])
        for i in range(r):
            for j in range(r):
                block = masks[n, y0 + 2 * i : y0 + 2 * i + 2, x0 + 2 * j : x0 + 2 * j + 2].float()
                assert got[n, i, j] == float(block.mean() >= 0.5)
    full = project_masks_on_boxes(
        torch.ones(1, 20, 20, dtype=torch.uint8), torch.tensor([[2.0, 3.0, 15.0, 9.5]]), 8
    )
    assert (full == 1).all()
    assert project_masks_on_boxes(masks[:0], boxes[:0], r).shape == (0, r, r)


def test_semantic_targets_match_painting_and_interpolate() -> None:
    # Paint each image (0 background, label + 1, later annotations on top), pad, then
    # downsample with F.interpolate(scale_factor=1/8) as the reference does.
    g = torch.Generator().manual_seed(2)
    padded, stride = (64, 96), 8
    sizes = [(64, 90), (41, 57)]
    masks = [(torch.rand(3, h, w, generator=g) > 0.6).to(torch.uint8) for h, w in sizes]
    labels = [torch.tensor([4, 0, 7]), torch.tensor([2, 2, 5])]
    got = compute_semantic_targets(masks, labels, padded, stride)
    assert got.shape == (2, 8, 12) and got.dtype == torch.int64
    for n, (h, w) in enumerate(sizes):
        canvas = torch.zeros(padded)
        for m, lab in zip(masks[n], labels[n]):
            canvas[:h, :w][m.bool()] = float(lab + 1)
        expected = F.interpolate(canvas[None, None], scale_factor=1 / stride)[0, 0].long()
        assert torch.equal(got[n], expected)
    assert (got > 0).any()
