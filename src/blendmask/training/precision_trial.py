"""`solver.precision=auto`, decided on the real training step.

The probe (runtime/precision.py) times a few conv layers at fixed shapes. On the small CPU
presets its answer did not hold for the training loop: the probe found bf16 0.71x fp32's time,
`benchmarks/train_step.py` (fixed synthetic batches) 0.78x, but a nuclei run's updates in bf16
were *slower* than fp32's (4.1-5.2 vs 5.3-5.9 images/s; the real batches change shape from
update to update: instances per crop, positives). So when the probe finds bf16 worth trying,
the first updates alternate fp32 and bf16 (both are ordinary training updates) and the loop
keeps bf16 only when its median update is `TRAIN_MARGIN` faster than fp32's. Alternating makes
a background job's load hit both alike.
"""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING

from blendmask.runtime import distributed as dist_utils
from blendmask.runtime.precision import TRAIN_MARGIN

if TYPE_CHECKING:  # the run imports this module for PrecisionTrial
    from blendmask.training.logging import TrainingLog
    from blendmask.training.training_run import TrainingRun


class PrecisionTrial:
    """Which precision each update of the trial runs in, and the decision after it.

    Updates `start + warmup` to `start + warmup + 2 * steps - 1` alternate fp32 / bf16; the
    warm-up updates (kernel caches, first allocations) run in bf16 and are not counted."""

    def __init__(self, start_iteration: int, *, warmup: int = 3, steps: int = 6) -> None:
        self.first = start_iteration + warmup
        self.end = self.first + 2 * steps
        self.seconds: dict[str, list[float]] = {"fp32": [], "bf16": []}

    def precision_for(self, iteration: int) -> str:
        """The precision of update `iteration` (0-based, before it runs)."""
        if iteration < self.first:
            return "bf16"
        return "fp32" if (iteration - self.first) % 2 == 0 else "bf16"

    def record(self, iteration: int, seconds: float) -> None:
        if self.first <= iteration < self.end:
            self.seconds[self.precision_for(iteration)].append(seconds)

    def done(self, iteration: int) -> bool:
        """Whether update `iteration` (the next to run) is past the trial."""
        return iteration >= self.end

    def decide(self) -> tuple[str, str]:
        """(the precision, a line for the log)."""
        fp32, bf16 = (statistics.median(self.seconds[p]) for p in ("fp32", "bf16"))
        chosen = "bf16" if bf16 < (1.0 - TRAIN_MARGIN) * fp32 else "fp32"
        n = len(self.seconds["fp32"])
        return chosen, (
            f"solver.precision auto -> {chosen} (training updates, median of {n} each: fp32 "
            f"{fp32:.3f} s, bf16 {bf16:.3f} s; bf16 must be {TRAIN_MARGIN:.0%} faster)"
        )


def before_update(run: TrainingRun) -> float:
    """Set the precision of the update about to run (during a trial); its start time."""
    if run.trial is not None:
        run.precision = run.trial.precision_for(run.iteration)
    return time.perf_counter()


def after_update(run: TrainingRun, started: float, log: TrainingLog) -> None:
    """Time the update that just ran (`run.iteration` already counts it); at the trial's end
    take rank 0's decision on every rank and say it."""
    trial = run.trial
    if trial is None:
        return
    trial.record(run.iteration - 1, time.perf_counter() - started)
    if not trial.done(run.iteration):
        return
    decided = trial.decide() if run.info.is_main else None
    run.precision, note = dist_utils.broadcast_object(decided)  # type: ignore[misc]
    run.trial = None
    log.write(note)
