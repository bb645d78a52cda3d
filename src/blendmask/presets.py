"""Named presets: plain functions returning a Config, in one visible table, and `load_config`.

The reference presets (R_50_1x ... RT_R_50_4x_bn_head) each name the AdelaiDet config whose
network, input sizes and schedule they copy (`configs/BlendMask/*.yaml`) and its published COCO
val2017 result (AdelaiDet MODEL_ZOO, box AP / mask AP). Where they differ from that config:

- No ImageNet weights are set (`model.backbone.weights` is ""): the reference starts from the
  MSRA `R-50.pkl` / `R-101.pkl`. Give the file with `blendmask train --backbone-weights R-50.pkl`
  (or `model.backbone.weights` plus `interop.torchvision_weights.resolve_weight_conventions`);
  without one the body starts from a random initialisation and the published numbers are out of
  reach. A checkpoint converted with `blendmask convert` carries all weights and needs none.
- `solver.amp` is on (CUDA only); the reference trains in float32.
- `data.num_workers` is 2 (the reference's DATALOADER.NUM_WORKERS is 4): speed only.
- R_101_dcni3_5x: see its docstring (multi-scale sampling, no random crop, evaluation period).

As in the reference, the bottom module's norm is "SyncBN" (BASIS_MODULE.NORM): a plain BatchNorm
in one process, synchronised when several CUDA processes train.

This module imports `config`, never the reverse.
"""

from __future__ import annotations

import difflib
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

from blendmask.config import (
    IMAGENET_PIXEL_MEAN,
    IMAGENET_PIXEL_STD,
    LITE0_INPUT_FORMAT,
    LITE0_INPUT_SCALE,
    LITE0_PIXEL_MEAN,
    LITE0_PIXEL_STD,
    Config,
    ConfigError,
    apply_config_file_data,
    read_config_file,
)

# The synthetic shapes data (`data/shapes.py`): circle, rectangle, triangle, star. A number
# here, not an import, so that this bottom-layer module imports nothing from data/;
# tests/test_model_presets.py checks it against the data set's class list.
NUM_SHAPE_CLASSES = 4
# Stuff classes 1..S of `blendmask shapes --panoptic` (data/shapes_stuff.py's STUFF_CLASSES,
# the json's order by category id; 0 is "thing"); tests/test_panoptic_model.py checks it.
SHAPE_STUFF_NAMES = ("sky", "wall", "grass")
NUM_SHAPE_STUFF_CLASSES = len(SHAPE_STUFF_NAMES)


def R_50_1x() -> Config:
    """BlendMask R_50_1x (configs/BlendMask/R_50_1x.yaml): ResNet-50-FPN P3-P7, R=56, K=4, M=14,
    90k iterations at batch 16. Published: 39.9 box AP / 35.8 mask AP, 73 ms on a 1080Ti."""
    cfg = Config(preset="R_50_1x")
    cfg.model.basis_module.norm = "SyncBN"  # BASIS_MODULE.NORM of the reference
    return cfg


def R_50_3x() -> Config:
    """BlendMask R_50_3x (configs/BlendMask/R_50_3x.yaml): as R_50_1x with the 3x schedule
    (270k iterations, steps 210k/250k). Published: 42.7 box AP / 37.8 mask AP."""
    cfg = R_50_1x()
    cfg.preset = "R_50_3x"
    cfg.solver.steps = [210000, 250000]
    cfg.solver.max_iter = 270000
    return cfg


def R_101_3x() -> Config:
    """BlendMask R_101_3x (configs/BlendMask/R_101_3x.yaml): ResNet-101, 3x schedule.
    Published: 44.8 box AP / 39.5 mask AP, 94 ms."""
    cfg = R_50_3x()
    cfg.preset = "R_101_3x"
    cfg.model.backbone.name = "resnet101"
    return cfg


