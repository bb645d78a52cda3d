"""The time budget (training/budget.py): a moving window of update times, plans that grow and
shrink, a reserve for the final evaluation, and a run that ends on time whatever the load."""

from __future__ import annotations

import pytest

from blendmask.training.budget import TimeBudget
from blendmask.training.optim import compress_steps


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def simulate(
    budget_s: float,
    seconds_per_update,
    *,
    max_iter: int = 100_000,
    eval_period: int = 0,
    eval_seconds: float = 0.0,
    expected_eval: float | None = None,
) -> dict:
    """The loop of training/loop.py against a fake clock: updates cost `seconds_per_update(t)`
    (t: seconds since the start), an evaluation every `eval_period` updates and a final one
    cost `eval_seconds`. Returns the plans made and when the run (final evaluation included)
    ended."""
    clock = Clock()
    budget = TimeBudget(budget_s, clock=clock, reserve_final_eval=eval_seconds > 0)
    if expected_eval is not None:
        budget.expect_evaluation(expected_eval)
    budget.begin(0)
    plans, end, it = [], max_iter, 0
    while it < end:
        clock.now += seconds_per_update(budget.elapsed())
        it += 1
        budget.iteration_done(it)
        if budget.plan_due(it):
            end, _ = budget.plan(it, max_iter=max_iter, eval_period=eval_period)
            plans.append((it, end))
        if budget.expired() and it < end:
            break
        if eval_period and it % eval_period == 0 and it < end:
            clock.now += eval_seconds
            budget.evaluation_done(eval_seconds)
    clock.now += eval_seconds  # the final evaluation
    return {"plans": plans, "iterations": it, "ended": budget.elapsed(), "budget": budget}


def test_first_plan_after_the_timing_window_then_every_few_updates():
    clock = Clock()
    budget = TimeBudget(60.0, clock=clock, reserve_final_eval=False)
    budget.begin(0)
    due = []
    for it in range(1, 30):
        clock.now += 2.0 if it <= 3 else 1.0  # slow first updates are not timed
        budget.iteration_done(it)
        due.append(budget.plan_due(it))
        if due[-1]:
            budget.plan(it, max_iter=1000, eval_period=0)
    first = due.index(True) + 1
    assert first == TimeBudget.WARMUP_ITERS + TimeBudget.MIN_TIMED
    assert budget.seconds_per_iteration(0) == pytest.approx(1.0)
    later = [i + 1 for i, d in enumerate(due) if d][1:]
    assert later == [first + TimeBudget.REPLAN_EVERY * k for k in range(1, len(later) + 1)]


def test_plan_counts_the_recent_window_not_the_slow_start():
    """A machine busy during the first updates (3 s each) and then free (1 s): the estimate
    follows the recent updates, and the plan grows once the load is gone."""
    result = simulate(300.0, lambda t: 3.0 if t < 60 else 1.0)
    ends = [end for _, end in result["plans"]]
    assert ends[-1] > ends[0] * 2  # grew: the first plan assumed 3 s per update
    assert result["budget"].seconds_per_iteration(0) == pytest.approx(1.0)
    assert result["ended"] == pytest.approx(300, rel=0.03)


def test_plan_shrinks_when_the_machine_slows_down():
    result = simulate(300.0, lambda t: 1.0 if t < 100 else 2.5)
    ends = [end for _, end in result["plans"]]
    assert min(ends[-5:]) < max(ends[:5])
    assert result["ended"] == pytest.approx(300, rel=0.03)


def test_run_ends_within_three_percent_with_evaluations():
    """Periodic evaluations of 12 s and a final one: the reserve keeps the final evaluation
    inside the budget, and the whole run ends within 3% of it."""
    result = simulate(
        900.0, lambda t: 3.5 if t < 180 else 1.2, max_iter=5000, eval_period=150, eval_seconds=12.0
    )
    assert result["ended"] == pytest.approx(900, rel=0.03)
    assert result["budget"].reserve() == pytest.approx(12.0)


