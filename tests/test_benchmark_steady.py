"""The benchmarks' refusal of noisy timings (benchmarks/steady.py), with stubbed timers: the
paths run interleaved, a measurement whose runs of one path differ by more than 20 % is
repeated, and after the last attempt the script exits non-zero naming the noisy path instead
of writing a figure."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# benchmarks/ is on pytest's pythonpath (pyproject.toml).
steady = importlib.import_module("steady")


def _timer(times: list[float], calls: list[str], name: str) -> Callable[[], float]:
    it: Iterator[float] = iter(times)

    def run() -> float:
        calls.append(name)
        return next(it)

    return run


def test_paths_are_interleaved() -> None:
    calls: list[str] = []
    paths = {n: _timer([1.0] * 3, calls, n) for n in ("a", "b")}
    times, attempts = steady.measure(paths, 3, log=lambda _: None)
    assert calls == ["a", "b", "a", "b", "a", "b"]
    assert attempts == 1 and times == {"a": [1.0] * 3, "b": [1.0] * 3}


def test_a_noisy_attempt_is_measured_again() -> None:
    calls: list[str] = []
    logged: list[str] = []
    paths = {
        "a": _timer([1.0, 1.1, 1.0, 1.05], calls, "a"),
        "b": _timer([1.0, 1.5, 2.0, 2.2], calls, "b"),  # 1.5x, then 1.1x
    }
    times, attempts = steady.measure(paths, 2, log=logged.append)
    assert attempts == 2
    assert times == {"a": [1.0, 1.05], "b": [2.0, 2.2]}  # the accepted attempt only
    assert "b 1.50x" in logged[0] and "a " not in logged[0]
    assert len(logged) == 3 and "max 1.500" in logged[2]  # the refused runs are shown


def test_still_noisy_after_every_attempt_names_the_noisy_path() -> None:
    calls: list[str] = []
    paths = {
        "quiet": _timer([1.0] * 6, calls, "quiet"),
        "noisy": _timer([1.0, 1.3] * 3, calls, "noisy"),
    }
    with pytest.raises(steady.NoisyMeasurement, match=r"noisy \(max/min 1\.30\)") as info:
        steady.measure(paths, 2, attempts=3, log=lambda _: None)
    assert set(info.value.spreads) == {"noisy"}
    assert len(calls) == 12  # 3 attempts of 2 interleaved rounds


def test_spread_limit_is_inclusive_and_summary() -> None:
    assert steady.noisy_paths({"a": [1.0, 1.2]}, 1.2) == {}
    assert steady.noisy_paths({"a": [1.0, 1.2001]}, 1.2) == {"a": pytest.approx(1.2001)}
    s = steady.summary([3.0, 1.0, 2.0])
    assert (s["min_s"], s["median_s"], s["max_s"], s["spread"]) == (1.0, 2.0, 3.0, 3.0)
    with pytest.raises(ValueError):
        steady.measure({"a": lambda: 1.0}, 0)


class _FakePath:
    """Stands in for train_step.TrainPath: no model, a scripted step time."""

    script: dict[str, list[float]] = {}

    def __init__(self, name: str, args: object, precision: str) -> None:
        label = name if precision == "fp32" else f"{name}_{precision}"
        self.times = iter(self.script[label])
        self.config, self.params, self.loss_last = "fake", [], 1.0

    def warm_up(self, steps: int) -> dict[str, int]:
        return {"rss_before_step_bytes": 1, "max_rss_bytes": 2}

    def timed_step(self) -> float:
        return next(self.times)


def test_train_step_refuses_noise_and_writes_nothing(tmp_path: Path, monkeypatch, capsys) -> None:
    train_step = importlib.import_module("train_step")
    _FakePath.script = {
        "blendmask_tiny": [1.0, 1.05] * 2,
        "maskrcnn_resnet50_fpn": [1.0, 1.6] * 2,
    }
    monkeypatch.setattr(train_step, "TrainPath", _FakePath)
    out = tmp_path / "t.json"
    args = ["--preset", "tiny", "--repeats", "2", "--attempts", "2", "--threads", "1"]
    assert train_step.main([*args, "--json", str(out)]) == 3
    assert "maskrcnn_resnet50_fpn (max/min 1.60)" in capsys.readouterr().err
    assert not out.exists()
    # Quiet runs: written, with min / median / max and the ratios by each.
    _FakePath.script = {"blendmask_tiny": [0.9, 1.0], "maskrcnn_resnet50_fpn": [1.0, 1.1]}
    assert train_step.main([*args, "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["models"]["blendmask_tiny"]["step"]["max_s"] == 1.0
    ratio = data["ratios"]["blendmask_fp32_over_maskrcnn_fp32"]
    assert ratio["min_s"] == pytest.approx(0.9) and ratio["max_s"] == pytest.approx(1.0 / 1.1)


class _FakeRunner:
    """Stands in for latency.py's runners: a fixed detection set, no network."""

    def __init__(self) -> None:
        self.splits: list[tuple[float, float]] = []

    def set_detections(self, n: int) -> None:
        self.n = n

    def __call__(self, image: object) -> dict[str, object]:
        import torch

        return {"boxes": torch.zeros((self.n, 4))}


def test_latency_refuses_a_noisy_model(monkeypatch) -> None:
    latency = importlib.import_module("latency")
    script = iter([1.0, 1.0, 1.0, 1.5] * 2)  # ours steady, the peer 1.5x apart, twice
    monkeypatch.setattr(latency.common, "time_once", lambda fn, device: (next(script), None))
    runners = {"ours": _FakeRunner(), "peer": _FakeRunner()}
    with pytest.raises(latency.steady.NoisyMeasurement, match=r"peer \(max/min 1\.50\)"):
        latency.time_models(
            runners, None, [3], device=None, precision="fp32", warmup=1, repeats=2, attempts=2
        )


class _Event:
    def __init__(self, name: str, parent=None, seq: int = -1, self_us: float = 0, total_us=None):
        self.name, self.cpu_parent, self.sequence_nr = name, parent, seq
        self.self_cpu_time_total = self_us
        self.cpu_time_total = self_us if total_us is None else total_us


def test_profile_charges_backward_to_the_module_of_its_forward_op() -> None:
    """profile_train_step.by_module: forward self time goes to the innermost module scope (cut
    to `depth` names), a backward node to the scope of the forward op with its sequence
    number, and the ops inside a backward node are not counted twice."""
    profile = importlib.import_module("profile_train_step")
    tower = _Event("module::head.cls_tower.0", self_us=1e5)
    conv = _Event("aten::convolution", tower, seq=7, self_us=2e6)
    body = _Event("module::body.layer2", self_us=0)
    add = _Event("aten::add", body, seq=8, self_us=5e5)
    node = _Event("autograd::engine::evaluate_function: ConvolutionBackward0", seq=7, total_us=3e6)
    inner = _Event("aten::convolution_backward", node, self_us=3e6)
    other = _Event("autograd::engine::evaluate_function: AddBackward0", seq=8, total_us=1e6)
    table = profile.by_module([tower, conv, body, add, node, inner, other], steps=1, depth=2)
    assert table["head.cls_tower"] == {"forward": pytest.approx(2.1), "backward": 3.0}
    assert table["body.layer2"] == {"forward": 0.5, "backward": 1.0}
    assert set(table) == {"head.cls_tower", "body.layer2"}