def R_101_dcni3_5x() -> Config:
    """BlendMask R_101_dcni3_5x (configs/BlendMask/R_101_dcni3_5x.yaml): ResNet-101 with DCNv2
    on every third block of res3-res5, 400k iterations, multi-scale 640-864.
    Published: 46.8 box AP / 41.1 mask AP. Differs: the short side is drawn from 640, 672, ...,
    864 (the reference draws any size in [640, 864]), there is no random crop (the reference
    sets INPUT.CROP, relative_range 0.9) and evaluation runs at the end only (the reference
    every 20k iterations)."""
    cfg = R_101_3x()
    cfg.preset = "R_101_dcni3_5x"
    cfg.model.backbone.deform_interval = 3
    cfg.solver.steps = [280000, 360000]
    cfg.solver.max_iter = 400000
    cfg.data.min_size_train = list(range(640, 865, 32))
    cfg.data.max_size_train = 1440
    return cfg


def _550(cfg: Config) -> Config:
    """Base-550.yaml: P3-P6, three shared tower convs, basis num_convs 2, 550/916 input."""
    cfg.model.fpn.top_levels = 1
    cfg.model.fcos.fpn_strides = [8, 16, 32, 64]
    cfg.model.fcos.sizes_of_interest = [64, 128, 256]
    cfg.model.fcos.num_share_convs = 3
    cfg.model.fcos.num_cls_convs = 0
    cfg.model.fcos.num_box_convs = 0
    cfg.model.basis_module.num_convs = 2
    cfg.data.min_size_train = [440, 462, 484, 506, 528, 550]
    cfg.data.max_size_train = 916
    cfg.data.min_size_test = 550
    cfg.data.max_size_test = 916
    return cfg


def R_50_550_3x() -> Config:
    """BlendMask 550_R_50_3x (configs/BlendMask/550_R_50_3x.yaml). Published: 38.7 box AP /
    34.5 mask AP, 36 ms."""
    cfg = _550(R_50_3x())
    cfg.preset = "550_R_50_3x"
    return cfg


def RT_R_50_4x() -> Config:
    """BlendMask RT_R_50_4x_syncbn_shtw (configs/BlendMask/RT_R_50_4x_syncbn_shtw.yaml):
    P3-P5, three shared convs, basis num_convs 2, trainable (Sync)BN backbone, 512/736 input,
    360k iterations. Published: 39.3 box AP / 35.1 mask AP, 31 FPS."""
    cfg = R_50_1x()
    cfg.preset = "RT_R_50_4x"
    cfg.model.backbone.norm = "SyncBN"
    cfg.model.backbone.freeze_at = -1
    cfg.model.fpn.top_levels = 0
    cfg.model.fcos.fpn_strides = [8, 16, 32]
    cfg.model.fcos.sizes_of_interest = [64, 128]
    cfg.model.fcos.num_share_convs = 3
    cfg.model.fcos.num_cls_convs = 0
    cfg.model.fcos.num_box_convs = 0
    cfg.model.basis_module.num_convs = 2
    cfg.data.min_size_train = list(range(256, 609, 32))
    cfg.data.max_size_train = 900
    cfg.data.min_size_test = 512
    cfg.data.max_size_test = 736
    cfg.solver.steps = [300000, 340000]
    cfg.solver.max_iter = 360000
    return cfg


def RT_R_50_4x_bn_head() -> Config:
    """BlendMask RT_R_50_4x_bn-head_syncbn_shtw: RT with one (Sync)BN per level in the shared
    tower instead of GN. Published: 39.3 box AP / 35.1 mask AP."""
    cfg = RT_R_50_4x()
    cfg.preset = "RT_R_50_4x_bn_head"
    cfg.model.fcos.norm = "SyncBN"
    return cfg


