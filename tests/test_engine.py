"""Engine pieces: optimiser groups, the lr schedule, checkpoints, RNG state, the data stream
used for exact resumption, the time-budget plan, metrics records and drawing."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from blendmask.presets import get_preset
from blendmask.structures import Detections
from blendmask.training import checkpoint as ckpt
from blendmask.training.budget import affordable_max_iter
from blendmask.training.loaders import build_train_dataset, build_train_loader, crop_repeats
from blendmask.training.logging import MetricsFile, plot_curves, read_metrics
from blendmask.training.loop import run_training
from blendmask.training.optim import (
    WarmupMultiStepSchedule,
    build_optimizer,
    compress_steps,
    param_groups,
    scale_lr,
    warmup_multistep_factor,
)
from blendmask.training.train_config import resolve_dataset_classes
from blendmask.visualization import draw_detections, instance_color


def _naive_factor(it: int, steps: list[int], gamma: float, warmup_iters: int, wf: float) -> float:
    """detectron2's WarmupMultiStepLR written out: count the passed steps one by one."""
    factor = 1.0
    for s in steps:
        if it >= s:
            factor *= gamma
    if it < warmup_iters:
        alpha = it / warmup_iters
        factor *= wf * (1 - alpha) + alpha
    return factor


def test_warmup_multistep_matches_the_definition():
    steps, gamma, wi, wf = [7, 12], 0.1, 5, 0.001
    for it in range(20):
        expected = _naive_factor(it, steps, gamma, wi, wf)
        got = warmup_multistep_factor(
            it, steps=steps, gamma=gamma, warmup_iters=wi, warmup_factor=wf
        )
        assert got == pytest.approx(expected, rel=1e-12), it
    # the first update runs at base_lr * warmup_factor, the plateau at base_lr
    assert warmup_multistep_factor(0, steps=steps, warmup_iters=wi, warmup_factor=wf) == wf


def _lr_sequence(scheduler: WarmupMultiStepSchedule, n: int) -> list[float]:
    lrs = []
    for _ in range(n):
        lrs.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return lrs


def test_scheduler_state_dict_resumes_the_same_curve():
    def make() -> WarmupMultiStepSchedule:
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
        return WarmupMultiStepSchedule(
            opt, max_iter=12, steps=[6, 9], warmup_iters=4, warmup_factor=0.01
        )

    full = _lr_sequence(make(), 12)
    assert full[0] == pytest.approx(0.1 * 0.01)
    assert full[5] == pytest.approx(0.1) and full[6] == pytest.approx(0.01)
    first = make()
    head = _lr_sequence(first, 5)
    state, opt_state = first.state_dict(), first.optimizer.state_dict()
    resumed = make()
    resumed.optimizer.load_state_dict(opt_state)  # holds the current lr, as in last.pt
    resumed.load_state_dict(state)
    assert head + _lr_sequence(resumed, 7) == pytest.approx(full, rel=1e-12)
    # the state is the iteration count only (the plan is saved beside it): files written by
    # earlier versions, whose schedule was a functools.partial, hold the same keys
    assert state["lr_lambdas"] == [{}] and state["last_epoch"] == 5


def test_schedule_replan_moves_the_steps_ahead():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = WarmupMultiStepSchedule(opt, max_iter=20, steps=[4, 16], warmup_iters=0)
    _lr_sequence(schedule, 10)
    schedule.replan(15, iteration=10)  # 10 iterations left -> 5: the step at 16 moves to 13
    assert schedule.plan() == {"max_iter": 15, "steps": [4, 13]}
    lrs = _lr_sequence(schedule, 5)
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.01, 0.01])
    schedule.restore_plan(20, [4, 16])
    assert schedule.factor(14) == pytest.approx(0.1)