def test_slow_updates_plan_after_a_few():
    """A loaded machine (45 s per update, a 312 s budget): the first plan comes once the timed
    updates cover PLAN_AFTER_SECONDS, not after MIN_TIMED of them (13 updates, which never came:
    the run stopped unplanned, its lr never decayed)."""
    result = simulate(312.0, lambda t: 45.0)
    # 3 untimed updates, then 3 timed ones (135 s); the plan's end is the update in flight
    assert result["plans"] and result["plans"][0] == (6, 7)
    assert result["ended"] <= 312.0 * 1.03


def test_measured_evaluation_estimate_keeps_a_slow_run_in_budget():
    """A slow machine whose final evaluation takes 150 s of a 540 s budget: with the measured
    estimate the run, evaluation included, ends within 3%; the fixed share of the budget
    (RESERVE_FRACTION) let it overrun by a quarter."""
    slow = {"seconds_per_update": lambda t: 6.0, "eval_seconds": 150.0}
    measured = simulate(540.0, expected_eval=150.0, **slow)
    assert measured["ended"] == pytest.approx(540, rel=0.03)
    assert measured["budget"].reserve() == pytest.approx(150.0)
    assert simulate(540.0, **slow)["ended"] > 540 * 1.2  # what the fixed reserve gave


def test_expected_evaluation_is_counted_in_the_plan_before_one_ran():
    """Periodic evaluations planned on a slow machine cost their measured estimate in the plan
    before the first one has run, so the first plan does not promise iterations they eat."""
    budget = TimeBudget(600.0, clock=Clock())
    budget.expect_evaluation(40.0)
    budget._durations.extend([4.0] * TimeBudget.MIN_TIMED)
    assert budget.seconds_per_iteration(eval_period=10) == pytest.approx(8.0)
    budget.evaluation_done(20.0)  # a timed evaluation replaces the estimate
    assert budget.seconds_per_iteration(eval_period=10) == pytest.approx(6.0)


def test_the_configured_schedule_caps_the_plan():
    result = simulate(300.0, lambda t: 0.1, max_iter=200)
    assert result["iterations"] == 200 and result["ended"] < 300


def test_reserve_before_and_after_an_evaluation():
    clock = Clock()
    budget = TimeBudget(1000.0, clock=clock)
    assert budget.reserve() == pytest.approx(TimeBudget.RESERVE_FRACTION * 1000)
    budget.evaluation_done(7.0)
    assert budget.reserve() == pytest.approx(7.0)
    clock.now += 1000 - 7.0 - 0.5
    assert not budget.expired()
    clock.now += 1.0
    assert budget.expired()  # the final evaluation would not fit any more
    assert TimeBudget(10.0, clock=clock, reserve_final_eval=False).reserve() == 0.0


def test_growing_plan_keeps_passed_lr_steps():
    """A plan that grows after a decay must not undo it (the lr would jump back up)."""
    assert compress_steps([40, 90], iteration=50, max_iter=100, new_max_iter=200) == [40, 50 + 120]


class SlowStart:
    """A training transform that sleeps for its first `slow` calls: a machine that is busy
    while the run starts."""

    def __init__(self, inner, slow: int, seconds: float) -> None:
        self.inner, self.slow, self.seconds, self.calls = inner, slow, seconds, 0

    def __call__(self, image, target):
        import time

        self.calls += 1
        if self.calls <= self.slow:
            time.sleep(self.seconds)
        return self.inner(image, target)


class QuickBudget(TimeBudget):
    """The budget with a short timing window, so that a 20 s test run plans several times."""

    WARMUP_ITERS, WINDOW_ITERS, MIN_TIMED, REPLAN_EVERY = 1, 6, 4, 4

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.plans: list[int] = []

    def plan(self, iteration, *, max_iter, eval_period):
        planned = super().plan(iteration, max_iter=max_iter, eval_period=eval_period)
        self.plans.append(planned[0])
        return planned


