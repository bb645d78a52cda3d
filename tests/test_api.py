"""The public API: build, Predictor, model files (the adapter: test_adapter.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import blendmask
from blendmask.checkpoint_io import load_model_file, read_model_file, save_model_file


def tiny_cfg():
    cfg = blendmask.get_preset("tiny")
    cfg.model.fcos.inference_th_test = 0.0
    return cfg


def test_build_returns_three_modules() -> None:
    model, criterion, post = blendmask.build(tiny_cfg())
    assert all(isinstance(m, torch.nn.Module) for m in (model, criterion, post))


def test_predictor_accepts_paths_pil_arrays_and_tensors(tmp_path) -> None:
    torch.manual_seed(0)
    predictor = blendmask.Predictor.from_config(tiny_cfg(), device="cpu", score_threshold=None)
    arr = (np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)
    path = tmp_path / "a.png"
    Image.fromarray(arr).save(path)
    inputs = [path, str(path), Image.fromarray(arr), arr, torch.from_numpy(arr).permute(2, 0, 1)]
    dets = predictor(inputs)
    assert len(dets) == len(inputs)
    for d in dets:
        assert d.masks.shape[1:] == (50, 70)
    # Same pixels, same answer, whatever the container.
    for d in dets[1:]:
        assert torch.equal(d.boxes, dets[0].boxes) and torch.equal(d.masks, dets[0].masks)


def test_model_file_round_trip_with_weights_only(tmp_path) -> None:
    cfg = tiny_cfg()
    model, _, _ = blendmask.build(cfg)
    path = tmp_path / "model.pt"
    save_model_file(path, cfg, model)
    payload = torch.load(path, weights_only=True)
    assert payload["format_version"] == 1
    cfg2, model2, _, _ = load_model_file(path)
    assert cfg2 == cfg
    for (k, v), (k2, v2) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


def test_model_file_errors_name_the_file(tmp_path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="bad.pt"):
        read_model_file(bad)
    other = tmp_path / "other.pt"
    torch.save({"proposal_generator.fcos_head.cls_logits.weight": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match="other.pt.*convert"):
        read_model_file(other)
    newer = tmp_path / "newer.pt"
    torch.save({"format_version": 99, "config": {}, "model": {}}, newer)
    with pytest.raises(ValueError, match="newer.pt.*newer"):
        read_model_file(newer)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        read_model_file(tmp_path / "missing.pt")