def test_linear_schedule_falls_to_zero_at_the_planned_end_and_follows_a_replan():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = WarmupMultiStepSchedule(
        opt, max_iter=20, steps=[4, 16], warmup_iters=4, warmup_factor=0.1, decay="linear"
    )
    lrs = _lr_sequence(schedule, 10)
    for it, lr in enumerate(lrs):  # warm-up ramp times (1 - it / 20); the steps are ignored
        ramp = 0.1 * (1 - it / 4) + it / 4 if it < 4 else 1.0
        assert lr == pytest.approx(ramp * (20 - it) / 20, rel=1e-12), it
    schedule.replan(15, iteration=10)  # the budget shortens the run: still 0 at the new end
    # (iteration 10's rate was set by the step before the plan changed)
    assert _lr_sequence(schedule, 5) == pytest.approx([10 / 20, 4 / 15, 3 / 15, 2 / 15, 1 / 15])
    assert schedule.factor(15) == 0.0 and schedule.factor(40) == 0.0
    assert schedule.describe() == "lr linear to 0"
    with pytest.raises(ValueError, match="multistep or linear"):
        WarmupMultiStepSchedule(opt, max_iter=5, steps=[], decay="cosine")


def test_param_groups_put_norm_parameters_without_decay():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.Conv2d(8, 8, 3),
        nn.GroupNorm(2, 8),
        FrozenBatchNorm2d(8),  # buffers only: nothing to optimise
        nn.Linear(8, 2),
    )
    model[0].weight.requires_grad_(False)  # a frozen weight is left out
    groups = param_groups(model, weight_decay=1e-4, weight_decay_norm=0.0)
    by_decay = {g["weight_decay"]: {id(p) for p in g["params"]} for g in groups}
    norm_ids = {id(p) for m in (model[1], model[3]) for p in m.parameters()}
    other_ids = {
        id(p) for m in (model[0], model[2], model[5]) for p in m.parameters() if p.requires_grad
    }
    assert by_decay[0.0] == norm_ids
    assert by_decay[1e-4] == other_ids  # biases keep the decay (reference)
    opt = build_optimizer(model, base_lr=0.02, momentum=0.9, weight_decay=1e-4)
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["lr"] == 0.02
    assert sum(len(g["params"]) for g in opt.param_groups) == len(norm_ids | other_ids)


def test_shared_parameter_appears_once():
    conv = nn.Conv2d(2, 2, 1)
    model = nn.ModuleList([conv, conv])
    groups = param_groups(model, weight_decay=1e-4, weight_decay_norm=0.0)
    assert sum(len(g["params"]) for g in groups) == 2


def test_scale_lr_is_linear():
    assert scale_lr(0.01, 16, 4) == pytest.approx(0.0025)
    assert scale_lr(0.02, 8, 32) == pytest.approx(0.08)
    with pytest.raises(ValueError):
        scale_lr(0.01, 0, 4)


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    state = ckpt.get_rng_state()
    expected = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    path = tmp_path / "rng.pt"
    ckpt.atomic_save({"rng": state}, path)
    loaded = torch.load(path, weights_only=True)["rng"]
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    ckpt.set_rng_state(loaded)
    got = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1])
    assert expected[2] == got[2]
    assert [p.name for p in tmp_path.iterdir()] == ["rng.pt"]  # no temp file left


