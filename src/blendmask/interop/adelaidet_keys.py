"""AdelaiDet (detectron2) state-dict names <-> ours: the explicit rename table.

BlendMask's published weights were trained by AdelaiDet on detectron2; every tensor of such a
checkpoint maps onto our modules by the ordered rules below (facts in docs/reference.md
§5). Also the presets that have a published checkpoint and the COCO classes of those
models. Used by `interop/adelaidet.py`.
"""

from __future__ import annotations

import re

# Presets with a published AdelaiDet checkpoint (configs/BlendMask/README.md).
ADELAIDET_PRESETS = (
    "R_50_1x",
    "R_50_3x",
    "R_101_3x",
    "R_101_dcni3_5x",
    "550_R_50_3x",
    "RT_R_50_4x",
    "RT_R_50_4x_bn_head",
    "Panoptic_R_50_1x",
    "Panoptic_R_50_3x",
    "Panoptic_R_101_3x",
)

# ---------------------------------------------------------------------------------------------
# The rename table: AdelaiDet (detectron2) key -> our key. Rules are applied in order, each to
# the result of the ones before (`re.sub`); a key no rule touches keeps its name.
#
# Families (docs/reference.md §5.2) and the rules they use:
# - R_50_1x / R_50_3x / R_101_3x: body, FPN with top_block.p6 + p7, cls_tower / bbox_tower
#   (GroupNorm at indices 1, 4, 7, 10), basis module, top layer.
# - R_101_dcni3_5x: as R_101, plus `conv2_offset.{weight,bias}` on the deformable blocks, which
#   keeps its name (DeformBottleneck.conv2_offset); `conv2.weight` of those blocks is the
#   deformable conv's weight (same shape, no bias).
# - 550_R_50_3x: FPN with p6 only; share_tower.{0,3,6} convs + {1,4,7} GroupNorm, empty
#   cls/bbox towers; basis tower 0, 1 / 2 = Upsample / 3 / 4.
# - RT_R_50_4x: no top block; SyncBN backbone (its norms carry num_batches_tracked: the same
#   rules); share tower as 550.
# - RT_R_50_4x_bn_head: share-tower norms are one BN per level, `share_tower.{1,4,7}.{level}.*`;
#   our PerLevelBatchNorm is a ModuleList, so the head rule maps them unchanged.
# - Panoptic checkpoints (Panoptic_* presets): the instance branch maps as R_50 / R_101;
#   `backbone.fpn_lateral2/output2` go to `fpn.` with the FPN rule, and `panoptic_module.*`
#   (our SemanticFPNHead, named as detectron2's semantic FPN head) keeps its names.
ADELAIDET_RENAMES: list[tuple[str, str]] = [
    # Checkpoints made before AdelaiDet 281ee24 (2020-04-03) call the predictor `centerness`.
    (r"^proposal_generator\.fcos_head\.centerness\.", "proposal_generator.fcos_head.ctrness."),
    # ResNet stem (detectron2 BasicStem -> torchvision conv1 / bn1). Every family.
    (r"^backbone\.bottom_up\.stem\.conv1\.norm\.", "body.bn1."),
    (r"^backbone\.bottom_up\.stem\.conv1\.", "body.conv1."),
    # ResNet stages: res2..res5 -> layer1..layer4.
    (r"^backbone\.bottom_up\.res2\.", "body.layer1."),
    (r"^backbone\.bottom_up\.res3\.", "body.layer2."),
    (r"^backbone\.bottom_up\.res4\.", "body.layer3."),
    (r"^backbone\.bottom_up\.res5\.", "body.layer4."),
    # Inside a bottleneck: projection shortcut and the norms hung under each conv.
    (r"^(body\.layer\d\.\d+)\.shortcut\.norm\.", r"\1.downsample.1."),
    (r"^(body\.layer\d\.\d+)\.shortcut\.", r"\1.downsample.0."),
    (r"^(body\.layer\d\.\d+)\.conv([123])\.norm\.", r"\1.bn\2."),
    # FPN laterals / outputs and the P6 / P7 top block keep their names under `fpn.`.
    (r"^backbone\.(fpn_lateral|fpn_output|top_block)", r"fpn.\1"),
    # FCOS head: towers, predictors (and `scales.{l}.scale` of USE_SCALE models).
    (r"^proposal_generator\.fcos_head\.", "head."),
    # basis_module.* (refine, tower, seg_head) and top_layer.* are named as the reference.
]

# The inverse, for messages ("missing: backbone.bottom_up.res2.0.conv1.weight").
BLENDMASK_TO_ADELAIDET: list[tuple[str, str]] = [
    (r"^body\.bn1\.", "backbone.bottom_up.stem.conv1.norm."),
    (r"^body\.conv1\.", "backbone.bottom_up.stem.conv1."),
    (r"^body\.layer1\.", "backbone.bottom_up.res2."),
    (r"^body\.layer2\.", "backbone.bottom_up.res3."),
    (r"^body\.layer3\.", "backbone.bottom_up.res4."),
    (r"^body\.layer4\.", "backbone.bottom_up.res5."),
    (r"^(backbone\.bottom_up\.res\d\.\d+)\.downsample\.1\.", r"\1.shortcut.norm."),
    (r"^(backbone\.bottom_up\.res\d\.\d+)\.downsample\.0\.", r"\1.shortcut."),
    (r"^(backbone\.bottom_up\.res\d\.\d+)\.bn([123])\.", r"\1.conv\2.norm."),
    (r"^fpn\.", "backbone."),
    (r"^head\.", "proposal_generator.fcos_head."),
]

