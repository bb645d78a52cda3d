"""The torch-free runtime: with numpy, Pillow and onnxruntime installed and nothing else of the
package's dependencies (the `pip install --no-deps` line of the README), `blendmask.onnx_runtime`
imports and segments an image. The other dependencies are blocked in a fresh interpreter
(`sys.modules[name] = None` makes their import fail), so a new import of one of them anywhere
on the runtime's path fails here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from helpers.models import boxy_model, shapes_images  # noqa: E402

import blendmask  # noqa: E402
from blendmask.export.end_to_end_onnx import export_end_to_end_onnx  # noqa: E402
from blendmask.onnx_runtime import OnnxSegmenter  # noqa: E402

# Every dependency of pyproject.toml but numpy and Pillow, and the `onnx` extra's onnx.
BLOCKED = ("torch", "torchvision", "yaml", "pycocotools", "matplotlib", "tqdm", "onnx")

SCRIPT = """
import json, sys
for name in {blocked!r}:
    sys.modules[name] = None
import blendmask
from blendmask.onnx_runtime import OnnxSegmenter
boxes, scores, labels, masks = OnnxSegmenter({model!r})({image!r})
ours = sorted(m for m in sys.modules if m.split(".")[0] == "blendmask")
print(json.dumps({{"modules": ours, "labels": labels.tolist(), "pixels": int(masks.sum())}}))
"""


@pytest.mark.slow
def test_runtime_imports_and_runs_without_the_other_dependencies(tmp_path: Path) -> None:
    cfg, model, post = boxy_model()
    exported = export_end_to_end_onnx(
        model, post, tmp_path / "tiny.onnx", height=64, width=96, cfg=cfg
    )
    image = tmp_path / "a.png"
    Image.fromarray(shapes_images(1)[0]).save(image)
    script = SCRIPT.format(blocked=BLOCKED, model=str(exported), image=str(image))
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    # The runtime and the pixel check it shares with Predictor (itself numpy/torch-free).
    assert out["modules"] == ["blendmask", "blendmask.image_checks", "blendmask.onnx_runtime"]
    want = OnnxSegmenter(exported)(image)
    assert out["labels"] == want.labels.tolist() and len(out["labels"]) > 0
    assert out["pixels"] == int(want.masks.sum()) > 0


def test_every_public_name_still_loads_from_the_package() -> None:
    """The names `blendmask/__init__.py` loads on first use are `__all__`, and each resolves."""
    assert sorted(blendmask._LAZY) == sorted(blendmask.__all__)
    for name in blendmask.__all__:
        assert getattr(blendmask, name) is getattr(sys.modules[blendmask._LAZY[name]], name), name
    assert set(blendmask.__all__) <= set(dir(blendmask))
