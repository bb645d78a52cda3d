"""A drop-in for `torchvision.models.detection.maskrcnn_resnet50_fpn` in training and inference
loops (torchvision's references/detection style): only the constructor changes.

The contract is torchvision's (see `TorchvisionDetector`): `num_classes` counts the background,
labels are 1-based, images float RGB in [0, 1] (uint8 raises torchvision's TypeError rather than
being read as 255x too bright), targets checked before anything runs, and masks returned as
probabilities float[D, 1, H, W]. Images go through the one preprocessing path
(`data/preprocess.py`) and `modeling.inference_step.infer`.

`TorchvisionDetector` subclasses `MaskRCNN` without running its constructor: loops that pick
their work by `isinstance(model, MaskRCNN)` treat it as an instance-mask model (references/
detection's `evaluate` scores `segm` only then), while none of Mask R-CNN's modules is built.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN

from blendmask.checkpoint_io import load_model_file, save_model_file
from blendmask.config import Config
from blendmask.data.preprocess import preprocess
from blendmask.data.torchvision_format import (
    TargetError,
    check_images,
    check_targets,
    to_blendmask_target,
)
from blendmask.factory import build, build_postprocessor
from blendmask.interop.torchvision_weights import resolve_weight_conventions
from blendmask.modeling.inference_step import infer
from blendmask.presets import get_preset
from blendmask.structures import Detections

__all__ = ["TargetError", "TorchvisionDetector"]

logger = logging.getLogger(__name__)


class TorchvisionDetector(MaskRCNN):
    """BlendMask behind `torchvision.models.detection.maskrcnn_resnet50_fpn`'s interface.

    An instance of `MaskRCNN` for `isinstance` (so torchvision's references/detection
    `evaluate` scores masks as well as boxes), but an `nn.Module` holding BlendMask only:
    `model`, `criterion`, `postprocessor`; Mask R-CNN's `backbone`, `rpn`, `roi_heads` and
    `transform` do not exist here.

    `model(images)` (eval) -> one dict per image: "boxes" float[D, 4] xyxy, "labels" int64[D]
    in 1..num_classes-1, "scores" float[D], "masks" float[D, 1, H, W] probabilities in [0, 1]
    (threshold at 0.5 for binary masks); `model(images, targets)` (train) -> dict of losses
    (loss_fcos_cls, loss_fcos_loc, loss_fcos_ctr, loss_mask, loss_basis_sem) to sum.

    Args:
        num_classes: as torchvision counts them, background included:
            `TorchvisionDetector(num_classes=3)` has 2 foreground classes, labels 1 and 2.
            Default: the preset's classes + 1 (81 for the COCO presets: 80 contiguous
            categories, not torchvision's 91 COCO ids), or the model file's.
        weights: a blendmask `model.pt` (written by `train`, `convert` or `save`); the
            architecture and class count come from it (num_classes must then agree).
        weights_backbone: an ImageNet file for a new model's body (torchvision resnet*.pth,
            MSRA R-*.pkl, or a Lite0 file); the input normalisation follows the file. Without
            it (and without `weights`) a ResNet body starts from random weights (a warning says
            so): torchvision downloads these, blendmask never fetches anything.
        preset: the architecture of a new model (`blendmask presets`), e.g. "R_50_1x", "tiny".
        config: a whole Config instead of `preset` (see `from_config`).
        box_score_thresh, box_nms_thresh, box_detections_per_img: as torchvision's; default:
            the preset's / model file's (0.05, 0.6, 100 for the reference presets).
        min_size, max_size: the shortest-edge resize; `min_size` may be a sequence (a size is
            drawn per training batch; evaluation uses the last, as torchvision does). Default:
            the preset's test size (800 / 1333 for the reference presets).

    Images: a list (or a batched Tensor[N, 3, H, W]) of float RGB Tensor[3, H, W] in [0, 1], of
    any sizes, on the module's device. Targets: one dict per image with "boxes" float[N, 4]
    xyxy in the image's pixels, "labels" int64[N] in 1..num_classes-1 and "masks"
    uint8/bool[N, H, W] (BlendMask learns from instance masks).
    """

    def __init__(
        self,
        num_classes: int | None = None,
        *,
        weights: str | Path | None = None,
        weights_backbone: str | Path | None = None,
        preset: str = "R_50_1x",
        config: Config | None = None,
        box_score_thresh: float | None = None,
        box_nms_thresh: float | None = None,
        box_detections_per_img: int | None = None,
        min_size: int | Sequence[int] | None = None,
        max_size: int | None = None,
    ) -> None:
        # nn.Module's constructor, not MaskRCNN's: that one builds Mask R-CNN's backbone and
        # heads, which this module replaces; only the class relation is wanted.
        nn.Module.__init__(self)
        if weights is not None and (weights_backbone is not None or config is not None):
            raise ValueError(
                "TorchvisionDetector: weights (a model file) holds the whole model; give "
                "weights_backbone or config only for a new model"
            )
        if weights is not None:
            cfg, self.model, self.criterion, _ = load_model_file(weights)
            _check_num_classes_of_file(num_classes, cfg, weights)
            self.model.train()  # nn.Module's default mode, as torchvision's constructors
        else:
            cfg = copy.deepcopy(config) if config is not None else get_preset(preset)
            cfg = _new_model_config(cfg, num_classes, weights_backbone)
        cfg = _with_inference_settings(
            cfg, box_score_thresh, box_nms_thresh, box_detections_per_img, min_size, max_size
        )
        if weights is None:
            self.model, self.criterion, _ = build(cfg)
            _warn_if_random_body(cfg)
        self.postprocessor = build_postprocessor(cfg)
        self.cfg = cfg
        # The sizes a training batch draws from; evaluation uses the test size (the last).
        self.min_sizes = (
            list(cfg.data.min_size_train) if min_size is not None else [cfg.data.min_size_test]
        )
        self.max_size = cfg.data.max_size_test
        # a fixed test-time factor (`data.test_scale`) unless min_size was given
        self.test_scale = 0.0 if min_size is not None else float(cfg.data.test_scale)

    @property
    def num_classes(self) -> int:
        """Classes as torchvision counts them: the foreground classes + 1 (the background)."""
        return self.cfg.model.fcos.num_classes + 1

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs: object) -> TorchvisionDetector:
        """`TorchvisionDetector(weights=path, **kwargs)`: a blendmask `model.pt`."""
        return cls(weights=path, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def from_config(cls, cfg: Config, **kwargs: object) -> TorchvisionDetector:
        """`TorchvisionDetector(config=cfg, **kwargs)`: a new model of `cfg`, whose test sizes
        and inference settings are the defaults of the keywords."""
        return cls(config=cfg, **kwargs)  # type: ignore[arg-type]

    def save(self, path: str | Path) -> None:
        """Write a `model.pt` (config with this module's settings + weights) that
        `from_checkpoint`, `blendmask predict` / `eval` and `Predictor` read."""
        save_model_file(path, self.cfg, self.model)

    def forward(
        self,
        images: Sequence[Tensor] | Tensor,
        targets: Sequence[dict[str, Tensor]] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Train mode: images + targets -> {loss name: scalar Tensor}; eval mode: images ->
        one {"boxes", "labels", "scores", "masks"} per image, at its input size (see the class
        docstring). Inputs torchvision would refuse, or crash on later, raise TypeError or
        ValueError (`TargetError` for targets) before the network runs."""
        images = check_images(images)
        if self.training:
            if targets is None:
                raise TargetError("targets should not be none when in training mode")
            check_targets(targets, images, self.num_classes)
            return self._losses(images, targets)
        return self._detect(images)

    def _losses(self, images: list[Tensor], targets: Sequence[dict[str, Tensor]]) -> dict:
        """Resize (one drawn `min_size` per batch), then network + criterion."""
        pick = int(torch.randint(len(self.min_sizes), ()).item()) if len(self.min_sizes) > 1 else 0
        batch, orig_sizes = preprocess(images, self.min_sizes[pick], self.max_size)
        outputs = self.model(batch.tensor, batch.image_sizes)
        ours = [
            to_blendmask_target(t, orig, size)
            for t, orig, size in zip(targets, orig_sizes, batch.image_sizes)
        ]
        return self.criterion(outputs, ours)

    def _detect(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        batch, orig_sizes = preprocess(
            images, self.min_sizes[-1], self.max_size, scale=self.test_scale
        )
        return [
            _torchvision_output(d) for d in infer(self.model, self.postprocessor, batch, orig_sizes)
        ]


def _torchvision_output(det: Detections) -> dict[str, Tensor]:
    """Our detections -> Mask R-CNN's output dict: 1-based labels, masks float[D, 1, H0, W0]
    (the blender's probabilities pasted into the image, before the 0.5 threshold)."""
    return {
        "boxes": det.boxes,
        "labels": det.labels + 1,
        "scores": det.scores,
        "masks": det.mask_probabilities()[:, None],
    }


def _check_num_classes_of_file(num_classes: int | None, cfg: Config, path: str | Path) -> None:
    """torchvision's rule: `num_classes` given with `weights` must be the weights' own."""
    expected = cfg.model.fcos.num_classes + 1
    if num_classes is not None and num_classes != expected:
        raise ValueError(
            f"The parameter 'num_classes' expected value {expected} but got {num_classes} "
            f"instead: {path} holds a model of {expected - 1} classes + the background"
        )


def _new_model_config(
    cfg: Config, num_classes: int | None, weights_backbone: str | Path | None
) -> Config:
    """`cfg` with torchvision's `num_classes` (background included) and ImageNet weights."""
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(
                f"num_classes counts the background, as in torchvision: expected an integer "
                f">= 2 (the background + at least 1 class), got {num_classes!r}"
            )
        if num_classes - 1 != cfg.model.fcos.num_classes:
            cfg.model.fcos.num_classes = num_classes - 1
            cfg.data.category_names, cfg.data.category_ids = [], []
    if weights_backbone is not None:
        if not Path(weights_backbone).is_file():
            raise FileNotFoundError(f"{weights_backbone}: weights_backbone file not found")
        cfg.model.backbone.weights = str(weights_backbone)
        cfg = resolve_weight_conventions(cfg)
    return cfg


def _with_inference_settings(
    cfg: Config,
    score_thresh: float | None,
    nms_thresh: float | None,
    detections_per_img: int | None,
    min_size: int | Sequence[int] | None,
    max_size: int | None,
) -> Config:
    """`cfg` with the keywords given (the rest as they are), validated: a bad value is a
    ConfigError naming the setting."""
    f, d = cfg.model.fcos, cfg.data
    if score_thresh is not None:
        f.inference_th_test = score_thresh
    if nms_thresh is not None:
        f.nms_th = nms_thresh
    if detections_per_img is not None:
        f.post_nms_topk_test = detections_per_img
    if min_size is not None:
        sizes = [min_size] if isinstance(min_size, int) else list(min_size)
        d.min_size_train, d.min_size_test = sizes, sizes[-1] if sizes else 0
    if max_size is not None:
        d.max_size_train = d.max_size_test = max_size
    return cfg.validate()


def _warn_if_random_body(cfg: Config) -> None:
    b = cfg.model.backbone
    if b.name.startswith("resnet") and not b.weights:
        logger.warning(
            "TorchvisionDetector: the %s body starts from random weights; for training, pass "
            "weights_backbone= an ImageNet file (torchvision %s-*.pth or MSRA R-*.pkl)",
            b.name,
            b.name,
        )
