"""The allowed range of every numeric config setting, and the checks that enforce them.

`config.validate` calls `check_numeric_fields` whenever a config is resolved (a preset, a YAML
file, `--set` overrides, the config stored in a model file), so that `solver.max_iter=-1`,
`solver.base_lr=nan` or `model.fpn.out_channels=0` stop with one ConfigError naming the key and
the allowed range, instead of an untrained model or an error deep inside torch. Every int and
float field of `config.Config` has a rule in `NUMERIC_RANGES` (tests/test_config.py fails for
a new field without one). `check_probability` is the same check for command-line values such as
`--score-threshold`.

Kept apart from config/__init__.py (which imports this module, never the reverse) so that the table
does not push it past the project's module size.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
import typing
from dataclasses import dataclass
from typing import Any


class ConfigError(ValueError):
    """A config key, value or file that cannot be used; the message names the key."""


class _ShortRepr(reprlib.Repr):
    """reprlib's bounded repr, also for integers too long for `repr` (over 4300 digits)."""

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 128:
            return f"<an integer of {x.bit_length()} bits>"
        return repr(x)


_SHORT_REPR = _ShortRepr()
_SHORT_REPR.maxlevel, _SHORT_REPR.maxstring, _SHORT_REPR.maxother = 3, 60, 60
SHOWN_CHARACTERS = 100


def shown(value: Any) -> str:
    """`repr(value)` cut to a few items, levels and `SHOWN_CHARACTERS`, for messages: a value
    read from a file may be a 9**9-item alias bomb or a 100 MB string, whose whole repr would
    take minutes and gigabytes."""
    text = _SHORT_REPR.repr(value)
    return text if len(text) <= SHOWN_CHARACTERS else text[: SHOWN_CHARACTERS - 3] + "..."


