"""Inference on user images: the one path from images to detections at the original size.

`preprocess` (data/preprocess.py: decode, the reference's resize, pad) -> `infer` (network with
the sparse top layer, then the post-processor). `Predictor`, `blendmask eval`, `explain`, the
ONNX predictor and the torchvision adapter all go through these two functions; resizing never
happens inside the network (STYLE.md).

Images larger than `MAX_IMAGE_PIXELS` are refused before they are decoded (`check_image_size`):
memory grows with the image (a few copies of H0 x W0 x 3 bytes while decoding, resizing and
drawing), and a corrupt or hostile header must not make the process allocate gigabytes.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from blendmask.checkpoint_io import load_model_file
from blendmask.config import Config
from blendmask.data.preprocess import ImageInput, preprocess, to_image_tensor
from blendmask.factory import build
from blendmask.io import load_image, resolve_device
from blendmask.modeling.blendmask import BlendMask
from blendmask.modeling.inference import optimize_for_inference, to_channels_last
from blendmask.modeling.postprocess import BlendMaskPostProcessor
from blendmask.structures import Detections, ImageBatch

__all__ = [
    "MAX_IMAGE_PIXELS",
    "ImageInput",
    "Predictor",
    "check_image_size",
    "infer",
    "load_input_image",
    "to_image_tensor",
]

# The largest image predict / eval / Predictor accept, in pixels (H0 x W0). Memory grows with
# the image (~0.3 GB per RGB copy at this size), not with its detections: `blendmask predict`
# of a 10000 x 10000 image peaks at ~2.4 GB RSS with overlays on a CPU (~1 GB of it torch).
MAX_IMAGE_PIXELS = 10000 * 10000


def check_image_size(image: ImageInput, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """ValueError naming the image when it has more than `max_pixels` pixels.

    Files are measured from their header (nothing decoded); a file whose header cannot be read
    passes, and decoding it then reports why (`blendmask.io.load_image`).
    """
    name = str(image) if isinstance(image, (str, Path)) else "image"
    width: int | None
    height: int | None
    if isinstance(image, (str, Path)):
        try:
            # PIL warns from 89 MP and refuses from 179 MP on its own; this check decides.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(image) as opened:
                    width, height = opened.size
        except Image.DecompressionBombError:
            width = height = None  # over PIL's own ceiling: certainly over ours
        except Exception:
            return
    elif isinstance(image, Image.Image):
        width, height = image.size
    elif len(getattr(image, "shape", ())) < 2:
        return  # not an image: `to_image_tensor` says why
    elif isinstance(image, Tensor):  # [3, H, W]
        height, width = int(image.shape[-2]), int(image.shape[-1])
    else:  # H x W x 3 array
        height, width = int(image.shape[0]), int(image.shape[1])
    if width is None or height is None or width * height > max_pixels:
        size = "" if width is None or height is None else f" is {width} x {height} px,"
        raise ValueError(
            f"{name}{size} larger than the maximum image size of {max_pixels} pixels "
            f"(MAX_IMAGE_PIXELS, {_side(max_pixels)}); downscale or tile it"
        )


def _side(pixels: int) -> str:
    side = int(pixels**0.5)
    return f"{side} x {side}" if side * side == pixels else f"{pixels} px"


def load_input_image(image: ImageInput, max_pixels: int = MAX_IMAGE_PIXELS) -> Tensor:
    """`to_image_tensor` after `check_image_size`: RGB Tensor[3, H0, W0] (uint8 for decoded
    files), or ValueError / FileNotFoundError naming the file."""
    check_image_size(image, max_pixels)
    if isinstance(image, (str, Path)):
        # Our limit replaces PIL's decompression-bomb limit (~89 MP) for the files we read.
        # One export of the decoded RGB pixels, the PIL image freed before the writable copy
        # torch needs: two H0 x W0 x 3 buffers at a time, not the three of `to_image_tensor`.
        array = np.asarray(load_image(image, max_pixels=max_pixels))
        image = torch.from_numpy(array.copy()).permute(2, 0, 1)
        del array
    tensor = to_image_tensor(image)
    check_image_size(tensor, max_pixels)  # arrays, and files whose header was unreadable
    return tensor


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

    Detections hold their masks box-local (R x R probabilities + box); `dets[i].masks` pastes
    them (bool[D, H0, W0]) on first access. Images over `max_image_pixels` (default
    `MAX_IMAGE_PIXELS`) raise ValueError before they are decoded.

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
        self.max_image_pixels = MAX_IMAGE_PIXELS

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
        """Images -> (padded batch on `self.device` at the test size, original sizes).

        ValueError for an image over `self.max_image_pixels` (default `MAX_IMAGE_PIXELS`)."""
        tensors = [load_input_image(image, self.max_image_pixels) for image in images]
        return preprocess(tensors, self.min_size, self.max_size, device=self.device)

    @torch.inference_mode()
    def predict_tensors(self, images: Sequence[ImageInput]) -> list[Detections]:
        """One batch of images (uint8 or float [0, 1] RGB tensors at original size, or anything
        `to_image_tensor` takes) -> detections at original size, on the CPU."""
        batch, orig_sizes = self.preprocess(images)
        if self.optimize:
            batch = ImageBatch(to_channels_last(batch.tensor), batch.image_sizes)
        dets = infer(self.inference_model(), self.postprocessor, batch, orig_sizes)
        return [d.to("cpu") for d in dets]
