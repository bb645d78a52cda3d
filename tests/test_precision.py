"""The measured choice of number format and layout (runtime/precision.py,
modeling/precision_gate.py).

Fails when the probe can pick a path slower than fp32, picks bf16 without the accuracy gate,
measures again although this machine's timings are cached, or when bf16 inference of a tiny
model no longer passes the gate (mask IoU >= 0.98 against fp32 on the same detections).
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers.models import shapes_images, spread_model

from blendmask.modeling import precision_gate
from blendmask.predictor import Predictor
from blendmask.runtime import precision

FP32_SECONDS = 1.0


def stub_timer(seconds: dict[str, float], calls: list[str] | None = None):
    """A timer that never runs the layers: each path takes the seconds given for it."""

    def timer(path, run):
        if calls is not None:
            calls.append(path.name)
        return seconds[path.name]

    return timer


def times_with(bf16: float) -> dict[str, float]:
    return {
        "fp32_contiguous": FP32_SECONDS * 1.1,
        "fp32_channels_last": FP32_SECONDS,
        "bf16_contiguous": bf16 * 1.2,
        "bf16_channels_last": bf16,
    }


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(precision.CACHE_ENV, str(tmp_path / "cache"))


@pytest.mark.parametrize("bf16", [1.5, 1.0, 0.97])
def test_fp32_wins_when_bf16_is_not_clearly_faster(bf16):
    gate_calls = []
    times = precision.measure_paths(torch.device("cpu"), timer=stub_timer(times_with(bf16)))
    chosen = precision.choose_path(times, lambda path: gate_calls.append(path) or True)
    assert chosen == precision.InferencePath("fp32", channels_last=True)
    assert gate_calls == []  # a slower path is not even worth gating


def test_bf16_wins_only_when_faster_and_the_gate_passes():
    times = precision.measure_paths(torch.device("cpu"), timer=stub_timer(times_with(0.5)))
    assert precision.choose_path(times, lambda path: True).name == "bf16_channels_last"
    refused = precision.choose_path(times, lambda path: False)
    assert refused.name == "fp32_channels_last"
    assert times[refused.name] == min(times["fp32_contiguous"], times["fp32_channels_last"])


def test_probe_is_cached_per_machine_and_a_cache_hit_skips_timing(tmp_path):
    calls: list[str] = []
    first = precision.probe_times("cpu", timer=stub_timer(times_with(0.5), calls))
    assert len(calls) == 4 * 6  # four paths, a warm-up round and five timed rounds
    cached = json.loads((tmp_path / "cache" / precision.CACHE_FILE).read_text())
    (entry,) = cached.values()
    assert entry["machine"]["torch"] == torch.__version__
    assert entry["seconds"] == first

    def refuse(path, run):
        raise AssertionError("timed again despite a cached result")

    assert precision.probe_times("cpu", timer=refuse) == first


def noisy_timer(spread: float):
    """`stub_timer(times_with(0.5))` whose fp32_contiguous runs alternate between its seconds
    and `spread` times them (a machine busy in every other run)."""
    seconds = times_with(0.5)
    count = [0]

    def timer(path, run):
        if path.name != "fp32_contiguous":
            return seconds[path.name]
        count[0] += 1
        return seconds[path.name] * (spread if count[0] % 2 else 1.0)

    return timer


@pytest.mark.parametrize("spread, cached", [(1.25, False), (1.15, True)])
def test_a_probe_whose_runs_spread_over_20_percent_is_not_cached(tmp_path, spread, cached):
    """A busy machine's timings choose this run's path but must not be kept for good: with a
    path's runs spread over 20% (max/min > 1.2) the next call measures again."""
    first = precision.probe_times("cpu", timer=noisy_timer(spread))
    assert precision.choose_path(first, lambda path: True).name == "bf16_channels_last"
    assert (tmp_path / "cache" / precision.CACHE_FILE).is_file() == cached
    calls: list[str] = []
    again = precision.probe_times("cpu", timer=stub_timer(times_with(0.5), calls))
    assert (calls == []) == cached
    assert again == (first if cached else times_with(0.5))


def test_a_busy_probe_measures_again_then_keeps_each_paths_fastest_run(tmp_path):
    """Under another job's load (bf16 runs slowed 4x two times in three, so their median is
    twice fp32's) the probe tries PROBE_ATTEMPTS times, then decides on the fastest runs:
    bf16 at 0.5x, as measured quietly; nothing is cached."""
    seconds, count = times_with(0.5), {"n": 0}

    def busy(path, run):
        if path.name != "bf16_channels_last":
            return seconds[path.name]
        count["n"] += 1
        return seconds[path.name] * (4.0 if count["n"] % 3 else 1.0)

    got, times = precision.training_precision(torch.device("cpu"), timer=busy)
    assert got == "bf16" and times["bf16_channels_last"] == 0.5
    assert count["n"] == precision.PROBE_ATTEMPTS * 6  # a warm-up and 5 timed rounds each
    assert not (tmp_path / "cache" / precision.CACHE_FILE).exists()