_COMPILED = [(re.compile(p), r) for p, r in ADELAIDET_RENAMES]
_COMPILED_INVERSE = [(re.compile(p), r) for p, r in BLENDMASK_TO_ADELAIDET]

# Our buffers that the reference computes with a lambda (not in its state dict).
OWN_BUFFERS = ("pixel_mean", "pixel_std")

# COCO 2017 (contiguous label -> name, category id): the published models' 80 classes.
COCO_CATEGORIES: list[tuple[str, int]] = [
    ("person", 1), ("bicycle", 2), ("car", 3), ("motorcycle", 4), ("airplane", 5), ("bus", 6),
    ("train", 7), ("truck", 8), ("boat", 9), ("traffic light", 10), ("fire hydrant", 11),
    ("stop sign", 13), ("parking meter", 14), ("bench", 15), ("bird", 16), ("cat", 17),
    ("dog", 18), ("horse", 19), ("sheep", 20), ("cow", 21), ("elephant", 22), ("bear", 23),
    ("zebra", 24), ("giraffe", 25), ("backpack", 27), ("umbrella", 28), ("handbag", 31),
    ("tie", 32), ("suitcase", 33), ("frisbee", 34), ("skis", 35), ("snowboard", 36),
    ("sports ball", 37), ("kite", 38), ("baseball bat", 39), ("baseball glove", 40),
    ("skateboard", 41), ("surfboard", 42), ("tennis racket", 43), ("bottle", 44),
    ("wine glass", 46), ("cup", 47), ("fork", 48), ("knife", 49), ("spoon", 50), ("bowl", 51),
    ("banana", 52), ("apple", 53), ("sandwich", 54), ("orange", 55), ("broccoli", 56),
    ("carrot", 57), ("hot dog", 58), ("pizza", 59), ("donut", 60), ("cake", 61), ("chair", 62),
    ("couch", 63), ("potted plant", 64), ("bed", 65), ("dining table", 67), ("toilet", 70),
    ("tv", 72), ("laptop", 73), ("mouse", 74), ("remote", 75), ("keyboard", 76),
    ("cell phone", 77), ("microwave", 78), ("oven", 79), ("toaster", 80), ("sink", 81),
    ("refrigerator", 82), ("book", 84), ("clock", 85), ("vase", 86), ("scissors", 87),
    ("teddy bear", 88), ("hair drier", 89), ("toothbrush", 90),
]  # fmt: skip


# COCO panoptic's 53 stuff categories (name, category id), sorted by id: semantic class s in 1..53
# of the published panoptic models is entry s - 1 (0 is the "thing" class), as detectron2's
# `coco_2017_*_panoptic_separated` data (docs/reference.md §6).
COCO_STUFF_CATEGORIES: list[tuple[str, int]] = [
    ("banner", 92), ("blanket", 93), ("bridge", 95), ("cardboard", 100), ("counter", 107),
    ("curtain", 109), ("door-stuff", 112), ("floor-wood", 118), ("flower", 119), ("fruit", 122),
    ("gravel", 125), ("house", 128), ("light", 130), ("mirror-stuff", 133), ("net", 138),
    ("pillow", 141), ("platform", 144), ("playingfield", 145), ("railroad", 147), ("river", 148),
    ("road", 149), ("roof", 151), ("sand", 154), ("sea", 155), ("shelf", 156), ("snow", 159),
    ("stairs", 161), ("tent", 166), ("towel", 168), ("wall-brick", 171), ("wall-stone", 175),
    ("wall-tile", 176), ("wall-wood", 177), ("water-other", 178), ("window-blind", 180),
    ("window-other", 181), ("tree-merged", 184), ("fence-merged", 185), ("ceiling-merged", 186),
    ("sky-other-merged", 187), ("cabinet-merged", 188), ("table-merged", 189),
    ("floor-other-merged", 190), ("pavement-merged", 191), ("mountain-merged", 192),
    ("grass-merged", 193), ("dirt-merged", 194), ("paper-merged", 195),
    ("food-other-merged", 196), ("building-other-merged", 197), ("rock-merged", 198),
    ("wall-other-merged", 199), ("rug-merged", 200),
]  # fmt: skip


def adelaidet_to_blendmask_key(key: str) -> str:
    """AdelaiDet state-dict key -> our key (`backbone.bottom_up.res3.0.conv1.norm.weight` ->
    `body.layer2.0.bn1.weight`); keys no rule covers are returned unchanged."""
    for pattern, replacement in _COMPILED:
        key = pattern.sub(replacement, key)
    return key


def blendmask_to_adelaidet_key(key: str) -> str:
    """Our key -> the AdelaiDet key it is loaded from (inverse of `adelaidet_to_blendmask_key`)."""
    for pattern, replacement in _COMPILED_INVERSE:
        key = pattern.sub(replacement, key)
    return key
