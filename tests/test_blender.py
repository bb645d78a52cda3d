"""Blender (BlendMask Eq. 1-4), its settings (`BlenderSpec`) and mask pasting against naive
per-pixel loops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from blendmask.modeling.blender import (
    attention_weights,
    fcis_attention,
    merge_bases,
    pool_bases,
)
from blendmask.structures import BlenderSpec, paste
from blendmask.structures.paste import paste_masks


def _interp_source(dst: int, in_size: int, out_size: int, mode: str) -> list[tuple[int, float]]:
    """(source index, weight) pairs of F.interpolate for one output index, written out."""
    scale = in_size / out_size
    if mode == "nearest":
        return [(min(int(math.floor(dst * scale)), in_size - 1), 1.0)]
    src = max((dst + 0.5) * scale - 0.5, 0.0)
    i0 = min(int(math.floor(src)), in_size - 1)
    i1 = min(i0 + 1, in_size - 1)
    frac = src - i0
    return [(i0, 1.0 - frac), (i1, frac)]


def _naive_merge(pooled: torch.Tensor, attentions: torch.Tensor, m: int, mode: str) -> torch.Tensor:
    """Per-instance, per-pixel blend: resize attention, softmax over K (sigmoids if K = 1)."""
    d, k, r, _ = pooled.shape
    pooled_l = pooled.tolist()
    att = attentions.reshape(d, k, m, m).tolist()
    out = torch.zeros(d, r, r, dtype=torch.float64)
    for n in range(d):
        for y in range(r):
            sy = _interp_source(y, m, r, mode)
            for x in range(r):
                sx = _interp_source(x, m, r, mode)
                a = [
                    sum(wy * wx * att[n][b][iy][ix] for iy, wy in sy for ix, wx in sx)
                    for b in range(k)
                ]
                if k == 1:
                    # the paper's K = 1 blend: a probability, compared as such below
                    out[n, y, x] = (
                        1 / (1 + math.exp(-a[0])) * 1 / (1 + math.exp(-pooled_l[n][0][y][x]))
                    )
                else:
                    mx = max(a)
                    e = [math.exp(v - mx) for v in a]
                    out[n, y, x] = sum(e[b] / sum(e) * pooled_l[n][b][y][x] for b in range(k))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("m", [1, 7, 14])
@pytest.mark.parametrize("k", [1, 4])
def test_merge_bases_matches_naive_loop(k: int, m: int, mode: str) -> None:
    # Fails if the attention is reshaped in the wrong order, resized with other corner
    # conventions, or normalised over the wrong axis.
    g = torch.Generator().manual_seed(k * 100 + m)
    d, r = 2, 28
    pooled = torch.randn(d, k, r, r, generator=g) * 2
    attentions = torch.randn(d, k * m * m, generator=g) * 2
    got = merge_bases(pooled, attentions, BlenderSpec(resolution=r, attn_size=m, top_interp=mode))
    assert got.shape == (d, r, r)
    expected = _naive_merge(pooled.double(), attentions.double(), m, mode)
    if k == 1:
        got = got.sigmoid()  # K = 1 returns logit(sigmoid(attn) * sigmoid(base))
    assert (got.double() - expected).abs().max().item() <= 1e-5


def _naive_weights(attentions: torch.Tensor, k: int, m: int, r: int, mode: str) -> torch.Tensor:
    """Eq. 2-3 per pixel: resize each of the K maps, then softmax over K (sigmoid if K = 1)."""
    att = attentions.reshape(attentions.shape[0], k, m, m).tolist()
    out = torch.zeros(attentions.shape[0], k, r, r, dtype=torch.float64)
    for n in range(attentions.shape[0]):
        for y in range(r):
            sy = _interp_source(y, m, r, mode)
            for x in range(r):
                sx = _interp_source(x, m, r, mode)
                a = [
                    sum(wy * wx * att[n][b][iy][ix] for iy, wy in sy for ix, wx in sx)
                    for b in range(k)
                ]
                if k == 1:
                    out[n, 0, y, x] = 1 / (1 + math.exp(-a[0]))
                else:
                    e = [math.exp(v - max(a)) for v in a]
                    for b in range(k):
                        out[n, b, y, x] = e[b] / sum(e)
    return out


@pytest.mark.parametrize(
    ("k", "m", "mode"), [(4, 3, "bilinear"), (3, 2, "nearest"), (1, 4, "bilinear")]
)
def test_attention_weights_match_naive_loop(k: int, m: int, mode: str) -> None:
    # Fails if Eq. 2-3 resize with other corner conventions, normalise over the wrong axis, or
    # the K = 1 weight is not the sigmoid the paper uses.
    g = torch.Generator().manual_seed(10 * k + m)
    r = 9
    attentions = torch.randn(3, k * m * m, generator=g) * 2
    spec = BlenderSpec(resolution=r, attn_size=m, top_interp=mode)
    got = attention_weights(attentions, spec, num_bases=k)
    assert got.shape == (3, k, r, r)
    expected = _naive_weights(attentions.double(), k, m, r, mode)
    assert (got.double() - expected).abs().max().item() <= 1e-6
    if k > 1:
        torch.testing.assert_close(got.sum(1), torch.ones(3, r, r))


def test_attention_weights_fcis_cells_ignore_the_attentions() -> None:
    m, r = 2, 6
    attentions = torch.randn(2, m**4)
    spec = BlenderSpec(resolution=r, attn_size=m, top_interp="bilinear", fixed_onehot=True)
    got = attention_weights(attentions, spec, num_bases=m * m)
    # cell (i, j) of R x R (nearest: rows/cols i*R/M .. (i+1)*R/M) is one-hot at base i*M + j
    for i in range(m):
        for j in range(m):
            cell = got[:, :, i * 3 : (i + 1) * 3, j * 3 : (j + 1) * 3]
            onehot = F.one_hot(torch.tensor(i * m + j), m * m).float()
            assert torch.equal(cell, onehot[None, :, None, None].expand_as(cell))
    assert torch.equal(attention_weights(attentions * 7 + 1, spec, num_bases=m * m), got)


@pytest.mark.parametrize(
    ("spec", "k"),
    [
        (BlenderSpec(resolution=10, attn_size=3), 4),
        (BlenderSpec(resolution=10, attn_size=3, top_interp="nearest"), 4),
        (BlenderSpec(resolution=10, attn_size=1), 4),
        (BlenderSpec(resolution=10, attn_size=3), 1),
        (BlenderSpec(resolution=10, attn_size=3, top_interp="nearest"), 1),
        (BlenderSpec(resolution=10, attn_size=2, fixed_onehot=True), 4),
    ],
)
def test_merge_bases_is_eq4_of_attention_weights(spec: BlenderSpec, k: int) -> None:
    # Eq. 4 written as a loop over detections, bases and pixels, from the pooled bases and
    # `attention_weights`: fails if merge_bases weights the bases with anything else than the
    # weights explain shows (K = 1: sigmoid(attention) * sigmoid(base), as a probability).
    g = torch.Generator().manual_seed(k)
    d, r = 2, spec.resolution
    pooled = torch.randn(d, k, r, r, generator=g) * 2
    attentions = torch.randn(d, k * spec.attn_size**2, generator=g) * 2
    weights = attention_weights(attentions, spec, num_bases=k).tolist()
    pooled_l = pooled.tolist()
    expected = torch.zeros(d, r, r, dtype=torch.float64)
    for n in range(d):
        for y in range(r):
            for x in range(r):
                if k == 1 and not spec.fixed_onehot:
                    base = 1 / (1 + math.exp(-pooled_l[n][0][y][x]))
                    expected[n, y, x] = weights[n][0][y][x] * base
                else:
                    expected[n, y, x] = sum(
                        weights[n][b][y][x] * pooled_l[n][b][y][x] for b in range(k)
                    )
    got = merge_bases(pooled, attentions, spec).double()
    if k == 1 and not spec.fixed_onehot:
        got = got.sigmoid()
    assert (got - expected).abs().max().item() <= 1e-5


def test_merge_bases_k1_logit_is_finite_when_saturated() -> None:
    # Fails if the K = 1 logit is computed as log(p / (1 - p)) directly (inf at p = 1).
    pooled = torch.full((1, 1, 4, 4), 200.0, requires_grad=True)
    attentions = torch.full((1, 1), 200.0, requires_grad=True)
    out = merge_bases(pooled, attentions, BlenderSpec(resolution=4, attn_size=1))
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(pooled.grad).all() and torch.isfinite(attentions.grad).all()


def test_m1_is_yolact_weighted_sum() -> None:
    # M = 1: one coefficient per base for the whole box; a softmax-weighted sum of the crops.
    g = torch.Generator().manual_seed(1)
    pooled = torch.randn(3, 4, 8, 8, generator=g)
    attentions = torch.randn(3, 4, generator=g)
    for mode in ("bilinear", "nearest"):
        spec = BlenderSpec(resolution=8, attn_size=1, top_interp=mode)
        got = merge_bases(pooled, attentions, spec)
        expected = (attentions.softmax(dim=1)[:, :, None, None] * pooled).sum(dim=1)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_fcis_setting_assembles_position_sensitive_crops() -> None:
    # K = M*M, fixed one-hot attention: cell (i, j) of the box is copied from base i*M + j.
    m, r, d = 3, 12, 2
    g = torch.Generator().manual_seed(2)
    pooled = torch.randn(d, m * m, r, r, generator=g)
    attentions = torch.randn(d, m * m * m * m, generator=g)  # values must be ignored
    spec = BlenderSpec(resolution=r, attn_size=m, fixed_onehot=True, top_interp="bilinear")
    got = merge_bases(pooled, attentions, spec)
    cell = r // m
    expected = torch.zeros(d, r, r)
    for i in range(m):
        for j in range(m):
            rows, cols = slice(i * cell, (i + 1) * cell), slice(j * cell, (j + 1) * cell)
            expected[:, rows, cols] = pooled[:, i * m + j, rows, cols]
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    other = merge_bases(pooled, attentions * 5 - 3, spec)
    torch.testing.assert_close(got, other, atol=0, rtol=0)
    with pytest.raises(ValueError, match="num_bases"):
        merge_bases(pooled[:, :4], attentions, spec)


def test_fcis_attention_is_one_hot() -> None:
    m = 2
    att = fcis_attention(m, 3, "cpu")
    assert att.shape == (3, m**4)
    maps = att.reshape(3, m * m, m, m)
    for i in range(m):
        for j in range(m):
            assert maps[0, :, i, j].tolist() == [float(b == i * m + j) for b in range(m * m)]


def test_merge_bases_rejects_wrong_shapes() -> None:
    spec = BlenderSpec(resolution=8, attn_size=2)
    with pytest.raises(ValueError, match="attentions"):
        merge_bases(torch.zeros(2, 4, 8, 8), torch.zeros(2, 4 * 9), spec)
    with pytest.raises(ValueError, match="attentions"):
        merge_bases(torch.zeros(2, 4, 8, 8), torch.zeros(3, 4 * 4), spec)
    with pytest.raises(ValueError, match="pooled_bases"):
        merge_bases(torch.zeros(2, 4, 6, 6), torch.zeros(2, 4 * 4), spec)


def test_pool_bases_roialignv2_convention() -> None:
    # With aligned=True a box whose bins are single base pixels reads those pixels exactly;
    # aligned=False (or a wrong scale) would shift by half a pixel and interpolate.
    g = torch.Generator().manual_seed(3)
    bases = torch.randn(2, 4, 16, 16, generator=g)
    boxes = [torch.tensor([[8.0, 16.0, 40.0, 48.0]]), torch.tensor([[0.0, 0.0, 32.0, 32.0]])]
    for pooler_type in ("ROIAlignV2", "ROIPool"):
        spec = BlenderSpec(resolution=8, pooler_scale=0.25, pooler_type=pooler_type)
        out = pool_bases(bases, boxes, spec)
        assert out.shape == (2, 4, 8, 8)
        torch.testing.assert_close(out[0], bases[0, :, 4:12, 2:10])
        torch.testing.assert_close(out[1], bases[1, :, 0:8, 0:8])


def test_pool_bases_nearest_matches_naive_loop() -> None:
    g = torch.Generator().manual_seed(4)
    bases = torch.randn(2, 3, 10, 12, generator=g)
    boxes = [
        torch.tensor([[3.3, -7.0, 30.1, 20.2], [-20.0, 5.0, 60.0, 45.0]]),
        torch.tensor([[10.0, 12.0, 11.0, 13.5]]),
    ]
    r, scale = 5, 0.25
    out = pool_bases(
        bases, boxes, BlenderSpec(resolution=r, pooler_scale=scale, pooler_type="ROIPool")
    )
    expected = torch.zeros(3, 3, r, r)
    row = 0
    for b_img, bxs in enumerate(boxes):
        for x0, y0, x1, y1 in bxs.tolist():
            for i in range(r):
                v = y0 * scale - 0.5 + (i + 0.5) * (y1 - y0) * scale / r
                for j in range(r):
                    u = x0 * scale - 0.5 + (j + 0.5) * (x1 - x0) * scale / r
                    if -1 <= u <= 12 and -1 <= v <= 10:
                        yi = min(max(math.floor(v + 0.5), 0), 9)
                        xi = min(max(math.floor(u + 0.5), 0), 11)
                        expected[row, :, i, j] = bases[b_img, :, yi, xi]
            row += 1
    torch.testing.assert_close(out, expected)


def test_pool_bases_empty_keeps_the_graph() -> None:
    bases = torch.randn(2, 4, 8, 8, requires_grad=True)
    out = pool_bases(bases, [torch.zeros(0, 4), torch.zeros(0, 4)], BlenderSpec(resolution=6))
    assert out.shape == (0, 4, 6, 6)
    out.sum().backward()
    assert bases.grad is not None
    with pytest.raises(ValueError, match="box lists"):
        pool_bases(bases, [torch.zeros(0, 4)], BlenderSpec())


def _expected_box_fill(box: list[float], h: int, w: int) -> torch.Tensor:
    x0, y0, x1, y1 = box
    xs = torch.arange(w) + 0.5
    ys = torch.arange(h) + 0.5
    return ((ys >= y0) & (ys <= y1))[:, None] & ((xs >= x0) & (xs <= x1))[None, :]


def test_paste_full_box_of_ones_fills_exactly_the_box() -> None:
    # Fails if pixel centres are not at +0.5, if align_corners=True, or if boxes are off by one.
    h, w = 40, 50
    boxes = torch.tensor(
        [
            [3.0, 5.0, 20.0, 30.0],
            [0.0, 0.0, 50.0, 40.0],
            [10.2, 7.7, 33.9, 12.1],
            [45.0, 1.0, 50.0, 2.0],
        ]
    )
    masks = torch.ones(4, 28, 28)
    got = paste_masks(masks, boxes, (h, w))
    assert got.dtype == torch.bool and got.shape == (4, h, w)
    for n in range(4):
        assert torch.equal(got[n], _expected_box_fill(boxes[n].tolist(), h, w)), n


def test_paste_threshold_is_inclusive() -> None:
    # The reference binarises with >= 0.5: a mask of exactly 0.5 fills its box. The box is
    # R pixels wide so pixel centres sample mask pixel centres exactly (no rounding).
    box = torch.tensor([[2.0, 4.0, 10.0, 12.0]])
    got = paste_masks(torch.full((1, 8, 8), 0.5), box, (16, 16))
    assert torch.equal(got[0], _expected_box_fill(box[0].tolist(), 16, 16))
    assert got.sum() == 64
    below = paste_masks(torch.full((1, 8, 8), 0.4999), box, (16, 16))
    assert below.sum() == 0


def test_paste_matches_per_instance_loop_and_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(5)
    h, w, r = 37, 45, 14
    masks = torch.rand(6, r, r, generator=g)
    xy0 = torch.rand(6, 2, generator=g) * 30
    wh = torch.rand(6, 2, generator=g) * 20 + 1
    boxes = torch.cat([xy0, xy0 + wh], dim=1)
    got = paste_masks(masks, boxes, (h, w))
    for n in range(6):
        x0, y0, x1, y1 = boxes[n].tolist()
        gx = ((torch.arange(w) + 0.5) - x0) / (x1 - x0) * 2 - 1
        gy = ((torch.arange(h) + 0.5) - y0) / (y1 - y0) * 2 - 1
        grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=2)[None]
        ref = F.grid_sample(masks[n][None, None], grid, align_corners=False)[0, 0] >= 0.5
        assert torch.equal(got[n], ref), n
    monkeypatch.setattr(paste, "_PASTE_MAX_GRID_POINTS", h * w * 2)
    assert torch.equal(paste_masks(masks, boxes, (h, w)), got)


def test_paste_empty() -> None:
    got = paste_masks(torch.zeros(0, 28, 28), torch.zeros(0, 4), (10, 12))
    assert got.shape == (0, 10, 12) and got.dtype == torch.bool


def test_blender_spec_defaults_are_the_reference_and_the_config() -> None:
    from blendmask.config import Config
    from blendmask.factory import blender_spec

    spec = BlenderSpec()
    assert (spec.resolution, spec.attn_size, spec.top_interp) == (56, 14, "bilinear")
    assert (spec.pooler_type, spec.pooler_sampling_ratio, spec.pooler_scale) == (
        "ROIAlignV2",
        1,
        0.25,
    )
    assert spec.fixed_onehot is False and spec.bases_stride == 4
    assert blender_spec(Config()) == spec
    with pytest.raises(AttributeError):
        spec.resolution = 28  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("resolution", 0),
        ("resolution", 5.0),
        ("attn_size", -1),
        ("attn_size", True),
        ("top_interp", "bicubic"),
        ("pooler_type", "RoIWarp"),
        ("pooler_sampling_ratio", -1),
        ("pooler_scale", 0.0),
        ("pooler_scale", float("nan")),
        ("pooler_scale", 4),
        ("fixed_onehot", 1),
    ],
)
def test_blender_spec_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"BlenderSpec.{field}"):
        BlenderSpec(**{field: value})
