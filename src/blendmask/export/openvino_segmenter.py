"""Run an end-to-end BlendMask ONNX file (`blendmask export`) in OpenVINO instead of onnxruntime:
`predict --onnx F --backend openvino` (the `openvino` extra).

OpenVINO reads the same graph, NMS and RoiAlign included, and with `INFERENCE_PRECISION_HINT`
f32 gives onnxruntime's detections (tests/test_openvino.py). Its default on a CPU with native
bf16 is bf16 for the whole graph, which moved scores by up to 0.028 and the mean mask IoU to
0.944 in issue 25's measurement: below the accuracy gate, so f32 is the default here and
another hint ("bf16") must be asked for by name.

Preprocessing and splitting the batched outputs are the torch-free runtime's
(`blendmask.onnx_runtime`), so both backends see the same pixels.

Shapes: N images, D detections, H0/W0 original image size.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from blendmask.onnx_runtime import (
    METADATA_KEY,
    SUPPORTED_FORMAT_VERSION,
    RuntimeImage,
    Segmentation,
    preprocess_images,
    split_outputs,
)

PRECISION_HINTS = ("f32", "bf16")


def _require_openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise ValueError(
            "the openvino backend needs OpenVINO: pip install 'blendmask[openvino]'"
        ) from None
    return openvino


def read_end_to_end_metadata(path: Path) -> dict[str, Any]:
    """The end-to-end metadata of an exported file (the weights are not read)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    custom = {entry.key: entry.value for entry in proto.metadata_props}
    if METADATA_KEY not in custom:
        raise ValueError(
            f"{path}: not an end-to-end blendmask export (no {METADATA_KEY} metadata); "
            "export it with `blendmask export --end-to-end`"
        )
    metadata = json.loads(custom[METADATA_KEY])
    if metadata.get("format_version") != SUPPORTED_FORMAT_VERSION:
        raise ValueError(
            f"{path}: end-to-end format version {metadata.get('format_version')}, this "
            f"runtime reads {SUPPORTED_FORMAT_VERSION}"
        )
    return metadata


class OpenVinoSegmenter:
    """`OnnxSegmenter`'s interface (`predict_batch`, `__call__`, sizes and categories from the
    metadata) on OpenVINO's CPU plugin.

    Args:
        path: the .onnx file written by `blendmask export`.
        precision: OpenVINO's `INFERENCE_PRECISION_HINT`, "f32" (default: onnxruntime's
            numbers) or "bf16".
        threads: `INFERENCE_NUM_THREADS` (default: OpenVINO's choice).
    """

    def __init__(
        self, path: str | Path, *, precision: str = "f32", threads: int | None = None
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: ONNX file not found")
        if precision not in PRECISION_HINTS:
            raise ValueError(
                f"openvino precision: expected one of {', '.join(PRECISION_HINTS)}, "
                f"got {precision!r}"
            )
        openvino = _require_openvino()
        self.metadata = read_end_to_end_metadata(self.path)
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self.compiled = openvino.Core().compile_model(str(self.path), "CPU", config)
        except Exception as exc:  # OpenVINO raises its own RuntimeError subclasses
            raise ValueError(f"{self.path}: OpenVINO cannot load it ({exc})") from None
        self.request = self.compiled.create_infer_request()
        self.min_size = int(self.metadata["min_size"])
        self.max_size = int(self.metadata["max_size"])
        self.scale = float(self.metadata.get("scale", 0.0))
        self.size_divisibility = int(self.metadata["size_divisibility"])
        self.category_ids = list(self.metadata["category_ids"])
        self.category_names = list(self.metadata.get("category_names", []))

    def predict_batch(self, images: Sequence[RuntimeImage]) -> list[Segmentation]:
        """One OpenVINO call for all `images` (padded to the largest): a `Segmentation` each."""
        batch, image_sizes, orig_sizes = preprocess_images(
            images, self.min_size, self.max_size, self.size_divisibility, self.scale
        )
        results = self.request.infer(
            {"images": batch, "image_sizes": image_sizes, "orig_sizes": orig_sizes}
        )
        # Copies: the request reuses its output buffers at the next call.
        outputs = {port.any_name: results[port].copy() for port in self.compiled.outputs}
        return split_outputs(outputs, orig_sizes)

    def __call__(self, image: RuntimeImage) -> Segmentation:
        """One image (path, PIL image or uint8 H x W x 3 RGB array) -> its `Segmentation`."""
        return self.predict_batch([image])[0]