def test_measure_paths_times_every_path_with_the_real_layers():
    times = precision.measure_paths(torch.device("cpu"), repeats=1, size=(8, 8))
    assert set(times) == {p.name for p in precision.PATHS}
    assert all(seconds > 0 for seconds in times.values())


@pytest.mark.parametrize("bf16, chosen", [(1.2, "fp32"), (0.95, "fp32"), (0.85, "bf16")])
def test_training_auto_takes_bf16_only_when_clearly_faster(bf16, chosen):
    """solver.precision=auto: bf16 only past TRAIN_MARGIN (10%), never a slower path; the
    training probe times only the step's channels-last layout."""
    calls: list[str] = []
    got, times = precision.training_precision(
        torch.device("cpu"), channels=96, timer=stub_timer(times_with(bf16), calls)
    )
    assert got == chosen
    assert set(calls) == {"fp32_channels_last", "bf16_channels_last"}
    assert times["bf16_channels_last"] == bf16


def test_training_probe_runs_forward_and_backward_of_the_real_layers():
    runs = precision.time_paths(
        torch.device("cpu"), repeats=1, size=(8, 8), train=True, channels=32
    )
    assert set(runs) == {"fp32_channels_last", "bf16_channels_last"}
    assert all(s > 0 for values in runs.values() for s in values)


def test_unknown_precision_is_refused():
    cfg, model, post = spread_model()
    with pytest.raises(ValueError, match="precision: expected one of fp32, bf16, auto"):
        Predictor(cfg, model, post, "cpu", precision="fp16")


def _images(count: int = 3) -> list[torch.Tensor]:
    return [torch.from_numpy(i).permute(2, 0, 1).contiguous() for i in shapes_images(count)]


def test_bf16_masks_pass_the_gate_on_a_tiny_model(monkeypatch):
    """The gate itself: bf16 network outputs blended on fp32's detections agree (IoU >= 0.98);
    `auto` then runs bf16 when the (stubbed) probe says it is faster, fp32 when the gate fails."""
    monkeypatch.setattr(precision_gate, "probe_times", lambda device: times_with(0.5))
    cfg, model, post = spread_model()
    auto = Predictor(cfg, model, post, "cpu", precision="auto", score_threshold=None)
    auto(_images())
    report = auto.precision_report
    assert report["gate"]["bf16"]["detections"] > 10
    assert report["gate"]["bf16"]["mean_mask_iou"] >= precision.GATE_MASK_IOU
    assert report["path"] == "bf16_channels_last"

    monkeypatch.setattr(precision_gate, "GATE_MASK_IOU", 1.01)  # no path could pass this
    strict = Predictor(cfg, model, post, "cpu", precision="auto", score_threshold=None)
    fp32 = Predictor(cfg, model, post, "cpu", score_threshold=None)
    got, want = strict(_images()), fp32(_images())
    assert strict.precision_report["path"] == "fp32_channels_last"
    for a, b in zip(got, want):
        torch.testing.assert_close(a.scores, b.scores)


def test_bf16_runs_the_network_in_bf16():
    """precision="bf16" changes the numbers (slightly): it is not fp32 under another name."""
    cfg, model, post = spread_model()
    got = Predictor(cfg, model, post, "cpu", precision="bf16", score_threshold=None)(_images(1))
    want = Predictor(cfg, model, post, "cpu", score_threshold=None)(_images(1))
    assert not torch.equal(got[0].scores, want[0].scores)
    assert float((got[0].scores[:5] - want[0].scores[:5]).abs().max()) < 0.05


def test_predict_command_takes_precision(tmp_path, monkeypatch):
    """`predict --precision auto` runs (the stubbed probe makes bf16 the candidate) and records
    the precision in its settings; a precision for a ready predictor (`--onnx`) is refused."""
    from PIL import Image

    from blendmask.checkpoint_io import save_model_file
    from blendmask.cli import main
    from blendmask.prediction.predict import predict_images

    monkeypatch.setattr(precision_gate, "probe_times", lambda device: times_with(0.5))
    cfg, model, _ = spread_model()
    save_model_file(tmp_path / "model.pt", cfg, model)
    Image.fromarray(shapes_images(1)[0]).save(tmp_path / "a.png")
    base = ["predict", "--weights", str(tmp_path / "model.pt"), str(tmp_path / "a.png")]
    args = [*base, "--out", str(tmp_path / "out"), "--num-workers", "0", "--conf", "0"]
    assert main([*args, "--precision", "auto", "--device", "cpu", "--no-overlays"]) == 0
    settings = json.loads((tmp_path / "out" / "predict_settings.json").read_text())
    assert settings["precision"] == "auto"
    with pytest.raises(ValueError, match="precision 'bf16': for a model file"):
        predict_images(
            weights=None,
            predictor=object(),
            inputs=[tmp_path],
            out=tmp_path / "o",
            precision="bf16",
        )
