"""Which number format and memory layout inference runs in, chosen by measuring this machine.

CPUs differ: a 3x3 conv runs twice as fast in bf16 on a CPU with AVX512-BF16, while bf16
autocast is slower than fp32 on one without; channels-last helps oneDNN on some and not on
others. So the choice is measured, not fixed: `probe_times` times a few of the network's own
layers (a ResNet bottleneck at stride 4 and an FCOS tower unit, conv 3x3 + GroupNorm + ReLU at
256 channels: the layers that hold most of the FLOPs of every preset) in each `PATHS` entry,
interleaved run by run so that background load hits all paths alike, and keeps the median.
On a busy machine (runs of a path spread more than `MAX_SPREAD`) it measures again, up to
`PROBE_ATTEMPTS` times, and then keeps each path's fastest run: load only ever adds time, and
a median of runs that shared the cores with another job picked fp32 for a network whose bf16
step `benchmarks/train_step.py` measures at 0.78x fp32's.

The result is cached per machine (CPU model and flags, thread count, torch version, device) in
`cache_dir()`: `$BLENDMASK_CACHE_DIR`, else `$XDG_CACHE_HOME/blendmask`, else
`~/.cache/blendmask`, written atomically. Delete the file to measure again. A measurement whose
runs of one path spread more than `MAX_SPREAD` (max/min > 1.2: a busy machine) still decides
the current run but is not cached, so the next run measures again.

`ranked_paths` orders the candidates: a bf16 path is a candidate only when it beats the fastest
fp32 path by `margin` (5%: less is within timing noise); the fastest fp32 path always ends the
list, so the choice is never slower than fp32. A bf16 candidate must also pass the accuracy gate
(`GATE_MASK_IOU`, checked by the caller on the user's own images: `modeling/precision_gate.py`).

Training (`solver.precision=auto`, `training_precision`) asks the same probe in its training
mode: forward and backward of the probe layers at the model's FPN width, only for the
channels-last layout that the training step uses; bf16 is worth trying only when it beats fp32
by `TRAIN_MARGIN`, and the first real updates then decide (training/precision_trial.py). Its
accuracy gate (mask AP within 0.01 of fp32 at equal iterations, 2 seeds)
is a benchmark (`benchmarks/bf16_train_gate.py`), not a per-run check: docs/speed.md gives the
figures it measured.

The bottom layer: imports only torch and `blendmask.atomic`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from blendmask.atomic import write_json

PRECISIONS = ("fp32", "bf16", "auto")
# Issue 25's gate: mean mask IoU against fp32 on the same detections.
GATE_MASK_IOU = 0.98
CACHE_ENV = "BLENDMASK_CACHE_DIR"
CACHE_FILE = "precision_probe.json"
PROBE_VERSION = 1  # bump when the probed layers change: old timings then do not count
# bf16 training must beat fp32 by this much to be chosen: its gains are smaller than
# inference's (the backward's weight gradients and the optimizer stay fp32), and a choice
# within noise would trade accuracy for nothing.
TRAIN_MARGIN = 0.10
# Largest max/min of one path's timed runs that is cached: beyond it the machine was busy.
MAX_SPREAD = 1.2
PROBE_ATTEMPTS = 3
# CPU flags that decide which kernels oneDNN can use (the rest do not change the timing).
_RELEVANT_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


@dataclass(frozen=True)
class InferencePath:
    """A number format (`dtype`: "fp32", or "bf16" through torch.autocast) and a memory layout."""

    dtype: str
    channels_last: bool

    @property
    def name(self) -> str:
        return f"{self.dtype}_{'channels_last' if self.channels_last else 'contiguous'}"

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """The context the network runs in: nothing for fp32, bf16 autocast otherwise."""
        if self.dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


PATHS = tuple(InferencePath(d, cl) for d in ("fp32", "bf16") for cl in (False, True))


def check_precision(value: str) -> str:
    if value not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {value!r}")
    return value


def cache_dir() -> Path:
    """Where the probe's timings are kept (see the module docstring)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "blendmask"


