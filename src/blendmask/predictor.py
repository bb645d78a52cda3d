"""Inference on user images: load, resize to the test size, run the network, post-process to the
original image size. Resizing lives here, never inside the network (STYLE.md)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from blendmask.config import Config
from blendmask.data.batching import pad_images
from blendmask.data.transforms import resize_image
from blendmask.factory import build, load_model_file
from blendmask.io import load_image, resolve_device
from blendmask.modeling.blendmask import BlendMask
from blendmask.modeling.inference import optimize_for_inference, to_channels_last
from blendmask.modeling.postprocess import BlendMaskPostProcessor
from blendmask.structures import Detections

ImageInput = str | Path | Image.Image | np.ndarray | Tensor


def to_image_tensor(image: ImageInput) -> Tensor:
    """Any supported image input -> float RGB Tensor[3, H, W] in [0, 1].

    Tensors are taken as already RGB in [0, 1] (float) or [0, 255] (uint8), shape [3, H, W];
    numpy arrays as H x W x 3 uint8 RGB.
    """
    if isinstance(image, (str, Path)):
        image = load_image(Path(image))
    if isinstance(image, Image.Image):
        image = np.array(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an H x W x 3 RGB array, got shape {image.shape}")
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"expected an image tensor of shape [3, H, W], got {shape}")
    if image.dtype == torch.uint8:
        return image.float() / 255.0
    return image.float()


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
            chunk = [to_image_tensor(im) for im in images[start : start + self.batch_size]]
            results.extend(self.predict_tensors(chunk))
        return results

    @torch.inference_mode()
    def predict_tensors(self, images: list[Tensor]) -> list[Detections]:
        """Float RGB [0, 1] tensors at original size -> detections at original size."""
        orig_sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
        resized = [resize_image(im, self.min_size, self.max_size) for im in images]
        batch = pad_images(resized).to(self.device)
        images = to_channels_last(batch.tensor) if self.optimize else batch.tensor
        # Inference needs neither the dense attention map nor the semantic logits.
        outputs = self.inference_model()(
            images, batch.image_sizes, dense_attentions=False, with_sem=False
        )
        dets = self.postprocessor(outputs, batch.image_sizes, orig_sizes)
        return [d.to("cpu") for d in dets]