def test_training_state_round_trip(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    opt = build_optimizer(model, base_lr=0.1)
    sched = WarmupMultiStepSchedule(opt, max_iter=10, steps=[3], warmup_iters=2)
    for _ in range(3):
        model(torch.randn(5, 3)).sum().backward()
        opt.step()
        sched.step()
    path = tmp_path / "last.pt"
    ckpt.save_training_state(
        path, model=model, optimizer=opt, scheduler=sched, scaler=None, iteration=3, config={}
    )
    torch.manual_seed(1)
    model2 = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    opt2 = build_optimizer(model2, base_lr=0.1)
    sched2 = WarmupMultiStepSchedule(opt2, max_iter=10, steps=[3], warmup_iters=2)
    it = ckpt.restore_training_state(
        ckpt.read_training_state(path), model=model2, optimizer=opt2, scheduler=sched2, scaler=None
    )
    assert it == 3
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    m1 = [opt.state[p]["momentum_buffer"] for p in model.parameters()]
    m2 = [opt2.state[p]["momentum_buffer"] for p in model2.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(m1, m2))
    assert sched2.last_iteration == 3 and opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_read_training_state_rejects_other_files(tmp_path):
    bad = tmp_path / "model.pt"
    torch.save({"model": {}}, bad)
    with pytest.raises(ValueError, match="model.pt"):
        ckpt.read_training_state(bad)
    with pytest.raises(FileNotFoundError):
        ckpt.read_training_state(tmp_path / "missing.pt")


def _tiny_train_cfg(shapes_dataset):
    cfg = get_preset("tiny")
    cfg.data.train_json = str(shapes_dataset["train_json"])
    cfg.data.train_images = str(shapes_dataset["train_images"])
    cfg.data.min_size_train = [64, 80, 96]  # random sizes: the seeds must be reproduced
    cfg.data.max_size_train = 128
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1])
def test_train_loader_resumes_the_same_batches(shapes_dataset, workers):
    """Batches from start_iter=k equal batches k, k+1, ... of a stream started at 0, with random
    resize + flip: what exact resumption needs. Fails if any augmentation used unseeded RNG."""
    cfg = _tiny_train_cfg(shapes_dataset)
    cfg.data.num_workers = workers
    dataset = build_train_dataset(cfg)
    kwargs = dict(rank=0, world_size=1, images_per_rank=2, device=torch.device("cpu"))
    torch.manual_seed(0)
    full_iter = iter(build_train_loader(cfg, dataset, start_iter=0, **kwargs))
    full = [next(full_iter) for _ in range(6)]
    torch.manual_seed(123)  # global RNG state must not matter
    resumed_iter = iter(build_train_loader(cfg, dataset, start_iter=3, **kwargs))
    resumed = [next(resumed_iter) for _ in range(3)]
    sizes = {tuple(b[0].tensor.shape[-2:]) for b in full}
    assert len(sizes) > 1, "the test needs random sizes to be meaningful"
    for (img_a, tgt_a), (img_b, tgt_b) in zip(full[3:], resumed):
        assert torch.equal(img_a.tensor, img_b.tensor)
        assert img_a.image_sizes == img_b.image_sizes
        for ta, tb in zip(tgt_a, tgt_b):
            assert ta["image_id"] == tb["image_id"]
            assert torch.equal(ta["boxes"], tb["boxes"])
            assert torch.equal(ta["masks"], tb["masks"])


def test_crop_repeats_follow_the_scaled_area():
    class Sizes:  # only the json's sizes are read: no image is decoded
        sizes = [(50, 50), (100, 100), (300, 200), (20, 10)]

        def __len__(self) -> int:
            return len(self.sizes)

        def image_size(self, index: int) -> tuple[int, int]:
            return self.sizes[index]

    cfg = get_preset("shapes_lite0")
    cfg.data.crop_size, cfg.data.test_scale, cfg.data.max_size_test = 100, 2.0, 4096
    # scaled 100^2, 200^2, 600 x 400 and 40 x 20 px: 1, 4, 24 crops of 100^2, and at least 1
    assert crop_repeats(cfg, Sizes()) == [1, 4, 24, 1]
    Sizes.sizes = [(100, 100), (100, 100)]  # 4 crops each: drawn once each, as without the rule
    assert crop_repeats(cfg, Sizes()) == [1, 1]
    Sizes.sizes = [(100, 100), (200, 100)]  # 4 and 8 crops
    assert crop_repeats(cfg, Sizes()) == [1, 2]
    cfg.data.crop_size = 0
    assert crop_repeats(cfg, Sizes()) is None


def test_train_loader_draws_by_area_only_when_asked(shapes_dataset, monkeypatch):
    cfg = _tiny_train_cfg(shapes_dataset)
    cfg.data.crop_size, cfg.data.test_scale = 64, 2.0
    dataset = build_train_dataset(cfg)
    # the shapes images are all one size: every other one twice as tall, as far as the json says
    monkeypatch.setattr(dataset, "image_size", lambda i: (64 * (1 + i % 2), 64))
    kwargs = dict(rank=0, world_size=1, start_iter=0, images_per_rank=2, device=torch.device("cpu"))
    sampler = build_train_loader(cfg, dataset, **kwargs).batch_sampler.sampler
    assert sampler.repeats == [1] * len(dataset)
    cfg.data.crop_by_area = True
    sampler = build_train_loader(cfg, dataset, **kwargs).batch_sampler.sampler
    assert sampler.repeats == crop_repeats(cfg, dataset) and max(sampler.repeats) > 1


