"""Training runs: an --out holding a run of another config is refused, or with
--new-out-if-changed the run goes into OUT-2 (and the same command later resumes OUT-2); a
ResNet body trained without ImageNet weights warns."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from blendmask.cli import main

# Slow: real training runs (`pytest -m "not slow"` leaves them out).
pytestmark = pytest.mark.slow

FAST = [
    "--preset",
    "tiny",
    "--device",
    "cpu",
    "--max-iter",
    "1",
    "--set",
    "data.min_size_train=[64]",
    "--set",
    "data.max_size_train=96",
    "--set",
    "data.num_workers=0",
]


def train_args(out: Path, shapes: dict[str, Path], *extra: str) -> list[str]:
    data = [
        "--train-json",
        str(shapes["train_json"]),
        "--train-images",
        str(shapes["train_images"]),
    ]
    return ["train", "--out", str(out), *data, *FAST, *extra]


def saved_config(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["config"]


def test_an_out_of_another_config_is_refused_or_becomes_out_2(tmp_path, shapes_dataset, capsys):
    out = tmp_path / "run"
    assert main(train_args(out, shapes_dataset)) == 0
    first = (out / "last.pt").read_bytes()
    other = ["--set", "model.fcos.num_cls_convs=2"]  # another network

    assert main(train_args(out, shapes_dataset, *other)) == 2
    err = capsys.readouterr().err
    assert "model.fcos.num_cls_convs: 1 (checkpoint) -> 2 (now)" in err
    assert "--new-out-if-changed" in err

    assert main(train_args(out, shapes_dataset, *other, "--new-out-if-changed")) == 0
    captured = capsys.readouterr().out
    second = tmp_path / "run-2"
    assert f"training into {second} instead" in captured
    assert f"wrote {second / 'model.pt'}" in captured
    assert (out / "last.pt").read_bytes() == first  # the first run is left alone
    assert saved_config(second / "last.pt")["model"]["fcos"]["num_cls_convs"] == 2

    # The same command again continues run-2 (it holds this config) rather than making run-3.
    assert main(train_args(out, shapes_dataset, *other, "--new-out-if-changed")) == 0
    assert f"resuming from {second / 'last.pt'}" in capsys.readouterr().out
    assert not (tmp_path / "run-3").exists()
    # And the first config, with the flag, still resumes its own folder.
    assert main(train_args(out, shapes_dataset, "--new-out-if-changed")) == 0
    assert f"resuming from {out / 'last.pt'}" in capsys.readouterr().out
