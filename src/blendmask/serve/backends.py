"""What the server runs: a model behind one interface (`TorchBackend`: `Predictor`;
`OnnxBackend`: `OnnxPredictor`, onnxruntime), the per-request post-processing knobs, and the
response bodies made from detections (JSON records, overlay PNG, explanation PNG).

Knobs (`conf`, `iou`, `max_det`, `classes`) mean what they mean for `Predictor` and
`blendmask predict`. Each distinct setting gets its own cached predictor variant sharing the one
network, so a batch runs with one setting (the batcher groups jobs by `Knobs`).
"""

from __future__ import annotations

import copy
import io
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from blendmask.checkpoint_io import load_model_file
from blendmask.explain import explain_figure
from blendmask.export.onnx import export_onnx
from blendmask.export.onnx_predictor import OnnxPredictor
from blendmask.modeling.postprocess import candidate_threshold
from blendmask.predictor import Predictor
from blendmask.structures import Detections, resolve_classes
from blendmask.visualization import draw_detections

MASK_FORMATS = ("rle", "polygon", "none")
# Distinct knob settings kept at once; the least recently used is dropped past this.
MAX_VARIANTS = 16


@dataclass(frozen=True)
class Knobs:
    """One request's post-processing: score threshold, NMS IoU, detections per image and the
    0-based labels kept (None: the model's setting / all classes)."""

    conf: float | None = None
    iou: float | None = None
    max_det: int | None = None
    labels: tuple[int, ...] | None = None


def parse_classes(text: str | None, class_names: Sequence[str]) -> tuple[int, ...] | None:
    """ "circle,2" -> the 0-based labels; ValueError naming an unknown class."""
    if text is None or not text.strip():
        return None
    items: list[int | str] = [
        int(item) if item.isdigit() else item
        for item in (s.strip() for s in text.split(","))
        if item
    ]
    return tuple(resolve_classes(items, class_names))


class TorchBackend:
    """`Predictor.from_checkpoint(weights)`; variants share its inference network."""

    name = "torch"

    def __init__(self, weights: str | Path, device: str = "cpu") -> None:
        self.predictor = Predictor.from_checkpoint(weights, device=device, score_threshold=None)
        self.cfg = self.predictor.cfg
        # The BatchNorm-folded eval copy `Predictor` predicts with, made once: every variant
        # runs this module (optimize=False) instead of making a copy of its own.
        self.network = self.predictor.inference_model()
        self._variants: OrderedDict[Knobs, Predictor] = OrderedDict()
        self._lock = threading.Lock()
        self._explain_lock = threading.Lock()

    @property
    def class_names(self) -> list[str]:
        return list(self.cfg.data.category_names)

    def variant(self, knobs: Knobs) -> Predictor:
        """The predictor for `knobs` (made on first use; ValueError for a bad setting)."""
        with self._lock:
            if knobs in self._variants:
                self._variants.move_to_end(knobs)
                return self._variants[knobs]
        made = Predictor(
            self.cfg,
            self.network,
            self.predictor.postprocessor,
            self.predictor.device,
            optimize=False,
            score_threshold=knobs.conf,
            nms_iou=knobs.iou,
            max_detections=knobs.max_det,
            classes=list(knobs.labels) if knobs.labels is not None else None,
        )
        with self._lock:
            self._variants[knobs] = made
            while len(self._variants) > MAX_VARIANTS:
                self._variants.popitem(last=False)
        return made

    def predict(self, knobs: Knobs, images: Sequence[np.ndarray]) -> list[Detections]:
        return self.variant(knobs).predict_tensors(list(images))

    def explain_png(self, image: np.ndarray, *, top: int, conf: float) -> bytes:
        """The bases / attention figure (`blendmask explain`) of one image as PNG bytes."""
        with self._explain_lock:  # one figure at a time: each holds K x D maps
            fig = explain_figure(self.predictor, image, top=top, score_threshold=conf)
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=100)
        return buffer.getvalue()


