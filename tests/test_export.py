"""Tests of the ONNX export: numerics against PyTorch at several sizes (dynamic axes), the
recomputed FCOS points, `OnnxPredictor` against `Predictor`, the CLI and bad input.

The tiny preset at random init; its last head convs get larger weights so that scores, boxes
and attentions spread out (at the reference init every score is ~0.01 and the comparison of
detections would be decided by ties), boxes get a positive size and
the bases a bias.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from helpers.models import spread_model  # noqa: E402

from blendmask.checkpoint_io import save_model_file  # noqa: E402
from blendmask.export.onnx import OUTPUT_NAMES, check_onnx, export_onnx  # noqa: E402
from blendmask.export.onnx_predictor import (  # noqa: E402
    OnnxPredictor,
    fcos_points,
    read_onnx_config,
)
from blendmask.predictor import Predictor  # noqa: E402

# Slow: the module fixture exports an ONNX graph (`pytest -m "not slow"` leaves these out).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    cfg, model, post = spread_model()
    path = export_onnx(
        model, tmp_path_factory.mktemp("onnx") / "tiny.onnx", height=64, width=96, cfg=cfg
    )
    return cfg, model, post, path


def test_onnx_matches_pytorch_at_trace_size_and_other_sizes(exported) -> None:
    """Fails if an op exports wrongly, if a shape was frozen into the graph (the dynamic axes
    would break at the other sizes), or if the padding mask of `image_sizes` is lost."""
    _, model, _, path = exported
    # Export must leave the network in eval mode: the exporter restores the mode of the module
    # it gets, and a train-mode wrapper would switch the BatchNorms to batch statistics.
    assert not any(m.training for m in model.modules())
    torch.manual_seed(1)
    cases = [
        (torch.rand(1, 3, 64, 96), None),
        (torch.rand(2, 3, 96, 64), [(90, 50), (96, 64)]),
        (torch.rand(1, 3, 128, 160), [(100, 160)]),
    ]
    for images, sizes in cases:
        diffs = check_onnx(model, path, images, image_sizes=sizes, atol=1e-4)
        assert list(diffs) == list(OUTPUT_NAMES)
        assert all(0.0 <= d <= 1e-4 for d in diffs.values()), diffs


def test_check_onnx_raises_when_the_network_changed(exported) -> None:
    """A check that cannot fail would prove nothing: change a weight after export."""
    _, model, _, path = exported
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.basis_module.tower[-1].bias.add_(0.1)
    with pytest.raises(RuntimeError, match="bases"):
        check_onnx(changed, path, torch.rand(1, 3, 64, 96))


@pytest.mark.parametrize("size", [(64, 96), (96, 160), (32, 32), (160, 64)])
def test_fcos_points_equal_the_networks(exported, size: tuple[int, int]) -> None:
    """Fails if the points OnnxPredictor recomputes drift from the network's (a different
    level-size rule, order or offset would move every decoded box)."""
    _, model, _, _ = exported
    height, width = size
    with torch.no_grad():
        out = model(torch.rand(1, 3, height, width))
    strides = model.fpn_strides
    points, point_strides, counts = fcos_points(height, width, strides)
    assert counts == tuple(out.num_points_per_level)
    torch.testing.assert_close(points, out.points, rtol=0, atol=0)
    torch.testing.assert_close(point_strides, out.strides, rtol=0, atol=0)
    # Brute force for the first level: row-major (i, j), x = j*s + s//2, y = i*s + s//2.
    s = strides[0]
    naive = []
    for i in range(-(-height // s)):
        for j in range(-(-width // s)):
            naive.append((j * s + s // 2, i * s + s // 2))
    assert points[: counts[0]].tolist() == [[float(x), float(y)] for x, y in naive]


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


def test_onnx_predictor_equals_predictor(exported) -> None:
    """Fails if OnnxPredictor's resize / padding / points / outputs differ from the PyTorch
    path: the detections of the same images must agree."""
    cfg, model, post, path = exported
    predictor = Predictor(cfg, model, post, "cpu", score_threshold=None)
    onnx_predictor = OnnxPredictor(path)  # config from the file's metadata
    assert onnx_predictor.cfg.to_dict() == cfg.to_dict()
    torch.manual_seed(2)
    # 50 x 70 resizes to 64 x 90: padded to 96, so the padding mask matters.
    images = [torch.rand(3, 50, 70), torch.rand(3, 64, 96)]
    total = 0
    for image in images:
        expected = predictor([image])[0]
        got = onnx_predictor([image])[0]
        assert len(got) == len(expected)
        total += len(got)
        assert torch.equal(got.labels, expected.labels)
        torch.testing.assert_close(got.boxes, expected.boxes, rtol=0, atol=1e-3)
        torch.testing.assert_close(got.scores, expected.scores, rtol=0, atol=1e-4)
        assert got.masks.shape == expected.masks.shape == (len(got), *image.shape[1:])
        # Pixels may flip where the probability is 0.5 up to float noise: the blender pools
        # unclipped boxes and RoIAlign reads 0 outside the bases, so a box leaving the image
        # has logit exactly 0 there (a reference quirk; frequent with random weights).
        assert _iou(got.masks, expected.masks) > 0.99
        for a, b in zip(got.masks, expected.masks):
            assert (a != b).sum().item() <= 0.01 * a.numel()
    assert total > 0, "no detections: the comparison would be vacuous"


def test_static_export_restores_train_mode_and_fixes_the_shape(tmp_path: Path) -> None:
    """Fails if export leaves a training model in eval mode (or flips submodules), or if
    dynamic=False still produces symbolic axes."""
    import onnx

    _, model, _ = spread_model(seed=3)
    model.train()
    path = export_onnx(model, tmp_path / "static.onnx", height=64, width=64, dynamic=False)
    assert all(m.training for m in model.modules())
    proto = onnx.load(str(path))
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 64, 64]
    # Without a cfg the file has no config: OnnxPredictor then needs one.
    assert read_onnx_config(path) is None
    with pytest.raises(ValueError, match="no blendmask config"):
        OnnxPredictor(path)


def test_export_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`blendmask export --no-end-to-end` writes the network-only file, checks it at two sizes
    and prints the diffs (the end-to-end default: tests/test_export_e2e.py)."""
    from blendmask.cli import main

    cfg, model, _ = spread_model(seed=4)
    weights = tmp_path / "model.pt"
    save_model_file(weights, cfg, model)
    out = tmp_path / "out" / "model.onnx"
    assert main(["export", "--weights", str(weights), "--out", str(out), "--no-end-to-end"]) == 0
    assert out.is_file() and out.stat().st_size > 0
    printed = capsys.readouterr().out
    # default size: the tiny test size 64 x 96, then a smaller one for the dynamic axes
    assert "traced at 64x96" in printed
    assert printed.count("max abs diff") == 2
    assert read_onnx_config(out).to_dict() == cfg.to_dict()


def test_bad_input(tmp_path: Path) -> None:
    _, model, _ = spread_model(seed=5)
    with pytest.raises(ValueError, match="height"):
        export_onnx(model, tmp_path / "x.onnx", height=50, width=64)
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        OnnxPredictor(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="images"):
        check_onnx(model, tmp_path / "missing.onnx", torch.rand(3, 64, 64))
