"""int8 post-training quantization of an end-to-end ONNX file (`blendmask export --int8`),
calibrated on a few of the user's images, with its accuracy gate (`export/int8_gate.py`).

onnxruntime's static quantization (QDQ format, weights int8 per output channel, activations
uint8 from min/max calibration: the u8s8 kernels that AVX512-VNNI runs) quantizes the network's
convolutions only; NMS, RoiAlign, the blender and pasting stay float, as do the output convs
of the heads (`FLOAT_OUTPUT_CONVS`: class logits, box regression, centerness, attentions and the
bases, whose small errors become scores, boxes and mask edges). Chosen over OpenVINO NNCF by
measurement (docs/prediction.md): both give the file onnxruntime and OpenVINO run alike.

The int8 file keeps the fp32 file's metadata (preprocessing, classes, config) and adds
`INT8_METADATA_KEY`: the gate's figures, the calibration and whether it was forced.

Shapes: N images, H/W padded input size.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from blendmask.atomic import atomic_write
from blendmask.data.sources import IMAGE_SUFFIXES
from blendmask.export.int8_gate import Int8Report, gate
from blendmask.onnx_runtime import OnnxSegmenter

INT8_METADATA_KEY = "blendmask_int8"
# Name fragments of the head output convs kept in float (see the docstring); the bases' last
# conv is found by position (the basis tower's length depends on the preset).
FLOAT_OUTPUT_CONVS = ("/cls_logits", "/bbox_pred", "/ctrness", "/top_layer")
BASIS_CONVS = "/basis_module/"


def calibration_images(folder: str | Path, count: int) -> tuple[list[Path], list[Path]]:
    """(calibration, held-out) image files of `folder`, by name: the first `count`, and up to
    `count` of the rest for the gate (none when the folder has no more)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--calib: {folder} is not a folder of images")
    if count < 1:
        raise ValueError(f"--calib-count: expected at least 1 image, got {count}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(
            f"--calib: no images in {folder} (expected {', '.join(IMAGE_SUFFIXES)} files)"
        )
    return files[:count], files[count : 2 * count]


class _Reader:
    """onnxruntime's `CalibrationDataReader`: one image at a time, as `OnnxSegmenter` feeds the
    graph (the package's preprocessing, so calibration sees the pixels inference sees)."""

    def __init__(self, segmenter: OnnxSegmenter, images: Sequence[Any]) -> None:
        self.segmenter = segmenter
        self.images: Iterator[Any] = iter(images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        image = next(self.images, None)
        if image is None:
            return None
        batch, image_sizes, orig_sizes = self.segmenter.preprocess([image])
        return {"images": batch, "image_sizes": image_sizes, "orig_sizes": orig_sizes}


def float_convs(model: Any) -> list[str]:
    """Names of the Conv nodes of `model` (an onnx ModelProto) kept in float: the head output
    convs and the last conv of the basis module (the bases)."""
    convs = [node.name for node in model.graph.node if node.op_type == "Conv"]
    names = [name for name in convs if any(part in name for part in FLOAT_OUTPUT_CONVS)]
    basis = [name for name in convs if BASIS_CONVS in name]
    return names + basis[-1:]


def quantize_file(fp32_path: str | Path, out_path: str | Path, images: Sequence[Any]) -> Path:
    """Write the int8 version of the end-to-end file `fp32_path` to `out_path`, calibrated on
    `images` (paths, PIL images or uint8 H x W x 3 arrays)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    segmenter = OnnxSegmenter(fp32_path)
    model = onnx.load(str(fp32_path))
    quantize_static(
        str(fp32_path),
        str(out_path),
        _Reader(segmenter, images),  # type: ignore[arg-type]  # the protocol, duck-typed
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["Conv"],
        nodes_to_exclude=float_convs(model),
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    return out_path


def write_int8_metadata(path: Path, entry: dict[str, Any]) -> None:
    """Add (or replace) the `INT8_METADATA_KEY` entry of the ONNX file at `path`."""
    import onnx

    model = onnx.load(str(path))
    kept = [e for e in model.metadata_props if e.key != INT8_METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    new = model.metadata_props.add()
    new.key, new.value = INT8_METADATA_KEY, json.dumps(entry)
    onnx.save(model, str(path))


def read_int8_metadata(path: str | Path) -> dict[str, Any] | None:
    """The `INT8_METADATA_KEY` entry of an ONNX file (None for an fp32 file)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for entry in model.metadata_props:
        if entry.key == INT8_METADATA_KEY:
            return json.loads(entry.value)
    return None


def quantize_and_gate(
    fp32_path: str | Path,
    out_path: str | Path,
    calib_dir: str | Path,
    *,
    count: int = 8,
    force: bool = False,
) -> tuple[Int8Report, bool]:
    """Quantize `fp32_path` on the first `count` images of `calib_dir`, gate it against the
    fp32 file on the next `count` (the calibration images themselves when there are no more),
    and write it to `out_path` with the gate's figures only when it passes or `force`.

    Returns:
        (the gate's report, whether `out_path` was written).
    """
    calib, held_out = calibration_images(calib_dir, count)
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="blendmask_int8_") as tmp:
        candidate = Path(tmp) / "int8.onnx"
        quantize_file(fp32_path, candidate, calib)
        report = gate(OnnxSegmenter(fp32_path), OnnxSegmenter(candidate), held_out or calib)
        if not (report.passed() or force):
            return report, False
        entry = {
            "tool": "onnxruntime.quantization.quantize_static (QDQ, per-channel, u8s8, MinMax)",
            "calibration_images": [p.name for p in calib],
            "gate_images": "held out" if held_out else "the calibration images",
            "gate": report.summary(),
            "forced": not report.passed(),
        }
        write_int8_metadata(candidate, entry)
        atomic_write(out_path, lambda f: f.write(candidate.read_bytes()))
    return report, True
