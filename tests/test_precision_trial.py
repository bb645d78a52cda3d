"""`solver.precision=auto` decided on real training updates (training/precision_trial.py).

Fails when the trial does not alternate fp32 and bf16 after its warm-up, keeps bf16 without a
10% faster median update, or when a training run with auto does not end the trial with one
precision for the remaining updates and a line that says what it measured.
"""

from __future__ import annotations

import logging

import pytest
import torch

from blendmask.presets import get_preset
from blendmask.training import training_run
from blendmask.training.loaders import build_train_dataset
from blendmask.training.loop import run_training
from blendmask.training.precision_trial import PrecisionTrial
from blendmask.training.train_config import resolve_dataset_classes


def test_the_trial_alternates_after_its_warm_up():
    trial = PrecisionTrial(10, warmup=2, steps=3)
    assert [trial.precision_for(i) for i in range(10, 18)] == [
        "bf16", "bf16", "fp32", "bf16", "fp32", "bf16", "fp32", "bf16",
    ]  # fmt: skip
    assert not trial.done(17) and trial.done(18)


@pytest.mark.parametrize("bf16, chosen", [(1.2, "fp32"), (0.95, "fp32"), (0.85, "bf16")])
def test_bf16_is_kept_only_when_its_median_update_is_10_percent_faster(bf16, chosen):
    trial = PrecisionTrial(0, warmup=1, steps=3)
    for i in range(1, 7):
        # fp32 takes 1 s; one bf16 update is slowed 5x by a background job: medians decide
        seconds = 1.0 if trial.precision_for(i) == "fp32" else bf16 * (5.0 if i == 2 else 1.0)
        trial.record(i, seconds)
    got, note = trial.decide()
    assert got == chosen
    assert f"-> {chosen}" in note and "median of 3 each" in note


@pytest.mark.slow
def test_a_run_with_auto_times_both_then_keeps_one(tmp_path, shapes_dataset, monkeypatch, caplog):
    cfg = get_preset("tiny")
    cfg.data.train_json = str(shapes_dataset["train_json"])
    cfg.data.train_images = str(shapes_dataset["train_images"])
    cfg.solver.max_iter, cfg.solver.steps, cfg.solver.precision = 17, [16], "auto"
    dataset = build_train_dataset(cfg)
    cfg = resolve_dataset_classes(cfg, dataset, quiet=True)
    times = {"fp32_channels_last": 1.0, "bf16_channels_last": 0.5}
    monkeypatch.setattr(training_run, "training_precision", lambda dev, channels: ("bf16", times))
    runs: list = []
    real_prepare = training_run.prepare_run

    def spy_prepare(*args, **kwargs):
        run = real_prepare(*args, **kwargs)
        assert run.trial is not None and run.precision == "bf16"
        runs.append(run)
        return run

    monkeypatch.setattr("blendmask.training.loop.prepare_run", spy_prepare)
    with caplog.at_level(logging.INFO, logger="blendmask"):
        result = run_training(cfg, out_dir=tmp_path, dataset=dataset, device="cpu")
    (run,) = runs
    assert result.iteration == 17 and run.trial is None and run.precision in ("fp32", "bf16")
    lines = [r.getMessage() for r in caplog.records if "solver.precision auto" in r.getMessage()]
    assert any("training probe" in line for line in lines), lines
    assert any("training updates, median of 6 each" in line for line in lines), lines
    assert (
        torch.load(tmp_path / "model.pt", weights_only=True)["config"]["solver"]["precision"]
        == "auto"
    )
