"""metrics/attention.py against naive loops written here, and its edge cases."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from blendmask.metrics.attention import (
    attention_specificity,
    pairwise_distances,
    spatial_variation,
)


def _softmax_maps(d: int, k: int, r: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d, k, r, r, generator=g, dtype=torch.float64).mul(3).softmax(dim=1)


def _naive_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over pixels of the total-variation distance of the K-way distributions."""
    k, r, _ = a.shape
    if k == 1:  # sigmoid weights: the distribution (p, 1 - p)
        a, b = torch.cat([a, 1 - a]), torch.cat([b, 1 - b])
    total = 0.0
    for y in range(r):
        for x in range(r):
            total += 0.5 * sum(abs(float(a[j, y, x] - b[j, y, x])) for j in range(a.shape[0]))
    return total / (r * r)


def _naive_specificity(per_image: list[torch.Tensor]) -> tuple[float, float, float]:
    within, across = [], []
    flat = [(i, w) for i, maps in enumerate(per_image) for w in maps]
    for (i, a), (j, b) in itertools.combinations(flat, 2):
        (within if i == j else across).append(_naive_distance(a, b))
    spatial = []
    for _, w in flat:
        dist = torch.cat([w, 1 - w]) if w.shape[0] == 1 else w
        mean = dist.mean(dim=(1, 2))
        r = w.shape[-1]
        spatial.append(
            sum(0.5 * float((dist[:, y, x] - mean).abs().sum()) for y in range(r) for x in range(r))
            / (r * r)
        )
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    return mean(within), mean(across), mean(spatial)


@pytest.mark.parametrize("k", [1, 3])
def test_specificity_matches_naive_loops(k: int) -> None:
    """Wrong here = the vectorised distances (cdist over flattened maps, the same-image mask,
    the pair counting or the K = 1 sigmoid reading) disagree with the definition."""
    if k == 1:
        per_image = [
            torch.rand(n, 1, 5, 5, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
            for n in (3, 1, 2)
        ]
    else:
        per_image = [_softmax_maps(n, k, 5, seed=n) for n in (3, 1, 2)]
    per_image.insert(
        1, torch.zeros(0, k, 5, 5, dtype=torch.float64)
    )  # an image without detections is skipped
    got = attention_specificity(per_image)
    within, across, spatial = _naive_specificity([w for w in per_image if len(w)])
    assert got.within == pytest.approx(within, rel=1e-9)
    assert got.across == pytest.approx(across, rel=1e-9)
    assert got.spatial == pytest.approx(spatial, rel=1e-9)
    assert got.ratio == pytest.approx(within / across, rel=1e-9)
    assert (got.detections, got.within_pairs, got.across_pairs) == (6, 3 + 1, 3 * 1 + 3 * 2 + 1 * 2)


def test_distance_extremes() -> None:
    """Identical maps are at distance 0 and maps choosing different bases everywhere at 1; a
    constant map has no spatial variation. Wrong = the scale (1/2, 1/R^2) is off."""
    one_hot = torch.zeros(2, 2, 4, 4)
    one_hot[0, 0], one_hot[1, 1] = 1.0, 1.0
    same = torch.full((2, 2, 4, 4), 0.5)
    assert pairwise_distances(one_hot)[0, 1] == pytest.approx(1.0)
    assert pairwise_distances(same)[0, 1] == pytest.approx(0.0)
    assert spatial_variation(one_hot).tolist() == pytest.approx([0.0, 0.0])
    halves = torch.zeros(1, 2, 4, 4)
    halves[0, 0, :, :2], halves[0, 1, :, 2:] = 1.0, 1.0  # left half base 0, right half base 1
    assert float(spatial_variation(halves)[0]) == pytest.approx(0.5)


def test_shared_maps_give_ratio_zero() -> None:
    """Detections of one image sharing their maps (the symptom the measure looks for): within
    is 0 and the ratio too, while across stays positive."""
    a, b = _softmax_maps(1, 4, 6, seed=1), _softmax_maps(1, 4, 6, seed=2)
    got = attention_specificity([a.repeat(3, 1, 1, 1), b.repeat(2, 1, 1, 1)])
    assert got.within == pytest.approx(0.0, abs=1e-12)
    assert got.across > 0.1 and got.ratio == pytest.approx(0.0, abs=1e-10)


def test_no_pairs_and_bad_shapes() -> None:
    single = attention_specificity([_softmax_maps(1, 2, 3, seed=0)])
    assert math.isnan(single.within) and math.isnan(single.across) and single.detections == 1
    assert attention_specificity([]).detections == 0
    with pytest.raises(ValueError, match="same"):
        attention_specificity([_softmax_maps(1, 2, 3, 0), _softmax_maps(1, 2, 4, 0)])
    with pytest.raises(ValueError, match=r"\[D, K, R, R\]"):
        pairwise_distances(torch.zeros(2, 3, 3))


def test_explain_figure_draws_the_attention_distances() -> None:
    """`blendmask explain` shows the distance matrix of the explained detections; wrong = the
    matrix is not the measure of metrics/attention.py on the maps the figure shows, or the
    panel is missing."""
    from blendmask.explain import draw_explanation, explain_image
    from blendmask.predictor import Predictor
    from blendmask.presets import get_preset

    torch.manual_seed(0)
    predictor = Predictor.from_config(get_preset("tiny"), device="cpu")
    predictor.postprocessor.score_thresh = 0.0
    image = torch.rand(3, 50, 70, generator=torch.Generator().manual_seed(1))
    expl = explain_image(predictor, image, top=3)
    assert expl.attention_weights.shape[0] == 3
    fig = draw_explanation(expl)
    (panel,) = [ax for ax in fig.axes if ax.get_label() == "attention-distances"]
    shown = torch.as_tensor(panel.images[0].get_array()).double()
    expected = pairwise_distances(expl.attention_weights)
    assert torch.allclose(shown, expected, atol=1e-6)
    assert len(panel.texts) == 9  # every cell written