def _panoptic(cfg: Config, preset: str, num_stuff_classes: int = 53) -> Config:
    """The panoptic version of an instance preset (configs/BlendMask/Panoptic/Base-Panoptic.yaml,
    docs/reference.md §6): the FPN also builds P2 and a semantic FPN head on P2-P5 predicts
    S + 1 classes (COCO: 53 stuff + "thing" = 54), loss weight 0.5; merging keeps instances
    from score 0.45 and drops those more than 0.4 covered; stuff needs 4096 free pixels."""
    cfg.preset = preset
    p = cfg.model.panoptic
    p.enabled = True
    p.num_stuff_classes = num_stuff_classes
    p.loss_weight = 0.5
    p.instance_score_threshold = 0.45
    p.overlap_threshold = 0.4
    return cfg


def Panoptic_R_50_1x() -> Config:
    """Panoptic BlendMask R_50_1x (configs/BlendMask/Panoptic/R_50_1x.yaml): R_50_1x plus the
    semantic branch, 90k iterations."""
    return _panoptic(R_50_1x(), "Panoptic_R_50_1x")


def Panoptic_R_50_3x() -> Config:
    """Panoptic BlendMask R_50_3x (configs/BlendMask/Panoptic/R_50_3x.yaml), 270k iterations.
    Published (BlendMask paper / AdelaiDet): PQ 42.5, PQ_th 49.5, PQ_st 32.0 on COCO val."""
    return _panoptic(R_50_3x(), "Panoptic_R_50_3x")


def Panoptic_R_101_3x() -> Config:
    """Panoptic BlendMask R_101_3x (configs/BlendMask/Panoptic/R_101_3x.yaml), 270k iterations.
    Published: PQ 44.3, PQ_th 51.6, PQ_st 33.2 on COCO val."""
    return _panoptic(R_101_3x(), "Panoptic_R_101_3x")


def _small_cpu(cfg: Config, num_classes: int) -> Config:
    """Shared settings of the CPU-trainable presets: a pretrained EfficientNet-Lite0 body
    (falls back to random init without the `pretrained` extra), narrow FPN and towers."""
    m = cfg.model
    m.backbone.name = "efficientnet_lite0"
    m.backbone.norm = "FrozenBN"
    m.backbone.freeze_at = 2
    m.backbone.stride_in_1x1 = False
    m.backbone.weights = "lite0"
    m.input_format = LITE0_INPUT_FORMAT
    m.input_scale = LITE0_INPUT_SCALE
    m.pixel_mean = list(LITE0_PIXEL_MEAN)
    m.pixel_std = list(LITE0_PIXEL_STD)
    m.fpn.out_channels = 96
    m.fpn.top_levels = 1
    m.fcos.fpn_strides = [8, 16, 32, 64]
    m.fcos.sizes_of_interest = [48, 96, 192]
    m.fcos.num_classes = num_classes
    m.fcos.num_cls_convs = 2
    m.fcos.num_box_convs = 2
    m.basis_module.convs_dim = 64
    m.basis_module.num_convs = 2
    m.blender.attn_size = 7
    m.blender.bottom_resolution = 28
    s = cfg.solver
    s.ims_per_batch = 8
    s.base_lr = 0.02
    s.warmup_iters = 100
    s.max_iter = 3000
    s.steps = [2200, 2700]
    s.checkpoint_period = 500
    s.eval_period = 0
    s.log_period = 20
    return cfg


def shapes_lite0() -> Config:
    """CPU demo on the synthetic shapes data (`blendmask shapes`): 4 classes, 256 px images,
    a pretrained EfficientNet-Lite0 body (the only ImageNet weights reachable offline); formerly
    `shapes_R_18`, still accepted. For a ResNet-18 at random init: `--set
    model.backbone.name=resnet18 --set model.backbone.weights=`."""
    cfg = _small_cpu(Config(preset="shapes_lite0"), num_classes=NUM_SHAPE_CLASSES)
    # Tuned for steps per second on a 2-core CPU (`blendmask demo`): the body is frozen up to
    # and including the C3 stage (ImageNet edges and colours serve the shapes as they are), so
    # backward stops at stride 16. The demo's time budget shrinks this schedule to fit
    # (docs/results.md gives a measured run).
    cfg.model.backbone.freeze_at = 3
    cfg.data.min_size_train = [224, 256, 288]
    cfg.data.max_size_train = 512
    cfg.data.min_size_test = 256
    cfg.data.max_size_test = 512
    cfg.data.num_workers = 0
    s = cfg.solver
    s.max_iter = 1200
    s.steps = [900, 1100]
    s.eval_period = 400
    s.checkpoint_period = 200
    return cfg


