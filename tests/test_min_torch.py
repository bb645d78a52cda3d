"""The declared minimum torch (pyproject: torch>=2.5) lacks APIs newer releases have. Here
the missing ones are taken away from the installed torch, so the suite catches a new call to
them on any version; `make check-min-torch` (scripts/check_min_torch.sh) runs the real 2.5.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision import tv_tensors

from blendmask.cli.main import main
from blendmask.data.augment import RandomRot90
from blendmask.interop.adelaidet_files import read_adelaidet_checkpoint
from blendmask.interop.pickles import numpy_safe_globals
from blendmask.training import loop


@pytest.fixture
def torch_2_5(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch 2.5 has no `nn.utils.get_total_norm` (it came in 2.6)."""
    monkeypatch.delattr(nn.utils, "get_total_norm", raising=False)


def _params_with_grads() -> list[nn.Parameter]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Conv2d(4, 2, 1))
    net[2].bias.requires_grad_(False)  # one parameter without a gradient
    net(torch.randn(2, 3, 8, 8)).square().sum().backward()
    return [p for p in net.parameters() if p.requires_grad]


@pytest.mark.parametrize("old_torch", [False, True])
def test_total_grad_norm_is_the_norm_of_all_gradients_and_changes_none(
    monkeypatch: pytest.MonkeyPatch, old_torch: bool
) -> None:
    if old_torch:
        monkeypatch.delattr(nn.utils, "get_total_norm", raising=False)
    params = _params_with_grads()
    before = [p.grad.clone() for p in params]
    naive = torch.cat([p.grad.flatten() for p in params]).double().norm()
    norm = loop.total_grad_norm(params)
    assert float(norm) == pytest.approx(float(naive), rel=1e-6)
    for p, grad in zip(params, before, strict=True):
        assert torch.equal(p.grad, grad)


def test_tiny_training_without_get_total_norm(torch_2_5, tmp_path, shapes_dataset) -> None:
    """The tiny preset does not clip (solver.clip_grad_norm 0), the path that measured the norm
    with `get_total_norm` and ended torch 2.5 runs in an AttributeError."""
    out = tmp_path / "run"
    args = [
        "train",
        "--out",
        str(out),
        "--train-json",
        str(shapes_dataset["train_json"]),
        "--train-images",
        str(shapes_dataset["train_images"]),
        "--max-iter",
        "2",
        "--preset",
        "tiny",
        "--device",
        "cpu",
        "--set",
        "data.min_size_train=[64]",
        "--set",
        "data.max_size_train=96",
        "--set",
        "data.num_workers=0",
    ]
    assert not hasattr(nn.utils, "get_total_norm")
    assert main(args) == 0
    assert (out / "model.pt").is_file()


def test_rot90_runs_under_the_torchvision_0_20_names() -> None:
    """torchvision 0.20 calls `_get_params` / `_transform` (0.21 made them `make_params` /
    `transform`); its base class raises NotImplementedError for a transform without them."""
    image = tv_tensors.Image(torch.arange(6, dtype=torch.uint8).reshape(1, 2, 3))
    rot = RandomRot90()
    torch.manual_seed(0)
    params = rot._get_params([image])
    torch.manual_seed(0)
    assert params == rot.make_params([image])
    out = rot._transform(image, {"k": 1})
    assert isinstance(out, tv_tensors.Image)
    assert torch.equal(out, torch.rot90(image.as_subclass(torch.Tensor), 1, dims=(-2, -1)))


def test_numpy_1_pth_loads_with_safe_globals_torch_2_5_accepts(tmp_path) -> None:
    """torch 2.5's `safe_globals` takes objects only (a pair (object, name) fails with
    "'tuple' object has no attribute '__module__'"), keyed by __module__ and __name__; a .pth of
    numpy arrays written with numpy 1.x names numpy.core.multiarray."""
    assert all(hasattr(g, "__module__") and hasattr(g, "__name__") for g in numpy_safe_globals())
    weight = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
    path = tmp_path / "numpy1.pth"
    state = {"backbone.fpn_lateral3.weight": weight}
    torch.save(state, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    assert b"numpy._core.multiarray" in data  # numpy 2 writes the new name; put back the old
    path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    got = read_adelaidet_checkpoint(path)
    assert torch.equal(got["backbone.fpn_lateral3.weight"], torch.from_numpy(weight))