@dataclass(frozen=True)
class Range:
    """Finite values in [low, high] (an open end excludes the bound; None: unbounded)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or not (
            value > self.high or (self.high_open and value == self.high)
        )

    def describe(self) -> str:
        """E.g. ">= 1", "in [0, 1]", "in (0, 1)", "> 0", "(any finite value)"."""
        low, high = _show(self.low), _show(self.high)
        if self.low is not None and self.high is not None:
            opening, closing = "(["[not self.low_open], ")]"[not self.high_open]
            return f"in {opening}{low}, {high}{closing}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {low}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {high}"
        return "(any finite value)"


def _show(bound: float | None) -> str:
    """4294967295, not 4.29497e+09; 0.5 as 0.5."""
    return str(int(bound)) if bound is not None and float(bound).is_integer() else str(bound)


FINITE = Range()
POSITIVE = Range(low=0, low_open=True)  # learning rates, scales, radii
AT_LEAST_1 = Range(low=1)  # sizes, counts and periods that must be non-zero
NON_NEGATIVE = Range(low=0)  # counts and periods where 0 means "none" / "off"
UNIT = Range(low=0, high=1)  # thresholds and probabilities
OPEN_UNIT = Range(low=0, high=1, low_open=True, high_open=True)
# Upper bounds on what sizes memory: far above any real setting (the presets' largest: 4096 px,
# 256 channels, 4 convs), far below what makes a build or a first image run out of memory
# (`model.fpn.out_channels=100000000` would ask for petabytes, not name the key).
MAX_SIDE = 8192  # pixels of a resized image side
MAX_CHANNELS = 4096
MAX_CLASSES = 100_000
MAX_CONVS = 64
SIDE = Range(low=1, high=MAX_SIDE)
CHANNELS = Range(low=1, high=MAX_CHANNELS)
CLASSES = Range(low=1, high=MAX_CLASSES)
CONVS = Range(low=0, high=MAX_CONVS)

NUMERIC_RANGES: dict[str, Range] = {
    # 0 or -1: train everything; 1-5: freeze the stem and up to res5.
    "model.backbone.freeze_at": Range(low=-1, high=5),
    "model.backbone.deform_interval": NON_NEGATIVE,  # 0 = no DCN
    "model.fpn.out_channels": CHANNELS,
    "model.fpn.top_levels": Range(low=0, high=2),  # P6, P7
    "model.fcos.num_classes": CLASSES,
    "model.fcos.fpn_strides": AT_LEAST_1,
    "model.fcos.tower_channels": Range(low=0, high=MAX_CHANNELS),  # 0 = the FPN's width
    # The cls bias is -log((1 - p) / p): infinite at 0 and 1.
    "model.fcos.prior_prob": OPEN_UNIT,
    "model.fcos.inference_th_test": UNIT,
    "model.fcos.nms_th": UNIT,
    "model.fcos.pre_nms_topk_test": AT_LEAST_1,
    "model.fcos.post_nms_topk_test": AT_LEAST_1,
    "model.fcos.loss_alpha": UNIT,
    "model.fcos.loss_gamma": NON_NEGATIVE,
    "model.fcos.sizes_of_interest": AT_LEAST_1,
    "model.fcos.num_cls_convs": CONVS,
    "model.fcos.num_box_convs": CONVS,
    "model.fcos.num_share_convs": CONVS,
    "model.fcos.pos_radius": POSITIVE,
    "model.blender.attn_size": Range(low=1, high=64),  # K = M * M bases when one-hot
    "model.blender.bottom_resolution": Range(low=1, high=1024),
    "model.blender.pooler_sampling_ratio": NON_NEGATIVE,  # 0 = adaptive (ROIAlign)
    "model.blender.pooler_scale": POSITIVE,
    "model.blender.instance_loss_weight": NON_NEGATIVE,
    "model.basis_module.num_bases": CHANNELS,
    "model.basis_module.convs_dim": CHANNELS,
    "model.basis_module.num_convs": CONVS,
    "model.basis_module.loss_weight": NON_NEGATIVE,
    "model.basis_module.common_stride": AT_LEAST_1,
    "model.panoptic.num_stuff_classes": Range(low=0, high=MAX_CLASSES),
    "model.panoptic.conv_dims": CHANNELS,
    "model.panoptic.common_stride": AT_LEAST_1,
    "model.panoptic.loss_weight": NON_NEGATIVE,
    "model.panoptic.ignore_value": Range(low=0, high=255),  # a value of the uint8 label map
    "model.panoptic.instance_score_threshold": UNIT,
    "model.panoptic.overlap_threshold": UNIT,
    "model.panoptic.stuff_area_limit": NON_NEGATIVE,
    "model.input_scale": POSITIVE,
    "model.pixel_mean": FINITE,
    "model.pixel_std": POSITIVE,  # divided by
    "data.min_size_train": SIDE,
    "data.max_size_train": SIDE,
    "data.min_size_test": SIDE,
    "data.max_size_test": SIDE,
    "data.test_scale": NON_NEGATIVE,  # 0 = the shortest-edge resize
    "model.blender.mask_score_power": NON_NEGATIVE,  # 0 = the reference's scores
    "data.crop_size": Range(low=0, high=MAX_SIDE),  # 0 = no crop
    "data.scale_jitter": POSITIVE,  # times the test-time scale
    "data.color_jitter": NON_NEGATIVE,  # ColorJitter strengths, 0 = off
    "data.num_workers": NON_NEGATIVE,
    "data.category_ids": FINITE,  # COCO ids: any integer
    "data.stuff_ids": FINITE,
    "solver.ims_per_batch": AT_LEAST_1,
    "solver.base_lr": POSITIVE,
    "solver.momentum": UNIT,
    "solver.weight_decay": NON_NEGATIVE,
    "solver.weight_decay_norm": NON_NEGATIVE,
    "solver.gamma": Range(low=0, high=1, low_open=True),  # a decay: lr * gamma at each step
    "solver.steps": NON_NEGATIVE,
    "solver.max_iter": AT_LEAST_1,
    "solver.warmup_factor": UNIT,
    "solver.warmup_iters": NON_NEGATIVE,
    "solver.clip_grad_norm": NON_NEGATIVE,  # 0 = off
    "solver.checkpoint_period": NON_NEGATIVE,  # 0 = only at the end
    "solver.eval_period": NON_NEGATIVE,  # 0 = only at the end
    "solver.log_period": AT_LEAST_1,
    "solver.seed": Range(low=0, high=2**32 - 1),  # numpy's seed range
}


def check_number(key: str, value: Any, allowed: Range, *, integer: bool = False) -> None:
    """Raise ConfigError unless `value` is a number (an integer if `integer`) in `allowed`."""
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        raise ConfigError(f"{key}: expected {kind} {allowed.describe()}, got {shown(value)}")
    try:
        inside = allowed.contains(value)
    except OverflowError:  # an int too large for a float
        inside = False
    if not inside:
        raise ConfigError(f"{key}: got {shown(value)}, expected {kind} {allowed.describe()}")


def check_probability(name: str, value: Any) -> float:
    """`value` as a float if it is a finite number in [0, 1], else ConfigError naming `name`
    (e.g. "--score-threshold"); argparse's float() accepts "nan" and "inf"."""
    check_number(name, value, UNIT)
    return float(value)


