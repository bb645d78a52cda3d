"""Interleaved timing that refuses noise: the runs of every path must agree within a limit.

On a shared CPU a background job can double a step's time. The benchmarks therefore time their
paths interleaved (A B A B ...: a change of load hits all paths alike), report every path's
min / median / max, and accept a measurement only when each path's slowest run is at most
`max_spread` (1.2: 20 %) times its fastest. Otherwise they measure again, up to `attempts`
times, and then give up naming the noisy paths (`NoisyMeasurement`) instead of reporting
noise as a figure.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

MAX_SPREAD = 1.2
ATTEMPTS = 3


class NoisyMeasurement(RuntimeError):
    """Some path's runs still differed by more than the limit after every attempt."""

    def __init__(self, spreads: dict[str, float], max_spread: float, attempts: int) -> None:
        self.spreads = spreads
        named = ", ".join(f"{name} (max/min {s:.2f})" for name, s in spreads.items())
        super().__init__(
            f"runs differ by more than {max_spread:.2f}x after {attempts} attempt(s): {named}; "
            "the machine is too busy for a figure (rerun when it is quieter, or raise --repeats)"
        )


def spread(times: list[float]) -> float:
    """max / min of a path's run times (1.0 for a single run, inf if a run took no time)."""
    if not times:
        raise ValueError("spread of no runs")
    low = min(times)
    return max(times) / low if low > 0 else float("inf")


def noisy_paths(times: dict[str, list[float]], max_spread: float) -> dict[str, float]:
    """{path: spread} of the paths whose spread exceeds `max_spread`."""
    spreads = {name: spread(runs) for name, runs in times.items()}
    return {name: s for name, s in spreads.items() if s > max_spread}


def interleaved(paths: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Call each path once per repeat, in turn (A B A B ...); each call returns its seconds."""
    if repeats < 1:
        raise ValueError(f"--repeats: expected >= 1, got {repeats}")
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeats):
        for name, run in paths.items():
            times[name].append(run())
    return times


def measure(
    paths: dict[str, Callable[[], float]],
    repeats: int,
    *,
    max_spread: float = MAX_SPREAD,
    attempts: int = ATTEMPTS,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, list[float]], int]:
    """Interleaved runs of every path, repeated until no path is noisy.

    Returns ({path: run times of the accepted attempt}, number of attempts used).
    Raises NoisyMeasurement after `attempts` noisy attempts. A spread needs two runs, so with
    `repeats` 1 every attempt is accepted (the caller should say so).
    """
    if attempts < 1:
        raise ValueError(f"--attempts: expected >= 1, got {attempts}")
    if max_spread < 1.0:
        raise ValueError(f"--max-spread: expected >= 1.0, got {max_spread}")
    noisy: dict[str, float] = {}
    for attempt in range(1, attempts + 1):
        times = interleaved(paths, repeats)
        noisy = noisy_paths(times, max_spread)
        if not noisy:
            return times, attempt
        log(
            f"  attempt {attempt}/{attempts} refused, runs differ by more than {max_spread:.2f}x: "
            + ", ".join(f"{name} {s:.2f}x" for name, s in noisy.items())
        )
        for name, runs in times.items():
            log(line(name, runs))
    raise NoisyMeasurement(noisy, max_spread, attempts)


def summary(times: list[float]) -> dict[str, float | list[float]]:
    """min / median / max / spread and the runs, in seconds."""
    return {
        "min_s": min(times),
        "median_s": statistics.median(times),
        "max_s": max(times),
        "spread": spread(times),
        "runs_s": [round(t, 6) for t in times],
    }


def line(name: str, times: list[float]) -> str:
    """One printed row: name, min / median / max and the spread."""
    s = summary(times)
    return (
        f"  {name:34s} min {s['min_s']:.3f}  median {s['median_s']:.3f}  max {s['max_s']:.3f} s"
        f"  (max/min {s['spread']:.2f})"
    )