@pytest.mark.slow
def test_training_with_a_slow_start_uses_its_budget(tmp_path, shapes_dataset):
    """run_training under a 20 s budget whose first iterations are slowed down (0.6 s of
    sleep per batch): the first plans are short, later plans grow once the iterations speed up,
    and training stops close to the budget, not at the first plan's end (which is what
    happened when a plan could only shrink)."""
    import time

    from blendmask.presets import get_preset
    from blendmask.training.loaders import build_train_dataset
    from blendmask.training.loop import run_training
    from blendmask.training.train_config import resolve_dataset_classes

    cfg = get_preset("tiny")
    cfg.data.train_json = str(shapes_dataset["train_json"])
    cfg.data.train_images = str(shapes_dataset["train_images"])
    cfg.data.min_size_train, cfg.data.max_size_train = [64], 96
    cfg.solver.max_iter, cfg.solver.steps, cfg.solver.log_period = 100_000, [90_000], 5
    start = time.perf_counter()
    budget = QuickBudget(20.0, start=start, reserve_final_eval=False)
    dataset = build_train_dataset(cfg)
    dataset.transforms = SlowStart(dataset.transforms, slow=2 * 10, seconds=0.3)
    cfg = resolve_dataset_classes(cfg, dataset, quiet=True)
    result = run_training(
        cfg, out_dir=tmp_path, dataset=dataset, device="cpu", time_budget=budget, verbose=False
    )
    trained = time.perf_counter() - start
    assert len(budget.plans) >= 3
    assert max(budget.plans[1:]) > budget.plans[0]  # grew after the slow start
    assert 0.9 * 20 <= trained <= 1.1 * 20  # checkpoint + curves.png are the slack
    assert result.iteration > 10  # went on well past the slow iterations


def test_evaluation_period_follows_every_plan():
    """Each plan rescales the evaluation period to keep the configured number of evaluations
    (3 periodic + the final one here): a period fixed by the first plan alone, made from slow
    iterations on a loaded machine, evaluated a nuclei run every 18 of its 1,100 iterations
    (30 s each). After a re-plan, no evaluation comes within half a period of the last one."""
    from types import SimpleNamespace

    from blendmask.presets import get_preset
    from blendmask.training.loop import plan_time_budget
    from blendmask.training.training_run import TrainingRun

    class FixedPlans:
        def __init__(self, plans: list[int]) -> None:
            self.plans, self.planned, self.seconds = plans, False, 900.0

        def plan(self, iteration, *, max_iter, eval_period):
            self.planned = True
            return min(self.plans.pop(0), max_iter), 1.0

    cfg = get_preset("tiny")
    cfg.solver.max_iter, cfg.solver.steps, cfg.solver.eval_period = 2000, [1500], 500
    schedule = SimpleNamespace(max_iter=2000, steps=[1500])
    schedule.replan = lambda new_max, iteration: setattr(schedule, "max_iter", new_max)
    schedule.describe = lambda: f"lr steps {schedule.steps}"
    run = SimpleNamespace(
        cfg=cfg, schedule=schedule, eval_period=500, iteration=20, has_val=True,
        planned_shown=0, last_eval_iteration=0,
    )  # fmt: skip
    log = SimpleNamespace(
        write=lambda text: None, progress=SimpleNamespace(set_total=lambda total: None)
    )
    budget = FixedPlans([72, 1100, 1108])
    plan_time_budget(run, budget, log)  # slow start: 72 iterations
    assert run.eval_period == 18
    run.iteration = 40
    plan_time_budget(run, budget, log)  # the machine is free again
    assert run.eval_period == 275
    due = [it for it in range(41, 1101) if _due(TrainingRun, run, it)]
    assert due == [275, 550, 825]
    run.iteration, run.last_eval_iteration = 275, 275
    plan_time_budget(run, budget, log)  # a re-plan right after an evaluation: period 277
    assert run.eval_period == 277 and not _due(TrainingRun, run, 277)


def _due(cls, run, iteration: int) -> bool:
    run.iteration = iteration
    return cls.evaluation_due(run)