def shapes_panoptic() -> Config:
    """CPU panoptic demo on the synthetic shapes data with stuff (`blendmask shapes
    --panoptic`): shapes_lite0 plus P2 and a narrow semantic head (64 channels) for the
    NUM_SHAPE_STUFF_CLASSES stuff classes (sky, wall, grass) and the "thing" class."""
    cfg = _panoptic(shapes_lite0(), "shapes_panoptic", NUM_SHAPE_STUFF_CLASSES)
    cfg.model.panoptic.conv_dims = 64
    cfg.data.stuff_names = list(SHAPE_STUFF_NAMES)
    return cfg


def nuclei_lite0() -> Config:
    """The real-data example: DSB2018 nuclei (1 class, ~55 small touching nuclei per image),
    EfficientNet-Lite0 body (formerly `nuclei_R_18`), levels P3-P5, for `train --minutes` on a
    CPU (docs/training.md)."""
    cfg = _small_cpu(Config(preset="nuclei_lite0"), num_classes=1)
    m = cfg.model
    m.fpn.top_levels = 0
    m.fcos.fpn_strides = [8, 16, 32]
    m.fcos.sizes_of_interest = [32, 64]
    m.backbone.freeze_at = 3
    d = cfg.data
    # Nuclei are ~6-35 px whatever the image size (256 to 1272 px): upscale every image 3x so
    # that a nucleus covers several stride-8 locations and its edge a few stride-4 base pixels.
    # A fixed factor, not a target size: "shortest side 768" shrank the 1024 px images (nuclei
    # of ~17 px) to 0.75x, where they scored mask AP 0.20-0.28 against 0.41 overall; the same
    # model at 3x everywhere: 0.411 -> 0.452 (2.5x: 0.437, 3.5x: 0.436).
    d.test_scale = 3.0
    d.min_size_test = 768  # used only with --set data.test_scale=0
    d.max_size_test = 4096
    d.min_size_train = [448, 512, 576]  # only used without crops
    d.max_size_train = 1024
    # 49 training images: augment (microscopy has no up, left or colour of its own) and train on
    # 384 px crops at the test scale x [0.8, 1.25], from images decoded once. Crops make an
    # iteration ~2.5x cheaper than whole upscaled images, so the time budget sees more nuclei.
    d.crop_size = 384
    d.scale_jitter = [0.8, 1.25]
    d.vflip_train = True
    d.rot90_train = True
    d.color_jitter = [0.2, 0.2, 0.2, 0.0]  # hue jitter costs ~10 ms a crop in torchvision
    d.cache_images = True
    d.num_workers = 0
    s = cfg.solver
    s.ims_per_batch = 4
    s.base_lr = 0.01  # 0.02 at batch 8, linearly scaled
    # Gradient norms are ~3-7 with single-batch spikes of 18-116 (a crop full of touching
    # nuclei); one such spike at the end of warm-up sent the focal loss to 218 and the AP to 0
    # for a whole 15-minute run (seed 1). Clipping at 10 caps the spikes only.
    s.clip_grad_norm = 10.0
    s.max_iter = 2000
    s.steps = [1500, 1800]
    s.eval_period = 500
    s.checkpoint_period = 250
    return cfg