def test_budget_plan_compresses_the_rest_of_the_schedule():
    # 100 s left at 1 s/iteration from iteration 50: end at 150 instead of 1050
    new_max = affordable_max_iter(
        iteration=50, max_iter=1050, seconds_left=100, seconds_per_iter=1.0
    )
    assert new_max == 150
    # steps already passed stay; the others keep their fraction of the remaining run
    steps = compress_steps([40, 850, 950], iteration=50, max_iter=1050, new_max_iter=new_max)
    assert steps == [40, 50 + 80, 50 + 90]
    # enough time: unchanged; no time: the update in flight still completes
    assert affordable_max_iter(iteration=0, max_iter=10, seconds_left=100, seconds_per_iter=1) == 10
    assert affordable_max_iter(iteration=7, max_iter=10, seconds_left=0, seconds_per_iter=1) == 8


def test_resolve_dataset_classes_returns_a_new_config(shapes_dataset):
    cfg = _tiny_train_cfg(shapes_dataset)
    before = cfg.to_dict()
    resolved = resolve_dataset_classes(cfg, build_train_dataset(cfg), quiet=True)
    assert cfg.to_dict() == before  # the input is not changed
    assert resolved.model.fcos.num_classes == 4  # the shapes categories, not tiny's 3
    assert resolved.data.category_names == ["circle", "rectangle", "triangle", "star"]
    assert resolved.data.category_ids == [1, 2, 3, 4]


@pytest.mark.slow
def test_run_training_takes_a_resolved_config_and_leaves_it_alone(tmp_path, shapes_dataset):
    cfg = _tiny_train_cfg(shapes_dataset)
    cfg.solver.max_iter, cfg.solver.steps = 1, [1]
    dataset = build_train_dataset(cfg)
    # tiny has 3 classes, the shapes 4: the config must be resolved against the data first
    with pytest.raises(ValueError, match="num_classes=3"):
        run_training(cfg, out_dir=tmp_path, dataset=dataset, device="cpu", verbose=False)
    cfg = resolve_dataset_classes(cfg, dataset, quiet=True)
    before = cfg.to_dict()
    result = run_training(cfg, out_dir=tmp_path, dataset=dataset, device="cpu", verbose=False)
    assert cfg.to_dict() == before
    assert result.iteration == 1 and result.cfg is cfg
    saved = torch.load(tmp_path / "model.pt", weights_only=True)["config"]
    assert saved == before


def test_metrics_file_truncates_and_skips_torn_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    writer = MetricsFile(path)
    for it in (1, 2, 3, 4):
        writer.write({"type": "train", "iteration": it, "loss": 1.0 / it})
    with open(path, "a") as f:
        f.write('{"type": "train", "iter')  # a line cut by a killed process
    assert [r["iteration"] for r in read_metrics(path)] == [1, 2, 3, 4]
    writer.truncate_after(2)
    assert [r["iteration"] for r in read_metrics(path)] == [1, 2]
    writer.write({"type": "eval", "iteration": 2, "bbox_AP": 0.5, "segm_AP": 0.4})
    out = plot_curves(path, tmp_path / "curves.png")
    assert out is not None and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(path.read_text().splitlines()[-1])["segm_AP"] == 0.4


def test_draw_detections_paints_masks_boxes_and_skips_low_scores():
    image = torch.zeros(3, 100, 120)
    masks = torch.zeros(2, 100, 120, dtype=torch.bool)
    masks[0, 25:45, 10:40] = True
    masks[1, 60:80, 60:100] = True
    dets = Detections(
        boxes=torch.tensor([[10.0, 25.0, 40.0, 45.0], [60.0, 60.0, 100.0, 80.0]]),
        scores=torch.tensor([0.9, 0.2]),
        labels=torch.tensor([0, 1]),
        masks=masks,
    )
    out = draw_detections(image, dets, class_names=["a", "b"], score_threshold=0.5, alpha=0.5)
    assert out.dtype == torch.uint8 and out.shape == (3, 100, 120)
    # inside mask 0 (away from its contour, box and label): half its colour over black
    expected = torch.tensor([round(c * 0.5) for c in instance_color(0)], dtype=torch.float)
    assert torch.allclose(out[:, 38, 25].float(), expected, atol=1)
    # the low-score detection is not drawn at all
    assert int(out[:, 58:82, 58:102].sum()) == 0
    # the box outline and the contour are drawn opaque in the instance's colour
    assert tuple(out[:, 35, 10].tolist()) == instance_color(0)
