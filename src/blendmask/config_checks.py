"""The allowed range of every numeric config setting, and the checks that enforce them.

`config.validate` calls `check_numeric_fields` whenever a config is resolved (a preset, a YAML
file, `--set` overrides, the config stored in a model file), so that `solver.max_iter=-1`,
`solver.base_lr=nan` or `model.fpn.out_channels=0` stop with one ConfigError naming the key and
the allowed range, instead of an untrained model or an error deep inside torch. Every int and
float field of `config.Config` has a rule in `NUMERIC_RANGES` (tests/test_config.py fails for
a new field without one). `check_probability` is the same check for command-line values such as
`--score-threshold`. `convert_value` turns a YAML or `--set` value into a field's type.

Kept apart from config.py (which imports this module, never the reverse) so that the table
does not push config.py past the project's module size.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config key, value or file that cannot be used; the message names the key."""


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

NUMERIC_RANGES: dict[str, Range] = {
    # 0 or -1: train everything; 1-5: freeze the stem and up to res5.
    "model.backbone.freeze_at": Range(low=-1, high=5),
    "model.backbone.deform_interval": NON_NEGATIVE,  # 0 = no DCN
    "model.fpn.out_channels": AT_LEAST_1,
    "model.fpn.top_levels": Range(low=0, high=2),  # P6, P7
    "model.fcos.num_classes": AT_LEAST_1,
    "model.fcos.fpn_strides": AT_LEAST_1,
    "model.fcos.tower_channels": NON_NEGATIVE,  # 0 = the FPN's width
    # The cls bias is -log((1 - p) / p): infinite at 0 and 1.
    "model.fcos.prior_prob": OPEN_UNIT,
    "model.fcos.inference_th_test": UNIT,
    "model.fcos.nms_th": UNIT,
    "model.fcos.pre_nms_topk_test": AT_LEAST_1,
    "model.fcos.post_nms_topk_test": AT_LEAST_1,
    "model.fcos.loss_alpha": UNIT,
    "model.fcos.loss_gamma": NON_NEGATIVE,
    "model.fcos.sizes_of_interest": AT_LEAST_1,
    "model.fcos.num_cls_convs": NON_NEGATIVE,
    "model.fcos.num_box_convs": NON_NEGATIVE,
    "model.fcos.num_share_convs": NON_NEGATIVE,
    "model.fcos.pos_radius": POSITIVE,
    "model.blender.attn_size": AT_LEAST_1,
    "model.blender.bottom_resolution": AT_LEAST_1,
    "model.blender.pooler_sampling_ratio": NON_NEGATIVE,  # 0 = adaptive (ROIAlign)
    "model.blender.pooler_scale": POSITIVE,
    "model.blender.instance_loss_weight": NON_NEGATIVE,
    "model.basis_module.num_bases": AT_LEAST_1,
    "model.basis_module.convs_dim": AT_LEAST_1,
    "model.basis_module.num_convs": NON_NEGATIVE,
    "model.basis_module.loss_weight": NON_NEGATIVE,
    "model.basis_module.common_stride": AT_LEAST_1,
    "model.panoptic.num_stuff_classes": NON_NEGATIVE,
    "model.panoptic.conv_dims": AT_LEAST_1,
    "model.panoptic.common_stride": AT_LEAST_1,
    "model.panoptic.loss_weight": NON_NEGATIVE,
    "model.panoptic.ignore_value": Range(low=0, high=255),  # a value of the uint8 label map
    "model.panoptic.instance_score_threshold": UNIT,
    "model.panoptic.overlap_threshold": UNIT,
    "model.panoptic.stuff_area_limit": NON_NEGATIVE,
    "model.input_scale": POSITIVE,
    "model.pixel_mean": FINITE,
    "model.pixel_std": POSITIVE,  # divided by
    "data.min_size_train": AT_LEAST_1,
    "data.max_size_train": AT_LEAST_1,
    "data.min_size_test": AT_LEAST_1,
    "data.max_size_test": AT_LEAST_1,
    "data.test_scale": NON_NEGATIVE,  # 0 = the shortest-edge resize
    "data.crop_size": NON_NEGATIVE,  # 0 = no crop
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
        raise ConfigError(f"{key}: expected {kind} {allowed.describe()}, got {value!r}")
    try:
        inside = allowed.contains(value)
    except OverflowError:  # an int too large for a float
        inside = False
    if not inside:
        raise ConfigError(f"{key}: got {value!r}, expected {kind} {allowed.describe()}")


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


def convert_value(key: str, value: Any, tp: Any) -> Any:
    """Convert `value` (from YAML or a `--set` string) to the annotated config field type `tp`
    (bool, int, float, str or a list of those), or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip() else []
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            value = [value]
        return [convert_value(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "off", "0"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return "" if value is None else str(value)
    raise ConfigError(f"{key}: unsupported field type {tp!r}")


def check_augmentation(scale_jitter: list[float], color_jitter: list[float]) -> None:
    """data.scale_jitter: [lo, hi] with 0 < lo <= hi; data.color_jitter: four values >= 0, the
    hue at most 0.5 (torchvision's ColorJitter)."""
    if len(scale_jitter) != 2 or not 0 < scale_jitter[0] <= scale_jitter[1]:
        raise ConfigError(
            f"data.scale_jitter: expected [lo, hi] with 0 < lo <= hi, got {scale_jitter}"
        )
    if len(color_jitter) != 4 or any(not c >= 0 for c in color_jitter) or color_jitter[3] > 0.5:
        raise ConfigError(
            "data.color_jitter: expected [brightness, contrast, saturation, hue] >= 0 with hue "
            f"<= 0.5, got {color_jitter}"
        )
