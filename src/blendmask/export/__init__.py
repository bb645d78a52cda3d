"""Deployment formats of BlendMask.

- End to end (`blendmask export`, the default): `end_to_end.py` is the whole pipeline as one
  traceable module (network, selection, NMS, blender, pasting), written as ONNX by
  `end_to_end_onnx.py` (run without torch by `blendmask.onnx_runtime.OnnxSegmenter`) and as
  TorchScript by `torchscript.py`; `compare.py` matches their detections with the Predictor's.
- Network only (`--no-end-to-end`): `onnx.py` exports the raw tensors and checks them;
  `onnx_predictor.OnnxPredictor` runs such a file with the PyTorch post-processor.

The submodules are imported on use (`from blendmask.export.onnx import export_onnx`) so that
`import blendmask.export` does not need the `onnx` extra.
"""

from __future__ import annotations
