"""The end-to-end pipeline as TorchScript: `EndToEndBlendMask` traced with `torch.jit.trace`
and saved with `torch.jit.save`. The file runs without this package:

>>> import torch, torchvision  # torchvision registers the nms / roi_align ops the file calls
>>> module = torch.jit.load("model.ts")
>>> boxes, scores, labels, mask_probs, num, masks = module(images, image_sizes, orig_sizes)

Inputs and outputs are the end-to-end ONNX graph's (`export/end_to_end.py`); N, H, W, D and
H0, W0 stay dynamic (sizes are traced as shape ops, NMS is a scripted loop over the images).
The file also holds `blendmask_end_to_end.json` (the ONNX file's metadata: preprocessing
sizes, classes) and, when given, `blendmask_config.yaml`, readable with
`torch.jit.load(path, _extra_files={name: ""})`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from blendmask.atomic import refuse_link
from blendmask.config import Config
from blendmask.export.end_to_end_onnx import (
    end_to_end_metadata,
    end_to_end_module,
    export_sizes,
    sample_inputs,
)
from blendmask.export.onnx import check_size, model_device
from blendmask.modeling.postprocess import BlendMaskPostProcessor
from blendmask.onnx_runtime import RuntimeImage, Segmentation, preprocess_images, split_outputs

METADATA_FILE = "blendmask_end_to_end.json"
CONFIG_FILE = "blendmask_config.yaml"


def export_torchscript(
    model: nn.Module,
    postprocessor: BlendMaskPostProcessor,
    path: str | Path,
    *,
    height: int,
    width: int,
    paste: bool = True,
    cfg: Config | None = None,
) -> Path:
    """Trace network + post-processing at one padded (height, width) and save it.

    Args: as `export_end_to_end_onnx` (no opset). Deformable convolutions are kept as
    torchvision's op (loading then needs a torchvision with it, as for nms / roi_align).

    Returns:
        the written path.
    """
    check_size(height, width)
    path = Path(path)
    refuse_link(path)  # the exporters write by name: they would follow a link there
    path.parent.mkdir(parents=True, exist_ok=True)
    module = end_to_end_module(model, postprocessor, paste=paste)
    with torch.no_grad(), warnings.catch_warnings():
        # Python-side shape checks become constants (they only raise).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(
            module, sample_inputs(height, width, model_device(model)), check_trace=False
        )
    min_size, max_size = export_sizes(cfg, height, width)
    extra = {METADATA_FILE: json.dumps(end_to_end_metadata(cfg, module, min_size, max_size))}
    if cfg is not None:
        extra[CONFIG_FILE] = cfg.to_yaml()
    torch.jit.save(traced, str(path), _extra_files=extra)
    return path


class TorchScriptSegmenter:
    """A saved end-to-end TorchScript file with the runtime's preprocessing
    (`onnx_runtime.preprocess_images`): image -> `Segmentation`, like `OnnxSegmenter`.

    Args:
        path: a file written by `export_torchscript`.
        device: where the module runs.
    """

    def __init__(self, path: str | Path, device: str | torch.device = "cpu") -> None:
        import torchvision  # noqa: F401  - registers the nms / roi_align ops the file calls

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: TorchScript file not found")
        extra = {METADATA_FILE: ""}
        self.device = torch.device(device)
        self.module = torch.jit.load(str(self.path), map_location=self.device, _extra_files=extra)
        if not extra[METADATA_FILE]:
            raise ValueError(f"{self.path}: not an end-to-end blendmask TorchScript export")
        self.metadata = json.loads(extra[METADATA_FILE])
        self.output_names = list(self.metadata["outputs"])

    @torch.inference_mode()
    def predict_batch(self, images: Sequence[RuntimeImage]) -> list[Segmentation]:
        m = self.metadata
        batch, image_sizes, orig_sizes = preprocess_images(
            images, m["min_size"], m["max_size"], m["size_divisibility"], m.get("scale", 0.0)
        )
        inputs = [torch.from_numpy(a).to(self.device) for a in (batch, image_sizes, orig_sizes)]
        outputs = [t.cpu().numpy() for t in self.module(*inputs)]
        return split_outputs(dict(zip(self.output_names, outputs)), orig_sizes)

    def __call__(self, image: RuntimeImage) -> Segmentation:
        return self.predict_batch([image])[0]