def _cpu_description() -> tuple[str, list[str]]:
    """(CPU model name, the relevant flags it has), from /proc/cpuinfo where there is one."""
    model, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    return model, [f for f in _RELEVANT_FLAGS if f in flags]


def machine_key(
    device: torch.device, mode: str = "inference", channels: int = 256
) -> dict[str, Any]:
    """What the timings depend on; its hash names the cache entry."""
    model, flags = _cpu_description()
    if device.type == "cuda":
        model = torch.cuda.get_device_name(device)
    return {
        "device": device.type,
        "cpu_or_gpu": model,
        "flags": flags,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "probe_version": PROBE_VERSION,
        "mode": mode,
        "channels": channels,
    }


def _key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def probe_network(channels: int = 256) -> nn.Module:
    """The probed layers, at the network's channel counts: a ResNet bottleneck (1x1, 3x3, 1x1
    convs, 256 -> 64 -> 256, as at stride 4) and an FCOS tower unit (3x3 conv + GroupNorm(32)
    + ReLU at 256 channels, run 4 times per level per tower)."""
    mid = channels // 4
    return nn.Sequential(
        nn.Conv2d(channels, mid, 1),
        nn.ReLU(),
        nn.Conv2d(mid, mid, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(mid, channels, 1),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.GroupNorm(32, channels),
        nn.ReLU(),
    )


def _seconds(run: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call (the device synchronised around it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


Timer = Callable[[InferencePath, Callable[[], object]], float]


def measure_paths(
    device: torch.device,
    *,
    timer: Timer | None = None,
    repeats: int = 5,
    size: tuple[int, int] = (64, 96),
) -> dict[str, float]:
    """Median seconds of the probe network in every `PATHS` entry (the paths interleaved in
    each repeat). `timer(path, run)` returns the seconds of one run (a test stubs it)."""
    runs = time_paths(device, timer=timer, repeats=repeats, size=size)
    return {name: statistics.median(values) for name, values in runs.items()}


def spread(runs: dict[str, list[float]]) -> float:
    """The largest max/min over the paths' timed runs (1.0: every run of a path equal)."""
    return max((max(v) / min(v) if min(v) > 0 else float("inf")) for v in runs.values())


def time_paths(
    device: torch.device,
    *,
    timer: Timer | None = None,
    repeats: int = 5,
    size: tuple[int, int] = (64, 96),
    train: bool = False,
    channels: int = 256,
) -> dict[str, list[float]]:
    """The seconds of each timed run of the probe network per path name (`measure_paths`
    without the median). `train`: forward and backward (weight and input gradients) of the
    channels-last paths only, the training step's layout."""
    timer = timer or (lambda path, run: _seconds(run, device))
    torch.manual_seed(0)
    net = probe_network(channels).to(device).train(train)
    image = torch.rand((1, channels, *size), device=device)
    inputs: dict[bool, tuple[nn.Module, Tensor]] = {
        False: (net, image),
        True: (
            probe_network(channels).to(device).train(train).to(memory_format=torch.channels_last),
            image.contiguous(memory_format=torch.channels_last),
        ),
    }
    inputs[True][0].load_state_dict(net.state_dict())
    paths = [p for p in PATHS if p.channels_last] if train else list(PATHS)
    times: dict[str, list[float]] = {p.name: [] for p in paths}
    with contextlib.nullcontext() if train else torch.inference_mode():
        for repeat in range(repeats + 1):  # the first round warms oneDNN's kernel caches up
            for path in paths:
                module, x = inputs[path.channels_last]
                step = _train_run if train else _forward_run
                seconds = timer(path, step(module, x, path, device))
                if repeat:
                    times[path.name].append(seconds)
    return times


def _forward_run(
    module: nn.Module, x: Tensor, path: InferencePath, device: torch.device
) -> Callable[[], object]:
    def run() -> object:
        with path.autocast(device):
            return module(x)

    return run


def _train_run(
    module: nn.Module, x: Tensor, path: InferencePath, device: torch.device
) -> Callable[[], object]:
    x = x.detach().requires_grad_(True)  # inner layers also back-propagate to their input

    def run() -> object:
        module.zero_grad(set_to_none=True)
        with path.autocast(device):
            out = module(x)
        out.float().sum().backward()
        return out

    return run


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # absent or unreadable: measure again (and rewrite it)
    return data if isinstance(data, dict) else {}


def probe_times(
    device: torch.device | str = "cpu",
    *,
    timer: Timer | None = None,
    use_cache: bool = True,
    train: bool = False,
    channels: int = 256,
) -> dict[str, float]:
    """Seconds of the probe network per path name, from the cache when this machine has an
    entry, else measured (`time_paths`, medians) and cached unless the runs of a path spread
    more than `MAX_SPREAD`. A cache that cannot be written only costs a new measurement next
    time. `train` and `channels` as in `time_paths` (each its own cache entry)."""
    device = torch.device(device)
    key = machine_key(device, "train" if train else "inference", channels)
    digest, path = _key_hash(key), cache_dir() / CACHE_FILE
    cached = _read_cache(path) if use_cache else {}
    entry = cached.get(digest)
    names = {p.name for p in PATHS if p.channels_last or not train}
    if isinstance(entry, dict) and set(entry.get("seconds", {})) == names:
        return {name: float(s) for name, s in entry["seconds"].items()}
    times, steady = _measure(device, timer, train, channels)
    # A busy machine's timings still choose this run's path, but are not kept for good.
    if use_cache and steady:
        cached[digest] = {"machine": key, "seconds": times}
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, cached)
    return times


def _measure(
    device: torch.device, timer: Timer | None, train: bool, channels: int
) -> tuple[dict[str, float], bool]:
    """(seconds per path, whether they are steady): the medians of the first attempt whose runs
    spread at most `MAX_SPREAD`, else each path's fastest run over `PROBE_ATTEMPTS`."""
    size = (96, 128) if train else (64, 96)  # training runs are shorter: a larger input
    every: dict[str, list[float]] = {}
    for _ in range(PROBE_ATTEMPTS):
        runs = time_paths(device, timer=timer, train=train, channels=channels, size=size)
        if spread(runs) <= MAX_SPREAD:
            return {name: statistics.median(values) for name, values in runs.items()}, True
        for name, values in runs.items():
            every.setdefault(name, []).extend(values)
    return {name: min(values) for name, values in every.items()}, False


def ranked_paths(times: dict[str, float], margin: float = 0.05) -> list[InferencePath]:
    """The candidates, fastest first: bf16 paths that beat the fastest fp32 path by `margin`,
    then that fp32 path (always last: the choice is never slower than fp32)."""
    by_name = {p.name: p for p in PATHS if p.name in times}
    fp32 = min((p for p in by_name.values() if p.dtype == "fp32"), key=lambda p: times[p.name])
    limit = times[fp32.name] * (1.0 - margin)
    faster = [by_name[n] for n in sorted(times, key=times.get) if times[n] < limit]
    return [p for p in faster if p.dtype != "fp32"] + [fp32]


def choose_path(
    times: dict[str, float], gate: Callable[[InferencePath], bool], margin: float = 0.05
) -> InferencePath:
    """The fastest candidate of `ranked_paths` whose `gate(path)` holds (fp32 needs none)."""
    for path in ranked_paths(times, margin):
        if path.dtype == "fp32" or gate(path):
            return path
    raise AssertionError("ranked_paths always ends with an fp32 path")


def training_precision(
    device: torch.device, *, channels: int = 256, timer: Timer | None = None
) -> tuple[str, dict[str, float]]:
    """`solver.precision=auto`: "bf16" where the probe's training mode finds it `TRAIN_MARGIN`
    faster than fp32 on this machine, else "fp32"; with the timings it decided on. CUDA trains
    under `solver.amp` instead, so auto is fp32 there."""
    if device.type != "cpu":
        return "fp32", {}
    times = probe_times(device, timer=timer, train=True, channels=channels)
    return ranked_paths(times, margin=TRAIN_MARGIN)[0].dtype, times
