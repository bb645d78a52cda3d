"""Deployment formats of the BlendMask network. `export.onnx`: ONNX export, its onnxruntime
check and `OnnxPredictor` (onnxruntime network + PyTorch post-processor).

The submodule is imported on use (`from blendmask.export.onnx import export_onnx`) so that
`import blendmask.export` does not need the `onnx` extra.
"""

from __future__ import annotations
