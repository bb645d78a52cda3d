"""`TimeBudget`: a wall-clock limit for training, and the number of iterations that fit in it.

Used by `blendmask train --minutes` and the demo. The loop reports each update and each
evaluation; the budget keeps the durations of the most recent updates (`WINDOW_ITERS`, evaluation
time left out) and, every `REPLAN_EVERY` updates and after each evaluation, `plan` returns the
last iteration that fits in what is left. The loop then re-plans the lr schedule to end there
(`WarmupMultiStepSchedule.replan`), so the decay still happens. The plan grows as well as
shrinks: a machine that was busy during the first minutes (another job, a slow start) and then
frees up gets its time back, and one that slows down ends on time.

What is left is the budget minus the time already spent minus a reserve for the final
evaluation (the last periodic evaluation's duration; before one has run, the caller's measured
estimate from `expect_evaluation`, else `RESERVE_FRACTION` of the budget), so that the whole
command, evaluation included, ends close to the budget. Periodic evaluations still ahead are paid
for by spreading each one's cost over its period.

On a busy machine an update can take 30x its quiet time: the first plan comes once the timed
updates cover `PLAN_AFTER_SECONDS` (at least `MIN_TIMED_SLOW` of them) or `MIN_TIMED` updates,
whichever is first, so a slow run still gets its lr decay and its evaluations planned.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from blendmask.runtime import distributed as dist_utils


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
    """`seconds` for the run from construction (or from `start`, a `clock()` reading).

    The loop calls `begin(start_iter)` once, `iteration_done(i)` after each update,
    `evaluation_done(seconds)` after each evaluation, and `plan(i, ...)` when `plan_due(i)`;
    training stops when `expired()`.

    reserve_final_eval: keep time for the final evaluation inside the budget (the demo, which
        reserves its own time for evaluation and drawings, turns it off).
    eval_runs: network runs per val image (2 with flip test-time augmentation): the
        fixed-share reserve grows with it.
    """

    # The first updates are slow (allocator, caches, data workers starting): not timed.
    WARMUP_ITERS = 3
    # Durations of the most recent updates the estimate is the mean of ...
    WINDOW_ITERS = 20
    # ... and how many are needed before the first plan, or, when they are slow, how many
    # seconds of them (with at least MIN_TIMED_SLOW updates): 10 updates of 45 s each would
    # spend most of a 5-minute budget before any plan.
    MIN_TIMED = 10
    MIN_TIMED_SLOW = 3
    PLAN_AFTER_SECONDS = 30.0
    # A plan every this many updates (and after each evaluation).
    REPLAN_EVERY = 10
    # Planned time as a fraction of what is left: slack for timing noise and checkpoints.
    MARGIN = 0.99
    # The final evaluation's share of the budget until an evaluation has been timed.
    RESERVE_FRACTION = 0.04

    def __init__(
        self,
        seconds: float,
        *,
        start: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
        reserve_final_eval: bool = True,
        eval_runs: int = 1,
    ) -> None:
        self.seconds = float(seconds)
        if not math.isfinite(self.seconds) or self.seconds <= 0:
            # nan compares False with everything: the schedule would never be re-planned.
            raise ValueError(
                f"time budget (--minutes): expected a finite time > 0, got {seconds} s"
            )
        self._clock = clock
        self.start = clock() if start is None else float(start)
        self.reserve_final_eval = reserve_final_eval
        self.eval_runs = eval_runs
        self._timed_from: int | None = None
        self._last_clock: float | None = None
        self._durations: deque[float] = deque(maxlen=self.WINDOW_ITERS)
        self._last_eval_seconds: float | None = None
        self._expected_eval_seconds: float | None = None
        self._after_evaluations = 0.0
        self._can_plan = False
        self._last_plan_iteration: int | None = None
        self._plan_wanted = False
        self.planned = False  # whether a plan was made (the first one also rescales evaluation)

    def elapsed(self) -> float:
        return self._clock() - self.start

    def expect_evaluation(self, seconds: float, *, after: float = 0.0) -> None:
        """A measured estimate of one evaluation of the val set (the demo times the forward of a
        few val images before training): the reserve, and the cost of the periodic evaluations
        in a plan, until an evaluation has been timed. A fixed share of the budget instead
        reserved 4x too little on a machine 30x slower than usual.

        after: the work after the final evaluation (the demo's PQ and drawings), in
            evaluations: reserved with it, and rescaled like it when an evaluation is timed."""
        self._expected_eval_seconds = max(float(seconds), 0.0)
        self._after_evaluations = max(float(after), 0.0)

    def evaluation_seconds(self) -> float | None:
        """The last evaluation's duration, else the expected one, else None."""
        if self._last_eval_seconds is not None:
            return self._last_eval_seconds
        return self._expected_eval_seconds

    def reserve(self) -> float:
        """Seconds kept for the final evaluation (and the work after it, `expect_evaluation`)."""
        if not self.reserve_final_eval:
            return 0.0
        measured = self.evaluation_seconds()
        if measured is None:
            return self.RESERVE_FRACTION * self.eval_runs * self.seconds
        return measured * (1.0 + self._after_evaluations)

    def expired(self) -> bool:
        """Whether training must stop now to leave the final evaluation its time."""
        return self.elapsed() + self.reserve() > self.seconds

    def begin(self, start_iter: int) -> None:
        """Training (re)starts at `start_iter`: updates are timed from WARMUP_ITERS later."""
        self._timed_from = start_iter + self.WARMUP_ITERS
        self._last_clock = None

    def iteration_done(self, iteration: int) -> None:
        """`iteration` updates are done."""
        now = self._clock()
        if (
            self._last_clock is not None
            and self._timed_from is not None
            and iteration > self._timed_from
        ):
            self._durations.append(now - self._last_clock)
        if self._timed_from is not None and iteration >= self._timed_from:
            self._last_clock = now

    def evaluation_done(self, seconds: float) -> None:
        """An evaluation took `seconds`: left out of the update times (the next update is timed
        from now), spread over the evaluation period, and a plan is due."""
        self._last_eval_seconds = seconds
        if self._last_clock is not None:
            self._last_clock = self._clock()
        self._plan_wanted = True

    def can_plan(self) -> bool:
        """Whether enough updates were timed for an estimate: `MIN_TIMED`, or `MIN_TIMED_SLOW`
        that took `PLAN_AFTER_SECONDS` together. The same on every rank: the counts are of
        iterations, and the seconds are rank 0's (a collective call while it is undecided)."""
        if self._can_plan:
            return True
        timed = len(self._durations)
        if timed < self.MIN_TIMED_SLOW:
            return False
        if timed < self.MIN_TIMED:
            slow = sum(self._durations) >= self.PLAN_AFTER_SECONDS
            self._can_plan = bool(dist_utils.broadcast_object(slow))
        else:
            self._can_plan = True
        return self._can_plan

    def plan_due(self, iteration: int) -> bool:
        if not self.can_plan():
            return False
        if self._plan_wanted or self._last_plan_iteration is None:
            return True
        return iteration - self._last_plan_iteration >= self.REPLAN_EVERY

    def seconds_per_iteration(self, eval_period: int) -> float:
        """Mean duration of the recent updates, plus an evaluation's cost (the last one's, else
        the expected one) spread over `eval_period` iterations (0: no evaluation in training)."""
        per_iter = sum(self._durations) / len(self._durations)
        evaluation = self.evaluation_seconds()
        if eval_period > 0 and evaluation is not None:
            per_iter += evaluation / eval_period
        return per_iter

    def plan(self, iteration: int, *, max_iter: int, eval_period: int) -> tuple[int, float]:
        """(the end iteration that fits, capped at `max_iter`; the seconds per iteration it
        assumed)."""
        per_iter = self.seconds_per_iteration(eval_period)
        left = self.seconds - self.elapsed() - self.reserve()
        new_max = affordable_max_iter(
            iteration=iteration,
            max_iter=max_iter,
            seconds_left=left * self.MARGIN,
            seconds_per_iter=per_iter,
        )
        self._plan_wanted = False
        self._last_plan_iteration = iteration
        self.planned = True
        return new_max, per_iter