def tiny() -> Config:
    """A small, fast model for tests: a ResNet-18 body at random init (11.2 M of its 11.3 M
    parameters), everything after it narrow (FPN 32, bases 16, M=4, R=16), 3 classes, 64 px
    inputs."""
    cfg = Config(preset="tiny")
    m = cfg.model
    m.backbone.name = "resnet18"
    m.backbone.norm = "FrozenBN"
    m.backbone.freeze_at = 0
    m.backbone.stride_in_1x1 = False
    m.input_format = "RGB"
    m.input_scale = 1.0
    m.pixel_mean = list(IMAGENET_PIXEL_MEAN)
    m.pixel_std = list(IMAGENET_PIXEL_STD)
    m.fpn.out_channels = 32
    m.fpn.top_levels = 1
    m.fcos.fpn_strides = [8, 16, 32, 64]
    m.fcos.sizes_of_interest = [16, 32, 64]
    m.fcos.num_classes = 3
    m.fcos.num_cls_convs = 1
    m.fcos.num_box_convs = 1
    m.basis_module.convs_dim = 16
    m.basis_module.num_convs = 1
    m.blender.attn_size = 4
    m.blender.bottom_resolution = 16
    cfg.data.min_size_train = [64]
    cfg.data.max_size_train = 96
    cfg.data.min_size_test = 64
    cfg.data.max_size_test = 96
    cfg.data.num_workers = 0
    s = cfg.solver
    s.ims_per_batch = 2
    s.base_lr = 0.01
    s.warmup_iters = 2
    s.max_iter = 10
    s.steps = [8]
    s.checkpoint_period = 5
    s.log_period = 1
    return cfg


PRESETS: dict[str, Callable[[], Config]] = {
    "R_50_1x": R_50_1x,
    "R_50_3x": R_50_3x,
    "R_101_3x": R_101_3x,
    "R_101_dcni3_5x": R_101_dcni3_5x,
    "550_R_50_3x": R_50_550_3x,
    "RT_R_50_4x": RT_R_50_4x,
    "RT_R_50_4x_bn_head": RT_R_50_4x_bn_head,
    "Panoptic_R_50_1x": Panoptic_R_50_1x,
    "Panoptic_R_50_3x": Panoptic_R_50_3x,
    "Panoptic_R_101_3x": Panoptic_R_101_3x,
    "shapes_lite0": shapes_lite0,
    "shapes_panoptic": shapes_panoptic,
    "nuclei_lite0": nuclei_lite0,
    "tiny": tiny,
}


# Old names (they said ResNet-18 of an EfficientNet-Lite0 body), resolved with a warning; not in
# PRESETS, so `blendmask presets` and the preset searches list each network once.
DEPRECATED_PRESETS: dict[str, str] = {"shapes_R_18": "shapes_lite0", "nuclei_R_18": "nuclei_lite0"}


def resolve_preset_name(name: str) -> str:
    """`name`, or the preset an old name stands for: a DeprecationWarning for code and one log
    line for the command line (whose console prints the `blendmask` logger)."""
    new = DEPRECATED_PRESETS.get(name, name)
    if new != name:
        message = f"preset '{name}' is now called '{new}' (the old name will be removed)"
        warnings.warn(message, DeprecationWarning, stacklevel=3)
        logging.getLogger(__name__).warning(message)
    return new


def get_preset(name: str) -> Config:
    """A fresh Config for preset `name` (PRESETS, or an old name of DEPRECATED_PRESETS)."""
    name = resolve_preset_name(name)
    if name not in PRESETS:
        close = difflib.get_close_matches(name, list(PRESETS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown preset '{name}'{hint} (available: {', '.join(PRESETS)})")
    return PRESETS[name]().validate()


def load_config(
    preset: str | None = None, yaml_path: str | Path | None = None, overrides: list[str] = ()
) -> Config:
    """preset -> YAML file (which may name its own `preset:`) -> `--set` overrides -> validate.

    An explicit `preset` wins over the file's `preset:`; without either the fields start from
    the dataclass defaults."""
    data: dict = {}
    if yaml_path is not None:
        file_preset, data = read_config_file(yaml_path)
        if preset is None:
            preset = file_preset
    cfg = get_preset(preset) if preset else Config()
    return apply_config_file_data(cfg, data, yaml_path or "", list(overrides))
