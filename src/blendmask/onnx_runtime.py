"""Run an end-to-end BlendMask ONNX file with numpy, Pillow and onnxruntime only (no torch).

>>> from blendmask.onnx_runtime import OnnxSegmenter
>>> segmenter = OnnxSegmenter("model.onnx")        # written by `blendmask export`
>>> boxes, scores, labels, masks = segmenter("photo.jpg")

Everything after the preprocessing runs inside the graph (`export/end_to_end.py`: network,
selection, NMS, blender, pasting at the original size). The preprocessing is the package's
(`data/preprocess.py`), rewritten here without torch and kept equal to it by tests: decode
(`io.load_image`: EXIF orientation, conversion to 8-bit RGB), the shortest-edge size
(`data/transforms.py::get_output_size`), PIL's bilinear resize of the uint8 image
(`transforms.resize_to`), zero padding to a multiple of 32 and the division by 255
(`data/batching.py::pad_images`). The sizes come from the file's metadata.

This module is in the bottom layer and imports nothing that imports torch (checked by
tests/test_onnx_runtime.py in a fresh interpreter).

Shapes: D detections, H0/W0 original image size, R mask resolution.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageOps

from blendmask.image_checks import check_image

# Runtimes of an end-to-end file: this module's, or OpenVINO (export/openvino_segmenter.py).
BACKENDS = ("onnxruntime", "openvino")
METADATA_KEY = "blendmask_end_to_end"  # = export/end_to_end_onnx.py END_TO_END_METADATA_KEY
SUPPORTED_FORMAT_VERSION = 1

RuntimeImage = str | Path | Image.Image | np.ndarray


class Segmentation(NamedTuple):
    """Detections of one image, in original-image pixels, by decreasing score.

    boxes (float32[D, 4]): xyxy, clipped to the image.
    scores (float32[D]): in (0, 1].
    labels (int64[D]): 0-based class (`OnnxSegmenter.category_ids` maps it to the dataset's).
    masks (bool[D, H0, W0] | None): None for a file exported without pasting.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None


def get_output_size(
    height: int, width: int, min_size: int, max_size: int, scale: float = 0.0
) -> tuple[int, int]:
    """`data/transforms.py::get_output_size`, the same arithmetic: shorter side to
    `min_size` (or both sides times `scale` when > 0), longer side capped at `max_size`
    (<= 0: no cap), each rounded int(x + 0.5), at least 1."""
    if scale > 0:
        new_height, new_width = height * scale, width * scale
    else:
        factor = min_size / min(height, width)
        if height < width:
            new_height, new_width = float(min_size), factor * width
        else:
            new_height, new_width = factor * height, float(min_size)
    if max_size > 0 and max(new_height, new_width) > max_size:
        cap = max_size / max(new_height, new_width)
        new_height, new_width = new_height * cap, new_width * cap
    # At least 1: a 1 x 10000 image would otherwise get a 0-pixel side and stop the run.
    return max(1, int(new_height + 0.5)), max(1, int(new_width + 0.5))


def _to_rgb(image: Image.Image) -> Image.Image:
    """`io._to_rgb`: any PIL mode -> "RGB", 16-bit scaled by 1/257, [0, 1] floats by 255."""
    if image.mode.startswith("I"):
        array = np.asarray(image).astype(np.float32)
        if image.mode.startswith("I;16") or array.max(initial=0) > 255:
            array /= 257.0
        image = Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        array = np.array(image, dtype=np.float32)
        if not np.isfinite(array).all():
            raise ValueError("float image with NaN or infinite values")
        if array.size and array.max() <= 1.0:
            np.clip(array, 0.0, 1.0, out=array)
            array *= 255.0
        image = Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "P":
        image = image.convert("RGBA")
    return image.convert("RGB")


def load_rgb(image: RuntimeImage) -> np.ndarray:
    """A path, PIL image or H x W x 3 uint8 RGB array -> uint8[H0, W0, 3] RGB, decoded as
    `io.load_image` does (EXIF orientation for files)."""
    name = str(image) if isinstance(image, (str, Path)) else "image"
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        try:
            with Image.open(path) as opened:
                opened.load()
                image = _to_rgb(ImageOps.exif_transpose(opened))
        except Exception as exc:  # PIL raises many types; name the file
            raise ValueError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", type(image).__name__)
        raise ValueError(f"expected an H x W x 3 RGB image, got {shape}")
    if image.dtype != np.uint8:
        raise ValueError(
            f"expected a uint8 RGB array (0-255), got {image.dtype}: the package resizes "
            "decoded uint8 images with PIL, and only those give the same numbers"
        )
    check_image(image, "HWC", name)  # the package's check: an empty image is refused alike
    return image


def resize_rgb(image: np.ndarray, min_size: int, max_size: int, scale: float = 0.0) -> np.ndarray:
    """uint8[H0, W0, 3] -> uint8[h, w, 3] at the test size, PIL bilinear on uint8 (as the
    package and the reference)."""
    height, width = image.shape[:2]
    size = get_output_size(height, width, min_size, max_size, scale)
    if size == (height, width):
        return image
    resized = Image.fromarray(np.ascontiguousarray(image)).resize(
        (size[1], size[0]), Image.Resampling.BILINEAR
    )
    return np.asarray(resized)


def pad_batch(images: Sequence[np.ndarray], size_divisibility: int) -> np.ndarray:
    """uint8[h_i, w_i, 3] images -> float32[N, 3, H, W] in [0, 1], zero padded at the
    bottom/right to a multiple of `size_divisibility` (`pad_images`: x / 255 in float32)."""
    height = max(int(image.shape[0]) for image in images)
    width = max(int(image.shape[1]) for image in images)
    if size_divisibility > 1:
        height = -(-height // size_divisibility) * size_divisibility
        width = -(-width // size_divisibility) * size_divisibility
    batch = np.zeros((len(images), 3, height, width), dtype=np.float32)
    for padded, image in zip(batch, images):
        # (h, w, 3) -> (3, h, w)
        padded[:, : image.shape[0], : image.shape[1]] = image.transpose(2, 0, 1).astype(
            np.float32
        ) / np.float32(255.0)
    return batch


def preprocess_images(
    images: Sequence[RuntimeImage],
    min_size: int,
    max_size: int,
    size_divisibility: int = 32,
    scale: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images -> (float32[N, 3, H, W] batch, int64[N, 2] resized sizes (h, w), int64[N, 2]
    original sizes (H0, W0)): the end-to-end graph's inputs, as `data/preprocess.py` makes
    them."""
    decoded = [load_rgb(image) for image in images]
    if not decoded:
        raise ValueError("expected at least one image")
    resized = [resize_rgb(image, min_size, max_size, scale) for image in decoded]
    batch = pad_batch(resized, size_divisibility)
    image_sizes = np.array([image.shape[:2] for image in resized], dtype=np.int64)
    orig_sizes = np.array([image.shape[:2] for image in decoded], dtype=np.int64)
    return batch, image_sizes, orig_sizes


def split_outputs(outputs: dict[str, np.ndarray], orig_sizes: np.ndarray) -> list[Segmentation]:
    """The graph's batched outputs (by name) -> one `Segmentation` per image: its first
    `num_detections` rows, masks cut to its own size."""
    results = []
    masks = outputs.get("masks")
    for i, (count, (height, width)) in enumerate(zip(outputs["num_detections"], orig_sizes)):
        n = int(count)
        results.append(
            Segmentation(
                boxes=outputs["boxes"][i, :n],
                scores=outputs["scores"][i, :n],
                labels=outputs["labels"][i, :n],
                masks=None if masks is None else masks[i, :n, :height, :width],
            )
        )
    return results


class OnnxSegmenter:
    """An end-to-end ONNX file (`blendmask export`) on onnxruntime, with the package's
    preprocessing; returns `Segmentation`s at the original image size.

    Args:
        path: the .onnx file.
        providers: onnxruntime execution providers (default CPU).
        threads: onnxruntime intra-op threads (default: onnxruntime's choice).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: ONNX file not found")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(
                str(self.path), options, providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ValueError(f"{self.path}: not a readable ONNX model ({exc})") from None
        self.metadata = self._read_metadata()
        self.min_size = int(self.metadata["min_size"])
        self.max_size = int(self.metadata["max_size"])
        self.scale = float(self.metadata.get("scale", 0.0))  # absent in older exports
        self.size_divisibility = int(self.metadata["size_divisibility"])
        self.category_ids = list(self.metadata["category_ids"])
        self.category_names = list(self.metadata.get("category_names", []))
        self.output_names = [o.name for o in self.session.get_outputs()]

    def _read_metadata(self) -> dict[str, Any]:
        custom = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in custom:
            raise ValueError(
                f"{self.path}: not an end-to-end blendmask export (no {METADATA_KEY} metadata); "
                "export it with `blendmask export --end-to-end`"
            )
        metadata = json.loads(custom[METADATA_KEY])
        version = metadata.get("format_version")
        if version != SUPPORTED_FORMAT_VERSION:
            raise ValueError(
                f"{self.path}: end-to-end format version {version}, this runtime reads "
                f"{SUPPORTED_FORMAT_VERSION}"
            )
        return metadata

    def preprocess(
        self, images: Sequence[RuntimeImage]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`preprocess_images` with this file's sizes: the graph's three inputs."""
        return preprocess_images(
            images, self.min_size, self.max_size, self.size_divisibility, self.scale
        )

    def predict_batch(self, images: Sequence[RuntimeImage]) -> list[Segmentation]:
        """One onnxruntime call for all `images` (padded to the largest): a `Segmentation`
        per image."""
        batch, image_sizes, orig_sizes = self.preprocess(images)
        arrays = self.session.run(
            None, {"images": batch, "image_sizes": image_sizes, "orig_sizes": orig_sizes}
        )
        return split_outputs(dict(zip(self.output_names, arrays)), orig_sizes)

    def __call__(self, image: RuntimeImage) -> Segmentation:
        """One image (path, PIL image or uint8 H x W x 3 RGB array) -> its `Segmentation`."""
        return self.predict_batch([image])[0]