class OnnxBackend:
    """An exported end-to-end ONNX file run by onnxruntime (`OnnxPredictor`); a `model.pt` is
    exported first into a temporary folder that lives as long as the backend."""

    name = "onnx"

    def __init__(self, weights: str | Path) -> None:
        path = Path(weights)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if path.suffix.lower() != ".onnx":
            path = self._export(path)
        self.predictor = OnnxPredictor(path)
        self.cfg = self.predictor.cfg
        self._base_thresh = float(self.predictor.postprocessor.score_thresh)

    def _export(self, weights: Path) -> Path:
        cfg, model, _, _ = load_model_file(weights, torch.device("cpu"))
        self._tmp = tempfile.TemporaryDirectory(prefix="blendmask-serve-")
        size = cfg.data.min_size_test
        out = Path(self._tmp.name) / "model.onnx"
        return export_onnx(model.eval(), out, height=size, width=size, cfg=cfg)

    @property
    def class_names(self) -> list[str]:
        return list(self.cfg.data.category_names)

    def variant(self, knobs: Knobs) -> Any:
        """An `OnnxPredictor` sharing the session, with its own post-processor settings (as
        `Predictor` sets them: a score threshold below the candidate one lowers it)."""
        variant = copy.copy(self.predictor)
        post = variant.postprocessor = copy.deepcopy(self.predictor.postprocessor)
        lowered = candidate_threshold(knobs.conf, self._base_thresh)
        if lowered is not None:
            post.score_thresh = lowered
        if knobs.iou is not None:
            post.nms_thresh = knobs.iou
        if knobs.max_det is not None:
            post.post_nms_topk = knobs.max_det
        if knobs.labels is not None:
            post.classes = knobs.labels
        return variant

    def predict(self, knobs: Knobs, images: Sequence[np.ndarray]) -> list[Detections]:
        dets = self.variant(knobs).predict_tensors(list(images))
        names = tuple(self.cfg.data.category_names) or None
        ids = tuple(self.cfg.data.category_ids) or None
        finished = []
        for det in dets:
            det.class_names, det.category_ids = names, ids
            finished.append(det.filter(score=knobs.conf).to("cpu"))
        return finished

    def explain_png(self, image: np.ndarray, *, top: int, conf: float) -> bytes:
        raise NotImplementedError("explain runs the PyTorch network: serve with --backend torch")


def detection_records(det: Detections, masks: str) -> list[dict[str, Any]]:
    """The package's per-detection JSON records (`Detections.to_json`), with the "mask" as
    compressed RLE (`masks="rle"`), COCO polygons (`"polygon"`) or left out (`"none"`)."""
    records = det.to_json()
    for record in records:
        if masks == "none":
            record.pop("mask", None)
        elif masks == "polygon":
            record["mask"] = rle_to_polygons(record["mask"])
    return records


def rle_to_polygons(rle: dict[str, Any]) -> list[list[float]]:
    """COCO polygons [[x0, y0, x1, y1, ...], ...] (pixel coordinates) of the outline of a
    compressed-RLE mask: contourpy's marching squares at 0.5 over the mask padded with zeros,
    so every outline closes; outlines of fewer than 3 points are dropped."""
    import contourpy  # matplotlib's own contouring library, installed with it
    from pycocotools import mask as mask_util

    mask = mask_util.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    padded = np.pad(mask.astype(np.float64), 1)
    lines = contourpy.contour_generator(z=padded).lines(0.5)
    # Index (j, i) of the padded array is the centre of pixel (j - 1, i - 1): x = j - 0.5.
    return [
        [round(float(v), 2) for v in (line - 0.5).reshape(-1)] for line in lines if len(line) >= 3
    ]


def overlay_png(image: np.ndarray, det: Detections) -> bytes:
    """The detections drawn over `image` (uint8 [H, W, 3]) as PNG bytes."""
    tensor = torch.from_numpy(image).permute(2, 0, 1).contiguous()
    names = list(det.class_names) if det.class_names else None
    canvas = draw_detections(tensor, det, class_names=names, inplace=True)
    buffer = io.BytesIO()
    Image.fromarray(canvas.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return buffer.getvalue()