def numeric_fields(cfg: Any, prefix: str = "") -> dict[str, tuple[Any, bool]]:
    """Dotted key -> (value, is an int field) for every int, float, list[int] and list[float]
    field of the (nested) dataclass `cfg`."""
    out: dict[str, tuple[Any, bool]] = {}
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, tp = getattr(cfg, f.name), hints[f.name]
        key = f"{prefix}{f.name}"
        item_tp = typing.get_args(tp)[0] if typing.get_origin(tp) is list else tp
        if dataclasses.is_dataclass(tp):
            out.update(numeric_fields(value, f"{key}."))
        elif item_tp in (int, float):
            out[key] = (value, item_tp is int)
    return out


def check_numeric_fields(cfg: Any) -> None:
    """Check every numeric field of a Config against NUMERIC_RANGES (lists item by item);
    fields without a rule must at least be finite."""
    for key, (value, integer) in numeric_fields(cfg).items():
        allowed = NUMERIC_RANGES.get(key, FINITE)
        if isinstance(value, list):
            for i, item in enumerate(value):
                check_number(f"{key}[{i}]", item, allowed, integer=integer)
        else:
            check_number(key, value, allowed, integer=integer)


def check_augmentation(scale_jitter: list[float], color_jitter: list[float]) -> None:
    """data.scale_jitter: [lo, hi] with 0 < lo <= hi; data.color_jitter: four values >= 0, the
    hue at most 0.5 (torchvision's ColorJitter)."""
    if len(scale_jitter) != 2 or not 0 < scale_jitter[0] <= scale_jitter[1]:
        raise ConfigError(
            f"data.scale_jitter: expected [lo, hi] with 0 < lo <= hi, got {shown(scale_jitter)}"
        )
    if len(color_jitter) != 4 or any(not c >= 0 for c in color_jitter) or color_jitter[3] > 0.5:
        raise ConfigError(
            "data.color_jitter: expected [brightness, contrast, saturation, hue] >= 0 with hue "
            f"<= 0.5, got {shown(color_jitter)}"
        )


def check_categories(data: Any, num_classes: int, num_stuff: int | None) -> None:
    """`data.category_names` / `category_ids`: none, or one per class (`num_classes`), the ids
    unique: predictions are written with them by label, so a short list fails mid-run and a
    repeated id writes two classes as one. The same for `stuff_*` of a panoptic model
    (`num_stuff` stuff classes; None: not panoptic, not checked)."""
    kinds = [("category", num_classes, data.category_names, data.category_ids)]
    if num_stuff is not None:
        kinds.append(("stuff", num_stuff, data.stuff_names, data.stuff_ids))
    for kind, count, names, ids in kinds:
        for field, values in ((f"{kind}_names", names), (f"{kind}_ids", ids)):
            if values and len(values) != count:
                raise ConfigError(
                    f"data.{field}: {len(values)} values for {count} classes (expected one "
                    "per class, or none)"
                )
        seen: set[int] = set()
        for i, category_id in enumerate(ids):
            if category_id in seen:
                raise ConfigError(
                    f"data.{kind}_ids[{i}]: id {category_id} repeated (each class needs its own)"
                )
            seen.add(category_id)
