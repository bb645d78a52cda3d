"""`TimeBudget`: a wall-clock limit for training, and the number of iterations that fit in it.

Used by `blendmask train --minutes` and the demo. After a short timing window the budget
estimates the seconds per iteration and `plan` returns the last iteration that fits; the loop
then re-plans the lr schedule to end there (`WarmupMultiStepSchedule.replan`), so the decay
still happens. Training stops anyway once the time is up (`expired`).

What the estimate is made of lives in `seconds_per_iteration` and when to plan in `plan_due`:
today the mean over all iterations since the timing window opened, planned once after the
window and again after each evaluation (whose cost is then known), and only ever shrinking the
schedule (`affordable_max_iter`). A moving window of recent iteration times, or growing the
schedule when iterations turn out faster, changes these methods only.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def affordable_max_iter(
    *, iteration: int, max_iter: int, seconds_left: float, seconds_per_iter: float
) -> int:
    """The end iteration that fits in `seconds_left` at `seconds_per_iter`, capped at `max_iter`
    and at least `iteration + 1` (the update in flight always completes)."""
    affordable = iteration + int(max(seconds_left, 0.0) / max(seconds_per_iter, 1e-6))
    if affordable >= max_iter:
        return max_iter
    return max(affordable, iteration + 1)


class TimeBudget:
    """`seconds` of training from construction (or from `start`, a `clock()` reading).

    The loop calls `begin(start_iter)` once, `iteration_done(i)` after each update,
    `evaluation_done(seconds)` after each evaluation, and `plan(i, ...)` when `plan_due(i)`.
    """

    # The first iterations are slow (allocator, cudnn autotuning, data workers starting): time
    # from this many iterations after the start ...
    WARMUP_ITERS = 3
    # ... over this many before the first plan.
    WINDOW_ITERS = 10
    # Planned time as a fraction of what is left: slack for timing noise and the checkpoints.
    MARGIN = 0.97

    def __init__(
        self,
        seconds: float,
        *,
        start: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.seconds = float(seconds)
        self._clock = clock
        self.start = clock() if start is None else float(start)
        self._timing_from: int | None = None
        self._timing_start: float | None = None
        self._eval_seconds = 0.0  # all evaluations since the start, left out of the estimate
        self._last_eval_seconds = 0.0
        self._plan_wanted = True
        self.planned = False  # whether a plan was made (the first one also rescales evaluation)

    def elapsed(self) -> float:
        return self._clock() - self.start

    def expired(self) -> bool:
        return self.elapsed() > self.seconds

    def begin(self, start_iter: int) -> None:
        """Training (re)starts at `start_iter`: the timing window opens WARMUP_ITERS later."""
        self._timing_from = start_iter + self.WARMUP_ITERS

    def iteration_done(self, iteration: int) -> None:
        """`iteration` updates are done."""
        if iteration == self._timing_from:
            self._timing_start = self._clock()

    def evaluation_done(self, seconds: float) -> None:
        """An evaluation took `seconds`: leave it out of the iteration times, spread its cost
        over the evaluation period, and plan again (once timing has begun)."""
        self._eval_seconds += seconds
        self._last_eval_seconds = seconds
        self._plan_wanted = self._timing_start is not None

    def plan_due(self, iteration: int) -> bool:
        return (
            self._plan_wanted
            and self._timing_start is not None
            and self._timing_from is not None
            and iteration >= self._timing_from + self.WINDOW_ITERS
        )

    def seconds_per_iteration(self, iteration: int, eval_period: int) -> float:
        """Measured seconds per update after `iteration` updates, with the last evaluation's
        cost spread over `eval_period` iterations (0: no evaluation during training)."""
        assert self._timing_start is not None and self._timing_from is not None
        measured = self._clock() - self._timing_start - self._eval_seconds
        per_iter = measured / (iteration - self._timing_from)
        if eval_period > 0:
            per_iter += self._last_eval_seconds / eval_period
        return per_iter

    def plan(self, iteration: int, *, max_iter: int, eval_period: int) -> tuple[int, float]:
        """(the end iteration that fits, the seconds per iteration it assumed); no further plan
        is due until the next evaluation."""
        per_iter = self.seconds_per_iteration(iteration, eval_period)
        left = self.seconds - self.elapsed()
        new_max = affordable_max_iter(
            iteration=iteration,
            max_iter=max_iter,
            seconds_left=left * self.MARGIN,
            seconds_per_iter=per_iter,
        )
        self._plan_wanted = False
        self.planned = True
        return new_max, per_iter
