"""`--preset auto`: every setting the hand presets tune, derived from the training json by the
rules of docs/training.md ("--preset auto"), with the plan that says why.

`auto_config(train_json)` analyses the json (`metrics.dataset_stats`) and returns the Config
plus its plan: {setting: {"value", "rule"}} and the facts the rules read. The same json gives
the same Config and plan (the rules read counts and nearest-rank percentiles only; no clock,
no device, no randomness). `--set` and a YAML file override the result like any preset's.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

from blendmask.config import Config
from blendmask.metrics.dataset_stats import cached_analysis
from blendmask.presets import shapes_lite0

# Test-time scale: the median object lands at TARGET_MEDIAN_PX, the middle (in octaves) of
# what P3 (stride 8) covers well: 3 to 12 cells across, 24-96 px.
TARGET_MEDIAN_PX = 48.0
SCALE_RANGE = (0.25, 4.0)
# Within this of 1 the images stay as they are: the training's scale jitter covers it.
KEEP_SCALE_WITHIN = 0.25
MAX_TEST_SIDE = 4096  # the largest scaled image side (memory of one CPU forward)
# Without objects past this scaled size (p99), P6 has nothing to learn: P3-P5 only.
P6_FROM_PX = 192.0
# Images this crowded (mean instances) split their objects over more levels.
CROWDED_PER_IMAGE = 20
# Training on crops pays once whole scaled images are this much larger than a crop.
CROP_SIDE = 384
CROP_WHEN_SHORT_SIDE_OVER = 1.5 * CROP_SIDE
# Few images: augment with what has no orientation and colour of its own.
FEW_IMAGES = 500
# Pixels of one batch on a 2-core CPU: batch 8 of 256 px images (the demo's measured setting).
BATCH_PIXELS = 8 * 256 * 256
LR_PER_IMAGE = 0.02 / 8  # the small presets' 0.02 at batch 8, scaled linearly
CACHE_BYTES = 2 * 1024**3  # decoded RGB training images kept in memory up to this
MASK_SCORE_POWER = 2.0  # maskness ** this; 1 and 3 gave less / the same on the nuclei


def _round_to(x: float, step: float) -> float:
    return round(x / step) * step


def _rule(plan: dict[str, Any], key: str, value: Any, rule: str) -> Any:
    plan[key] = {"value": value, "rule": rule}
    return value


def _scale(s: dict[str, Any], plan: dict[str, Any]) -> float:
    """data.test_scale: the median object at TARGET_MEDIAN_PX, a quarter step, within
    SCALE_RANGE and MAX_TEST_SIDE."""
    median = max(s["size_px"]["p50"], 1.0)
    wanted = min(max(_round_to(TARGET_MEDIAN_PX / median, 0.25), SCALE_RANGE[0]), SCALE_RANGE[1])
    if abs(wanted - 1.0) <= KEEP_SCALE_WITHIN:
        wanted = 1.0
    longest = max(s["images"]["width"]["max"], s["images"]["height"]["max"])
    cap = math.floor(MAX_TEST_SIDE / longest * 4) / 4
    scale = max(min(wanted, cap), SCALE_RANGE[0])
    return _rule(
        plan,
        "data.test_scale",
        scale,
        f"median object {median:.1f} px -> {TARGET_MEDIAN_PX:g} px (P3's 24-96 px range), quarter "
        f"steps in {SCALE_RANGE}, 1 within +-{KEEP_SCALE_WITHIN:g}, longest scaled side <= "
        f"{MAX_TEST_SIDE}",
    )


def _levels(cfg: Config, s: dict[str, Any], scale: float, plan: dict[str, Any]) -> None:
    """FPN levels: P3-P5 when no object reaches P6's range at the test scale; the sizes of
    interest by how crowded the images are."""
    big = scale * s["size_px"]["p99"]
    f = cfg.model.fcos
    mean = s["instances"]["per_image_mean"]
    crowded = mean >= CROWDED_PER_IMAGE
    # P3 keeps the boxes up to ~96 px (a location's largest distance to a box side under 48),
    # the range the test scale aims the median object at; crowded images (nuclei: 55 touching
    # objects an image) spread them over P3 and P4 instead, the ambiguity FCOS's levels resolve.
    # Measured at one seed each: P3 to ~96 px on the shapes put mask AP 0.025 behind
    # shapes_lite0 instead of 0.055; on the nuclei it fell from 0.502 to 0.475.
    f.sizes_of_interest = [32, 64, 128] if crowded else [48, 96, 192]
    if big < P6_FROM_PX:
        cfg.model.fpn.top_levels = 0
        f.fpn_strides, f.sizes_of_interest = [8, 16, 32], f.sizes_of_interest[:2]
    rule = f"p99 object at the test scale {big:.0f} px {'<' if big < P6_FROM_PX else '>='} "
    rule += f"{P6_FROM_PX:g} px: {'P3-P5, P6 would see no object' if big < P6_FROM_PX else 'P3-P6'}"
    _rule(plan, "model.fcos.fpn_strides", list(f.fpn_strides), rule)
    _rule(
        plan,
        "model.fcos.sizes_of_interest",
        list(f.sizes_of_interest),
        f"{mean:.1f} instances an image {'>=' if crowded else '<'} {CROWDED_PER_IMAGE}: "
        + ("crowded, P3 to ~64 px boxes and P4 above" if crowded else "P3 to ~96 px boxes"),
    )


def _train_inputs(cfg: Config, s: dict[str, Any], scale: float, plan: dict[str, Any]) -> int:
    """Crops and jitter, or whole images at three sizes; returns the side of a training input."""
    d, im = cfg.data, s["images"]
    short = scale * min(im["width"]["p50"], im["height"]["p50"])
    longest = scale * max(im["width"]["max"], im["height"]["max"])
    d.test_scale = scale
    d.max_size_test = int(min(MAX_TEST_SIDE, max(32, math.ceil(longest / 32) * 32)))
    if short > CROP_WHEN_SHORT_SIDE_OVER:
        big = scale * s["size_px"]["p99"]
        d.crop_size = int(max(CROP_SIDE, math.ceil(2 * big / 32) * 32))
        d.crop_size = min(d.crop_size, 1024)
        d.scale_jitter = [0.8, 1.25]
        _rule(
            plan,
            "data.crop_size",
            d.crop_size,
            f"median scaled short side {short:.0f} px > {CROP_WHEN_SHORT_SIDE_OVER:g}: crops of "
            f"{CROP_SIDE} px (or twice the p99 scaled object), a cheaper iteration",
        )
        _rule(plan, "data.scale_jitter", d.scale_jitter, "a quarter octave either way")
        d.crop_by_area = _rule(
            plan,
            "data.crop_by_area",
            True,
            "each image drawn as often as crops it takes to cover it: every object equally "
            "likely to be seen (drawn once each, a large image's objects are seen far less)",
        )
        return d.crop_size
    side = max(32, int(_round_to(short, 32)))
    d.min_size_train = [max(32, int(_round_to(side * f, 32))) for f in (0.875, 1.0, 1.125)]
    d.max_size_train = int(_round_to(2 * side, 32))
    d.min_size_test, d.max_size_test = side, max(d.max_size_test, d.max_size_train)
    _rule(
        plan,
        "data.min_size_train",
        d.min_size_train,
        f"whole images (median scaled short side {short:.0f} px <= "
        f"{CROP_WHEN_SHORT_SIDE_OVER:g}) at 7/8, 1 and 9/8 of it",
    )
    return side


def _augment(cfg: Config, s: dict[str, Any], plan: dict[str, Any]) -> None:
    """Vertical flips, quarter turns and colour jitter only for few images whose objects show
    no up and no preferred direction."""
    few = s["images"]["count"] < FEW_IMAGES
    cfg.data.vflip_train = cfg.data.rot90_train = few
    cfg.data.color_jitter = [0.2, 0.2, 0.2, 0.0] if few else [0.0, 0.0, 0.0, 0.0]
    _rule(
        plan,
        "data.rot90_train",
        few,
        f"{s['images']['count']} images {'<' if few else '>='} {FEW_IMAGES}: "
        + (
            "turns, vertical flips and colour jitter multiply the data (say "
            "--set data.rot90_train=false data.vflip_train=false when up matters)"
            if few
            else "enough images; the data's own orientation and colours are kept"
        ),
    )


def _detections(cfg: Config, s: dict[str, Any], plan: dict[str, Any]) -> None:
    """Detections kept per image (and the evaluation's maxDets) from the p99 instance count."""
    p99 = s["instances"]["per_image_p99"]
    keep = max(100, int(math.ceil(1.2 * p99 / 50) * 50))
    f = cfg.model.fcos
    f.post_nms_topk_test, f.pre_nms_topk_test = keep, max(1000, 4 * keep)
    _rule(
        plan,
        "model.fcos.post_nms_topk_test",
        keep,
        f"1.2 x the p99 instance count {p99:g}, in 50s, at least COCO's 100 (also the "
        "evaluation's maxDets)",
    )
    _rule(plan, "model.fcos.pre_nms_topk_test", f.pre_nms_topk_test, "4 x kept, >= 1000")


def _test_time(cfg: Config, plan: dict[str, Any]) -> None:
    """The test-time refinements of modeling/test_time.py (measured in docs/training.md)."""
    cfg.model.blender.mask_score_power = _rule(
        plan,
        "model.blender.mask_score_power",
        MASK_SCORE_POWER,
        "scores x maskness^2: a detection ranks by how sure its mask is too (mask AP +0.01 on "
        "nuclei and shapes, 2 seeds each)",
    )
    flip = cfg.data.hflip_train
    cfg.data.test_flip = _rule(
        plan,
        "data.test_flip",
        flip,
        "trained on left-right flips: the mirrored image is predicted too and merged (twice the "
        "inference time; --set data.test_flip=false for speed)"
        if flip
        else "no left-right flips in training: the mirrored image is no evidence",
    )
    cfg.data.test_vflip = _rule(
        plan,
        "data.test_vflip",
        False,
        "no upside-down views: on the nuclei (trained on them) 4 views gave no more than 2 in "
        "a 15-minute run, their evaluation reserve costing ~60 updates",
    )


def _solver(cfg: Config, s: dict[str, Any], side: int, plan: dict[str, Any]) -> None:
    """Batch, lr, warm-up, clipping and the schedule for a CPU and a time budget."""
    sv = cfg.solver
    batch = 2 ** round(math.log2(max(1.0, BATCH_PIXELS / (side * side))))
    sv.ims_per_batch = int(min(max(batch, 2), 8))
    sv.base_lr = LR_PER_IMAGE * sv.ims_per_batch
    sv.warmup_iters, sv.clip_grad_norm = 100, 10.0
    sv.max_iter, sv.steps = 2000, [1500, 1800]
    sv.eval_period, sv.checkpoint_period = 0, 250
    _rule(
        plan,
        "solver.ims_per_batch",
        sv.ims_per_batch,
        f"{BATCH_PIXELS} pixels a batch on a 2-core CPU at {side} px inputs, a power of 2 in [2, 8]",
    )
    _rule(plan, "solver.base_lr", sv.base_lr, "0.02 at batch 8, linearly scaled")
    _rule(plan, "solver.clip_grad_norm", 10.0, "caps single-batch spikes (norms are ~3-7)")
    sv.precision = _rule(
        plan,
        "solver.precision",
        "auto",
        "bf16 where this machine's updates are 10% faster in it (the probe, then the first "
        "updates alternating fp32 and bf16), else fp32: more updates in the same minutes",
    )
    _rule(
        plan,
        "solver.eval_period",
        0,
        "the final evaluation only: a periodic one teaches nothing and costs updates (a nuclei "
        "evaluation took 38-49 s, 50-65 updates); --set solver.eval_period=N for an AP curve",
    )
    _rule(
        plan,
        "solver.max_iter",
        2000,
        "a cap: with --minutes the time budget re-plans the schedule to end on time",
    )


def auto_config(train_json: str | Path) -> tuple[Config, dict[str, Any]]:
    """The `auto` preset for `train_json` and its plan (rules and the facts they read)."""
    s = copy.deepcopy(cached_analysis(train_json).summary)
    cfg = shapes_lite0()  # the CPU network of the small presets: pretrained Lite0 body, ...
    cfg.preset = "auto"
    cfg.model.fcos.num_classes = max(1, len(s["classes"]))
    cfg.model.backbone.freeze_at = 3
    plan: dict[str, Any] = {}
    _rule(plan, "model.backbone.weights", "lite0", "the pretrained Lite0, reachable offline")
    scale = _scale(s, plan)
    _levels(cfg, s, scale, plan)
    side = _train_inputs(cfg, s, scale, plan)
    _augment(cfg, s, plan)
    _detections(cfg, s, plan)
    _test_time(cfg, plan)
    decoded = sum(  # the training images decoded once, as RGB bytes
        w * h * 3 for w, h in _sizes(s)
    )
    cfg.data.cache_images = decoded <= CACHE_BYTES
    cfg.data.num_workers = 0
    _solver(cfg, s, side, plan)
    facts = {k: s[k] for k in ("images", "instances", "size_px", "size_relative", "classes")}
    return cfg.validate(), {"json": str(train_json), "settings": plan, "facts": facts}


def auto_plan(cfg: Config) -> dict[str, Any] | None:
    """The plan stored in model.pt beside a `--preset auto` config (None for other presets)."""
    return auto_config(cfg.data.train_json)[1] if cfg.preset == "auto" else None


def _sizes(s: dict[str, Any]) -> list[tuple[float, float]]:
    """An upper bound of the images' sizes: every image at the largest width and height."""
    im = s["images"]
    return [(im["width"]["max"], im["height"]["max"])] * im["count"]


def format_plan(plan: dict[str, Any]) -> list[str]:
    """One line a setting, as `train` prints the plan."""
    lines = [f"auto: settings derived from {plan['json']}"]
    lines += [f"auto: {k} = {v['value']}  ({v['rule']})" for k, v in plan["settings"].items()]
    return lines
