"""Inference on user images: the one path from images to detections at the original size.

`preprocess` (data/preprocess.py: decode, the reference's resize, pad) -> `infer`
(modeling/inference_step.py: network with the sparse top layer, then the post-processor).
`Predictor`, `blendmask eval`, `explain`, the ONNX predictor and the torchvision adapter all go
through these two functions; resizing never happens inside the network, so every entry point
sees the same pixels.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from blendmask.checkpoint_io import load_model_file
from blendmask.config import Config, apply_overrides, check_probability
from blendmask.data.preprocess import ImageInput, preprocess, to_image_tensor
from blendmask.factory import build, build_postprocessor
from blendmask.input_images import MAX_IMAGE_PIXELS, check_image_size, load_input_image
from blendmask.io import resolve_device
from blendmask.modeling.blendmask import BlendMask
from blendmask.modeling.inference import optimize_for_inference, to_channels_last
from blendmask.modeling.inference_step import infer
from blendmask.modeling.panoptic import infer_panoptic
from blendmask.modeling.postprocess import BlendMaskPostProcessor, candidate_threshold
from blendmask.modeling.precision_gate import choose_path
from blendmask.runtime.precision import InferencePath, check_precision
from blendmask.structures import Detections, ImageBatch, PanopticSegmentation, resolve_classes

__all__ = [
    "DEFAULT_SCORE_THRESHOLD",
    "INFERENCE_KEYS",
    "MAX_IMAGE_PIXELS",
    "ImageInput",
    "Predictor",
    "check_image_size",
    "in_batches",
    "infer",
    "inference_config",
    "load_input_image",
    "to_image_tensor",
]

# The one default score threshold of the Python API (`Predictor`) and `blendmask predict`
# (`--conf`): detections scoring below it (score = sqrt(cls * ctrness)) are dropped. `eval`
# keeps every detection the model gives unless asked (`--conf`): AP needs the low scores.
DEFAULT_SCORE_THRESHOLD = 0.3
# Batches without detections `precision="auto"` waits through before it settles on fp32.
AUTO_PRECISION_TRIES = 3
logger = logging.getLogger("blendmask.predictor")

# The config keys `--set` (predict / eval) and `Predictor.from_checkpoint(overrides=...)` may
# change: the test size and the post-processor's settings. The others describe the network
# the weights belong to (or training), so changing them would not describe the model.
INFERENCE_KEYS = (
    "data.min_size_test",
    "data.max_size_test",
    "data.test_scale",
    "model.fcos.inference_th_test",
    "model.fcos.nms_th",
    "model.fcos.pre_nms_topk_test",
    "model.fcos.post_nms_topk_test",
    "model.fcos.thresh_with_ctr",
    "model.blender.mask_score_power",
    "data.test_flip",
    "data.test_vflip",
)


def in_batches(
    predict_batch: Callable[[Sequence[ImageInput]], list[Detections]],
    images: ImageInput | Sequence[ImageInput],
    batch_size: int,
) -> list[Detections]:
    """One image or a list -> one `Detections` per image, in order, calling `predict_batch`
    on `batch_size` images at a time (the calls of `Predictor` and `OnnxPredictor`)."""
    if not isinstance(images, (list, tuple)):
        images = [images]
    results: list[Detections] = []
    for start in range(0, len(images), batch_size):
        results.extend(predict_batch(images[start : start + batch_size]))
    return results


def inference_config(cfg: Config, overrides: Sequence[str]) -> Config:
    """A validated copy of `cfg` with `key=value` overrides (`--set`) of `INFERENCE_KEYS`.

    ValueError naming the key for any other key: it would describe another network than the
    stored weights (or training, which inference does not read)."""
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if "=" in item and key not in INFERENCE_KEYS:
            raise ValueError(
                f"--set {key}: a trained model takes only inference settings "
                f"({', '.join(INFERENCE_KEYS)})"
            )
    return apply_overrides(copy.deepcopy(cfg), list(overrides)).validate()


def _optional_probability(name: str, value: float | None) -> float | None:
    return None if value is None else check_probability(name, value)


def _positive(name: str, value: int | None, default: int) -> int:
    """`value` (default `default`) as an int >= 1, else ValueError naming `name`."""
    value = default if value is None else value
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


class Predictor:
    """Resize + network + post-process for lists of images.

    >>> predictor = Predictor.from_checkpoint("model.pt", device="cpu", score_threshold=0.5)
    >>> dets = predictor(["a.jpg", "b.png"])   # list[Detections] at original sizes
    >>> dets[0].filter(classes=["person"]).plot("a.jpg")

    Labels are 0-based (`0 .. C-1`); each `Detections` carries the model's class names and
    COCO category ids (`cfg.data`) and can draw itself (`plot`, `save`), as any `Detections`
    can. Detections hold their masks box-local (R x R probabilities + box); `dets[i].masks`
    pastes them (bool[D, H0, W0]) on first access. Images over `max_image_pixels` (default
    `MAX_IMAGE_PIXELS`) raise ValueError before they are decoded.

    Images: paths, PIL images, H x W x 3 numpy arrays or Tensor[3, H, W], RGB. Pixel values:
    uint8 (or another integer dtype) in 0-255; float in [0, 1] (one grey level of slack). A
    float image in 0-255 or already normalised, NaN / infinite values, other dtypes and empty
    images raise a one-line ValueError (`blendmask.image_checks.check_image`); any aspect
    ratio, 1 x N included, is predicted.

    Post-processing knobs (keyword-only; None keeps the model's config), each for this
    Predictor only (the post-processor is copied before one is set, never changed in place):
    - `score_threshold`: drop detections scoring below it (default `DEFAULT_SCORE_THRESHOLD`,
      0.3, as `blendmask predict`; None keeps every detection above the model's candidate
      threshold). Below sqrt of that threshold (`model.fcos.inference_th_test`, 0.05 -> 0.22)
      it lowers it too, so that detections down to it appear (0: every candidate);
    - `nms_iou`: class-aware NMS IoU (`model.fcos.nms_th`, 0.6);
    - `max_detections`: per image after NMS (`model.fcos.post_nms_topk_test`, 100);
    - `min_size` / `max_size`: test size (`data.min_size_test` / `max_size_test`); a config
      with `data.test_scale` > 0 resizes by that factor instead, unless `min_size` is given;
    - `classes`: class names or 0-based labels to keep, applied before NMS and top-k.

    `self.model` is the given model, unchanged (saveable, trainable, used by `explain`). With
    `optimize=True` (default) predictions run on `inference_model()`: an eval copy made by
    `optimize_for_inference` (BatchNorm folded into the convs, channels-last), same outputs
    within ~1e-6 relative. The copy is made at the first prediction and made again whenever a
    parameter or buffer of `self.model` has changed since (hooks registered on `self.model`
    after that first prediction are not seen). `optimize=False` runs `self.model` itself.

    `precision`: "fp32" (default: the same numbers on every machine), "bf16" (the network in
    bf16 autocast, the post-processor in fp32) or "auto": on the first batch with detections,
    the fastest path of the cached probe (`runtime/precision.py`) that passes the accuracy gate
    on that batch (`modeling/precision_gate.py`: mask IoU >= 0.98 against fp32 on the same
    detections); never a path slower than fp32. `precision_report` says what was measured and chosen.
    """

    def __init__(
        self,
        cfg: Config,
        model: BlendMask,
        postprocessor: BlendMaskPostProcessor,
        device: str | torch.device = "cpu",
        batch_size: int = 1,
        optimize: bool = True,
        *,
        score_threshold: float | None = DEFAULT_SCORE_THRESHOLD,
        nms_iou: float | None = None,
        max_detections: int | None = None,
        min_size: int | None = None,
        max_size: int | None = None,
        classes: Sequence[int | str] | None = None,
        precision: str = "fp32",
    ) -> None:
        self.cfg = cfg
        self.precision = check_precision(precision)
        fixed = None if precision == "auto" else InferencePath(precision, channels_last=optimize)
        self._path: InferencePath | None = fixed
        self._auto_tries = 0
        self.precision_report: dict[str, Any] = {}
        self.device = resolve_device(device)
        self.optimize = optimize
        self.model = model.eval().to(self.device)
        self._fast_model: nn.Module | None = None
        self._fast_key: list[tuple[int, int]] = []
        self.postprocessor = postprocessor.eval().to(self.device)
        self._own_post = False
        self._candidate_thresh = getattr(postprocessor, "score_thresh", None)
        self.batch_size = batch_size
        self.min_size = _positive("min_size", min_size, cfg.data.min_size_test)
        self.max_size = _positive("max_size", max_size, cfg.data.max_size_test)
        self.scale = 0.0 if min_size is not None else float(cfg.data.test_scale)
        self.max_image_pixels = MAX_IMAGE_PIXELS
        self.class_names = tuple(cfg.data.category_names) or None
        self.category_ids = tuple(cfg.data.category_ids) or None
        self.score_threshold = score_threshold
        if nms_iou is not None:
            self._post().nms_thresh = check_probability("nms_iou", nms_iou)
        if max_detections is not None:
            self._post().post_nms_topk = _positive("max_detections", max_detections, 0)
        if classes is not None:
            self._post().classes = tuple(self._labels(classes))

    @property
    def score_threshold(self) -> float | None:
        """Detections scoring below this are dropped (None: keep all the model gives)."""
        return self._score_threshold

    @score_threshold.setter
    def score_threshold(self, value: float | None) -> None:
        self._score_threshold = _optional_probability("score_threshold", value)
        base = self._candidate_thresh
        lowered = candidate_threshold(value, base)
        if lowered is not None:
            self._post().score_thresh = lowered
        elif self._own_post and base is not None:
            self.postprocessor.score_thresh = base

    def _post(self) -> BlendMaskPostProcessor:
        """The post-processor, copied on the first knob set so the caller's stays as it was."""
        if not self._own_post:
            self.postprocessor = copy.deepcopy(self.postprocessor)
            self._own_post = True
        return self.postprocessor

    def _labels(self, classes: Sequence[int | str]) -> list[int]:
        if isinstance(classes, (str, int)):
            classes = [classes]
        labels = resolve_classes(classes, self.class_names)
        num_classes = self.cfg.model.fcos.num_classes
        bad = [label for label in labels if label >= num_classes]
        if bad:
            raise ValueError(f"classes: label {bad[0]} out of range [0, {num_classes})")
        return labels

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device = "auto",
        batch_size: int = 1,
        optimize: bool = True,
        *,
        overrides: Sequence[str] = (),
        **options: Any,
    ) -> Predictor:
        """A Predictor for a `model.pt`. `overrides`: `key=value` changes of its config's
        `INFERENCE_KEYS` (as `--set`); `options`: the knobs of `Predictor`."""
        dev = resolve_device(device)
        cfg, model, _, post = load_model_file(path, dev)
        if overrides:
            cfg = inference_config(cfg, overrides)
            post = build_postprocessor(cfg).to(dev)
        return cls(cfg, model, post, dev, batch_size, optimize, **options)

    @classmethod
    def from_config(
        cls,
        cfg: Config,
        device: str | torch.device = "auto",
        batch_size: int = 1,
        optimize: bool = True,
        **options: Any,
    ) -> Predictor:
        """A Predictor with fresh (untrained) weights; `options`: the knobs of `Predictor`."""
        model, _, post = build(cfg, load_pretrained=False)
        return cls(cfg, model, post, device, batch_size, optimize, **options)

    def inference_model(self) -> nn.Module:
        """The module predictions run on: `self.model`, or its optimised copy (kept up to date
        with `self.model`'s weights)."""
        if not self.optimize:
            return self.model
        # (identity, in-place version) of every tensor: changes when weights are loaded,
        # trained or replaced.
        key = [(id(t), t._version) for t in (*self.model.parameters(), *self.model.buffers())]
        channels_last = self._path is None or self._path.channels_last
        key.append((channels_last, 0))
        if self._fast_model is None or key != self._fast_key:
            # Outside inference mode, so the copy holds ordinary tensors.
            with torch.inference_mode(False):
                self._fast_model = optimize_for_inference(
                    self.model.eval(), channels_last=channels_last
                )
            self._fast_key = key
        return self._fast_model

    @torch.inference_mode()
    def __call__(self, images: ImageInput | Sequence[ImageInput]) -> list[Detections]:
        return in_batches(self.predict_tensors, images, self.batch_size)

    def preprocess(self, images: Sequence[ImageInput]) -> tuple[ImageBatch, list[tuple[int, int]]]:
        """Images -> (padded batch on `self.device` at the test size, original sizes).

        ValueError for an image over `self.max_image_pixels` (default `MAX_IMAGE_PIXELS`)."""
        tensors = [load_input_image(image, self.max_image_pixels) for image in images]
        return preprocess(
            tensors, self.min_size, self.max_size, scale=self.scale, device=self.device
        )

    @torch.inference_mode()
    def predict_tensors(self, images: Sequence[ImageInput]) -> list[Detections]:
        """One batch of images (uint8 or float [0, 1] RGB tensors at original size, or anything
        `to_image_tensor` takes) -> detections at original size, on the CPU."""
        batch, orig_sizes = self.preprocess(images)
        path = self._path or self._choose_path(batch)
        if self.optimize and path.channels_last:
            batch = ImageBatch(to_channels_last(batch.tensor), batch.image_sizes)
        dets = infer(self.inference_model(), self.postprocessor, batch, orig_sizes, path)
        return [self._finish(d.to("cpu")) for d in dets]

    def _choose_path(self, batch: ImageBatch) -> InferencePath:
        """`precision="auto"`: the path for this batch, settled once the gate could judge."""
        fp32 = InferencePath("fp32", channels_last=self.optimize)
        tensor = to_channels_last(batch.tensor) if self.optimize else batch.tensor
        gated = ImageBatch(tensor, batch.image_sizes)
        path, self.precision_report = choose_path(self.inference_model(), self.postprocessor, gated)
        self._auto_tries += 1
        if path is None and self._auto_tries < AUTO_PRECISION_TRIES:
            return fp32  # no detection to judge bf16 by yet: fp32 for this batch
        # optimize=False runs self.model in its own layout whatever the probe preferred.
        self._path = (
            fp32
            if path is None
            else InferencePath(path.dtype, self.optimize and path.channels_last)
        )
        self.precision_report["path"] = self._path.name
        logger.info("precision auto: %s (gate: %s)", self._path.name, self.precision_report["gate"])
        return self._path

    @torch.inference_mode()
    def predict_panoptic(
        self, images: ImageInput | Sequence[ImageInput]
    ) -> list[PanopticSegmentation]:
        """Panoptic results at original size (a `model.panoptic` model): the detections of
        `__call__` merged with the semantic argmax (`modeling.panoptic.infer_panoptic`)."""
        if getattr(self.model, "panoptic_module", None) is None:
            raise ValueError(f"predict_panoptic: preset {self.cfg.preset!r} has no semantic head")
        return in_batches(self._panoptic_batch, images, self.batch_size)  # type: ignore[arg-type]

    def _panoptic_batch(self, images: Sequence[ImageInput]) -> list[PanopticSegmentation]:
        batch, orig_sizes = self.preprocess(images)  # any memory layout: the same numbers
        p = self.cfg.model.panoptic
        return infer_panoptic(
            self.inference_model(), self.postprocessor, batch, orig_sizes, finish=self._finish,
            score_threshold=p.instance_score_threshold, overlap_threshold=p.overlap_threshold,
            stuff_area_limit=p.stuff_area_limit, stuff_names=tuple(self.cfg.data.stuff_names),
        )  # fmt: skip

    def _finish(self, det: Detections) -> Detections:
        """`det` at or above the score threshold (`Detections.filter`), with the model's class
        names and category ids. The classes were kept by the post-processor, before NMS."""
        det.class_names, det.category_ids = self.class_names, self.category_ids
        return det.filter(score=self.score_threshold)
