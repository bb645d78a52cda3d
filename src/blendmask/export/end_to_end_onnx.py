"""The end-to-end ONNX file: `EndToEndBlendMask` (network, selection, NMS, blender, pasting)
traced into one graph that onnxruntime's CPU provider runs (opset 17: `NonMaxSuppression`,
`RoiAlign` with half-pixel coordinates, `Resize`, `TopK`, `MatMul`), plus the metadata the
numpy-only runtime (`blendmask.onnx_runtime.OnnxSegmenter`) needs to preprocess images.

Inputs and outputs: see `export/end_to_end.py`. Metadata entries:
- `blendmask_end_to_end` (JSON, `end_to_end_metadata`): the preprocessing (shortest-edge
  resize sizes, padding), classes, mask threshold and resolution, output names;
- `blendmask_config` (YAML): the resolved config, when given.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from blendmask.atomic import refuse_link
from blendmask.config import Config
from blendmask.export.end_to_end import INPUT_NAMES, EndToEndBlendMask
from blendmask.export.onnx import (
    CONFIG_METADATA_KEY,
    SIZE_DIVISIBILITY,
    check_size,
    model_device,
    onnx_export,
    refuse_deformable,
    require_module,
)
from blendmask.modeling.inference import optimize_for_inference
from blendmask.modeling.postprocess import BlendMaskPostProcessor

END_TO_END_METADATA_KEY = "blendmask_end_to_end"
END_TO_END_FORMAT_VERSION = 1


def end_to_end_metadata(
    cfg: Config | None, module: EndToEndBlendMask, min_size: int, max_size: int
) -> dict[str, Any]:
    """What a runtime needs besides the graph: the preprocessing of `data/preprocess.py`
    (`min_size` / `max_size` of the shortest-edge resize, or the fixed factor `scale` when
    > 0, padding to `size_divisibility`), the classes and the outputs."""
    num_classes = module.num_classes
    category_ids = list(cfg.data.category_ids) if cfg is not None else []
    category_names = list(cfg.data.category_names) if cfg is not None else []
    return {
        "format_version": END_TO_END_FORMAT_VERSION,
        "min_size": int(min_size),
        "max_size": int(max_size),
        "scale": float(cfg.data.test_scale) if cfg is not None else 0.0,
        "size_divisibility": SIZE_DIVISIBILITY,
        "num_classes": num_classes,
        "category_ids": category_ids or list(range(1, num_classes + 1)),
        "category_names": category_names,
        "mask_threshold": module.mask_threshold,
        "mask_resolution": module.spec.resolution,
        "inputs": list(INPUT_NAMES),
        "outputs": list(module.output_names),
    }


def end_to_end_module(
    model: nn.Module, postprocessor: BlendMaskPostProcessor, *, paste: bool = True
) -> EndToEndBlendMask:
    """The module both exports trace: an inference copy of the network (BatchNorm folded, as
    `Predictor` runs it) and the post-processor's settings. `model` is left untouched."""
    if postprocessor.test_flip or postprocessor.test_vflip:
        warnings.warn(
            "data.test_flip / test_vflip: flip test-time augmentation is PyTorch-only; the "
            "exported graph predicts without it (as --set data.test_flip=false test_vflip=false)",
            stacklevel=2,
        )
    return EndToEndBlendMask(optimize_for_inference(model), postprocessor, paste=paste).eval()


def export_sizes(cfg: Config | None, height: int, width: int) -> tuple[int, int]:
    """(min_size, max_size) of the runtime's shortest-edge resize: the config's test sizes,
    or without a config the trace size's shorter and longer sides."""
    if cfg is not None:
        return cfg.data.min_size_test, cfg.data.max_size_test
    return min(height, width), max(height, width)


def sample_inputs(
    height: int, width: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A traced example: one random height x width image, sizes = the padded size."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(1, 3, height, width, generator=generator).to(device)
    sizes = torch.tensor([[height, width]], dtype=torch.int64, device=device)
    return images, sizes, sizes.clone()


def export_end_to_end_onnx(
    model: nn.Module,
    postprocessor: BlendMaskPostProcessor,
    path: str | Path,
    *,
    height: int,
    width: int,
    opset: int = 17,
    paste: bool = True,
    cfg: Config | None = None,
) -> Path:
    """Trace network + post-processing at one padded (height, width) and write it as ONNX.

    Args:
        model: a `BlendMask` network (not modified; an inference copy is traced).
        postprocessor: its `BlendMaskPostProcessor` (thresholds and top-k sizes are fixed in
            the graph).
        path: the .onnx file to write (folders are created).
        height, width: trace size, multiples of 32; N, H, W, D and H0, W0 stay dynamic.
        opset: ONNX opset (>= 16 for `RoiAlign`'s half-pixel mode).
        paste: include the `masks` output (pasted at the original size).
        cfg: the resolved config: the runtime's resize sizes (`data.min_size_test` /
            `max_size_test`) and class names; without it the metadata says: resize to the
            trace size (see `export_sizes`), classes 1..C.

    Returns:
        the written path.
    """
    check_size(height, width)
    if opset < 16:
        raise ValueError(
            f"opset: the end-to-end graph needs >= 16 (RoiAlign half_pixel), got {opset}"
        )
    refuse_deformable(model)
    onnx = require_module("onnx")
    path = Path(path)
    refuse_link(path)  # the exporters write by name: they would follow a link there
    path.parent.mkdir(parents=True, exist_ok=True)
    module = end_to_end_module(model, postprocessor, paste=paste)
    names = list(module.output_names)
    dynamic_axes: dict[str, dict[int, str]] = {
        "images": {0: "batch", 2: "height", 3: "width"},
        "image_sizes": {0: "batch"},
        "orig_sizes": {0: "batch"},
        "num_detections": {0: "batch"},
    }
    for name in names[:4]:
        dynamic_axes[name] = {0: "batch", 1: "detections"}
    if paste:
        dynamic_axes["masks"] = {0: "batch", 1: "detections", 2: "orig_height", 3: "orig_width"}
    with torch.no_grad(), warnings.catch_warnings():
        # Shape checks in Python are traced as constants (they only raise); the TorchScript
        # exporter is chosen on purpose (its NonMaxSuppression / RoiAlign symbolics).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        onnx_export(
            module,
            sample_inputs(height, width, model_device(model)),
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=names,
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
        )
    min_size, max_size = export_sizes(cfg, height, width)
    metadata = {
        END_TO_END_METADATA_KEY: json.dumps(end_to_end_metadata(cfg, module, min_size, max_size))
    }
    if cfg is not None:
        metadata[CONFIG_METADATA_KEY] = cfg.to_yaml()
    _write_metadata(onnx, path, metadata)
    return path


def _write_metadata(onnx: Any, path: Path, metadata: dict[str, str]) -> None:
    proto = onnx.load(str(path))
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = (
        "BlendMask end to end: images float32[N,3,H,W] RGB [0,1] padded to /32, image_sizes "
        "int64[N,2] (h, w inside the padding), orig_sizes int64[N,2] -> boxes[N,D,4] (original "
        "pixels), scores[N,D], labels[N,D], mask_probs[N,D,R,R], num_detections[N]"
        + (", masks bool[N,D,H0,W0]" if "masks" in metadata[END_TO_END_METADATA_KEY] else "")
    )
    onnx.save(proto, str(path))
