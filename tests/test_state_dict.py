"""The one state-dict loader every weight file goes through: what it reports and loads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from blendmask.modeling.state_dict import (
    ShapeMismatch,
    compare_state_dict,
    load_state_dict_checked,
)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


def test_compare_lists_missing_unexpected_and_mismatched_in_order():
    net = _net()
    state = dict(net.state_dict())
    del state["1.running_var"]
    state["2.weight"] = torch.zeros(5, 4, 1, 1)
    state["extra.a"] = torch.zeros(1)
    state["extra.b"] = torch.zeros(1)
    report = compare_state_dict(net.state_dict(), state, source="f.pth")
    assert report.missing == ["1.running_var"]
    assert report.unexpected == ["extra.a", "extra.b"]
    assert report.mismatched == [ShapeMismatch("2.weight", (5, 4, 1, 1), (2, 4, 1, 1))]
    assert len(report.loaded) == len(net.state_dict()) - 2
    assert not report.complete and report.num_problems == 4
    assert report.counts() == "1 missing, 2 unexpected, 1 shape-mismatched"
    assert report.summary() == (
        "f.pth: missing (1): 1.running_var; unexpected (2): extra.a, extra.b; "
        "shape-mismatched (1): 2.weight: file [5, 4, 1, 1] vs model [2, 4, 1, 1]"
    )


def test_long_lists_are_counted_with_the_first_keys():
    report = compare_state_dict({}, {f"k{i}": torch.zeros(1) for i in range(12)}, source="x")
    assert report.summary() == "x: unexpected (12): k0, k1, k2, k3, k4, ... and 7 more"
    assert report.summary(limit=None).count(", ") == 11
    assert report.summary(limit=2, name=str.upper) == "x: unexpected (12): K0, K1, ... and 10 more"


def test_strict_load_raises_one_paragraph_naming_the_file_and_changes_nothing():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    state = {k: torch.ones_like(v) for k, v in net.state_dict().items()}
    del state["0.bias"]
    with pytest.raises(ValueError) as info:
        load_state_dict_checked(net, state, source="w.pth", what="no fit")
    assert str(info.value) == "w.pth: no fit: missing (1): 0.bias"
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_partial_load_fills_what_fits_and_keeps_the_rest():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    state = {
        "0.weight": torch.full((4, 3, 3, 3), 2.0, dtype=torch.float64),  # cast to float32
        "2.weight": torch.zeros(5, 4, 1, 1),  # wrong shape: skipped
        "other": torch.zeros(3),  # no place: skipped
    }
    report = load_state_dict_checked(net, state, source="p.pth", strict=False)
    assert report.loaded == ["0.weight"]
    after = net.state_dict()
    assert after["0.weight"].dtype == torch.float32 and bool((after["0.weight"] == 2).all())
    for key in before:
        if key != "0.weight":
            assert torch.equal(after[key], before[key]), key


def test_complete_load_is_exact():
    src, dst = _net(), nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    report = load_state_dict_checked(dst, src.state_dict(), source="m.pt")
    assert report.complete and report.summary() == f"m.pt: all {len(report.loaded)} tensors fit"
    for key, value in src.state_dict().items():
        assert torch.equal(dst.state_dict()[key], value), key
