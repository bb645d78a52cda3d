"""Inference on user images: the one path from images to detections at the original size.

`preprocess` (data/preprocess.py: decode, the reference's resize, pad) -> `infer` (network with
the sparse top layer, then the post-processor). `Predictor`, `blendmask eval`, `explain`, the
ONNX predictor and the torchvision adapter all go through these two functions; resizing never
happens inside the network (STYLE.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from blendmask.checkpoint_io import load_model_file
from blendmask.config import Config
from blendmask.data.preprocess import ImageInput, preprocess, to_image_tensor
from blendmask.factory import build
from blendmask.io import resolve_device
from blendmask.modeling.blendmask import BlendMask
from blendmask.modeling.inference import optimize_for_inference, to_channels_last
from blendmask.modeling.postprocess import BlendMaskPostProcessor
from blendmask.structures import Detections, ImageBatch

__all__ = ["ImageInput", "Predictor", "infer", "to_image_tensor"]


def infer(
    model: nn.Module,
    postprocessor: BlendMaskPostProcessor,
    batch: ImageBatch,
    orig_sizes: list[tuple[int, int]],
) -> list[Detections]:
    """The one inference step: network -> post-processor, detections at `orig_sizes`.

    Inference needs neither the dense attention map (the post-processor evaluates the top layer
    only at the kept detections) nor the semantic logits, so the network skips both.
    """
    outputs = model(batch.tensor, batch.image_sizes, dense_attentions=False, with_sem=False)
    return postprocessor(outputs, batch.image_sizes, orig_sizes)


class Predictor:
    """Resize + network + post-process for lists of images.

    >>> predictor = Predictor.from_checkpoint("model.pt", device="cpu")
    >>> dets = predictor(["a.jpg", "b.png"])   # list[Detections] at original sizes

    `self.model` is the given model, unchanged (saveable, trainable, used by `explain`). With
    `optimize=True` (default) predictions run on `inference_model()`: an eval copy made by
    `optimize_for_inference` (BatchNorm folded into the convs, channels-last), same outputs
    within ~1e-6 relative. The copy is made at the first prediction and made again whenever a
    parameter or buffer of `self.model` has changed since (hooks registered on `self.model`
    after that first prediction are not seen). `optimize=False` runs `self.model` itself.
    """

    def __init__(
        self,
        cfg: Config,
        model: BlendMask,
        postprocessor: BlendMaskPostProcessor,
        device: str | torch.device = "cpu",
        batch_size: int = 1,
        optimize: bool = True,
    ) -> None:
        self.cfg = cfg
        self.device = resolve_device(device)
        self.optimize = optimize
        self.model = model.eval().to(self.device)
        self._fast_model: nn.Module | None = None
        self._fast_key: list[tuple[int, int]] = []
        self.postprocessor = postprocessor.eval().to(self.device)
        self.batch_size = batch_size
        self.min_size = cfg.data.min_size_test
        self.max_size = cfg.data.max_size_test

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device = "auto",
        batch_size: int = 1,
        optimize: bool = True,
    ) -> Predictor:
        dev = resolve_device(device)
        cfg, model, _, post = load_model_file(path, dev)
        return cls(cfg, model, post, dev, batch_size, optimize)

    @classmethod
    def from_config(
        cls,
        cfg: Config,
        device: str | torch.device = "auto",
        batch_size: int = 1,
        optimize: bool = True,
    ) -> Predictor:
        model, _, post = build(cfg, load_pretrained=False)
        return cls(cfg, model, post, device, batch_size, optimize)

    def inference_model(self) -> nn.Module:
        """The module predictions run on: `self.model`, or its optimised copy (kept up to date
        with `self.model`'s weights)."""
        if not self.optimize:
            return self.model
        # (identity, in-place version) of every tensor: changes when weights are loaded,
        # trained or replaced.
        key = [(id(t), t._version) for t in (*self.model.parameters(), *self.model.buffers())]
        if self._fast_model is None or key != self._fast_key:
            # Outside inference mode, so the copy holds ordinary tensors.
            with torch.inference_mode(False):
                self._fast_model = optimize_for_inference(self.model.eval())
            self._fast_key = key
        return self._fast_model

    @torch.inference_mode()
    def __call__(self, images: ImageInput | Sequence[ImageInput]) -> list[Detections]:
        if not isinstance(images, (list, tuple)):
            images = [images]
        results: list[Detections] = []
        for start in range(0, len(images), self.batch_size):
            results.extend(self.predict_tensors(images[start : start + self.batch_size]))
        return results

    def preprocess(self, images: Sequence[ImageInput]) -> tuple[ImageBatch, list[tuple[int, int]]]:
        """Images -> (padded batch on `self.device` at the test size, original sizes)."""
        return preprocess(images, self.min_size, self.max_size, device=self.device)

    @torch.inference_mode()
    def predict_tensors(self, images: Sequence[ImageInput]) -> list[Detections]:
        """One batch of images (uint8 or float [0, 1] RGB tensors at original size, or anything
        `to_image_tensor` takes) -> detections at original size, on the CPU."""
        batch, orig_sizes = self.preprocess(images)
        if self.optimize:
            batch = ImageBatch(to_channels_last(batch.tensor), batch.image_sizes)
        dets = infer(self.inference_model(), self.postprocessor, batch, orig_sizes)
        return [d.to("cpu") for d in dets]
