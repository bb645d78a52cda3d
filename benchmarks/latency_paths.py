"""The paths `latency.py` times: our network + post-processor in PyTorch (fp32 or under bf16
autocast), the same exported end to end in onnxruntime / OpenVINO (f32, or quantized to int8),
torchvision's models, and the blender alone on random boxes. Each runner is a callable on one
image tensor with `set_detections(n)`; the timing itself is latency.py's."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import common
import torch
from torch import Tensor


class BlendMaskRunner:
    """Our network + post-processor on one image, as `Predictor.predict_tensors` runs them:
    `optimize_for_inference` (BatchNorm folded, channels-last; `optimize=False` skips it), a
    channels-last input, no dense top layer and no semantic head. Records the network /
    post-processing split."""

    def __init__(
        self,
        preset: str,
        num_detections: int,
        device: torch.device,
        box_bias: float,
        optimize: bool = True,
    ):
        from blendmask.modeling.inference import optimize_for_inference

        model, self.post, self.cfg = common.build_blendmask(
            preset, num_detections=num_detections, box_bias=box_bias
        )
        model.to(device)
        self.model = optimize_for_inference(model) if optimize else model
        self.optimize = optimize
        self.post.to(device)
        self.device = device
        self.splits: list[tuple[float, float]] = []

    def set_detections(self, n: int) -> None:
        common.set_blendmask_detections(self.post, n)
        self.splits.clear()

    def __call__(self, image: Tensor) -> dict[str, Any]:
        start = time.perf_counter()
        from blendmask.modeling.inference import to_channels_last

        batch, sizes = common.pad_to(image)
        if self.optimize:
            batch = to_channels_last(batch)
        outputs = self.model(batch, sizes, dense_attentions=False, with_sem=False)
        common.synchronize(self.device)
        mid = time.perf_counter()
        dets = self.post(outputs, sizes, sizes)
        common.synchronize(self.device)
        self.splits.append((mid - start, time.perf_counter() - mid))
        return {"boxes": dets[0].boxes, "masks": dets[0].masks}


class Bf16Runner:
    """Another runner under bf16 autocast, whatever the run's `--precision`: a bf16 row beside
    the fp32 one (`--with-bf16`)."""

    def __init__(self, runner: Any, device: torch.device):
        self.runner = runner
        self.device = device
        self.splits = runner.splits

    def set_detections(self, n: int) -> None:
        self.runner.set_detections(n)

    def __call__(self, image: Tensor) -> dict[str, Any]:
        with common.autocast(self.device, "bf16"):
            return self.runner(image)


class OnnxRunner:
    """The same network and settings (same seed) exported end to end
    (`export_end_to_end_onnx`: network, selection, NMS, blender, pasting in one graph) and run
    by onnxruntime's CPU provider with `threads` intra-op threads. The detection count is
    fixed in the graph, so `set_detections` exports once per count. Timed per call: padding
    (numpy) and the session run down to the pasted masks at the input size."""

    def __init__(self, preset: str, num_detections: int, box_bias: float, threads: int):
        import tempfile

        self.model, self.post, self.cfg = common.build_blendmask(
            preset, num_detections=num_detections, box_bias=box_bias
        )
        self.threads = threads
        self.folder = Path(tempfile.mkdtemp(prefix="latency_onnx_"))
        self.sessions: dict[int, Any] = {}
        self.session: Any = None
        self.splits: list[tuple[float, float]] = []
        self.export_seconds: dict[str, float] = {}
        self.size: tuple[int, int] | None = None

    def set_detections(self, n: int) -> None:
        if n not in self.sessions:
            self.sessions[n] = self._export(n)
        self.session = self.sessions[n]

    def _export(self, n: int) -> Any:
        from blendmask.export.end_to_end_onnx import export_end_to_end_onnx

        common.set_blendmask_detections(self.post, n)
        assert self.size is not None, "call prepare(size) first"
        start = time.perf_counter()
        path = export_end_to_end_onnx(
            self.model,
            self.post,
            self.folder / f"n{n}.onnx",
            height=self.size[0],
            width=self.size[1],
            cfg=self.cfg,
        )
        self.export_seconds[str(n)] = round(time.perf_counter() - start, 1)
        return self._open(path)

    def _open(self, path: Path) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def prepare(self, size: tuple[int, int]) -> None:
        """The padded input size to trace at (the graph stays dynamic)."""
        self.size = size

    def __call__(self, image: Tensor) -> dict[str, Any]:
        import numpy as np

        array = image.numpy()
        height, width = array.shape[1:]
        padded = np.zeros((1, 3, -(-height // 32) * 32, -(-width // 32) * 32), np.float32)
        padded[0, :, :height, :width] = array
        sizes = np.array([[height, width]], dtype=np.int64)
        boxes, _, _, _, num, masks = self.session.run(
            None, {"images": padded, "image_sizes": sizes, "orig_sizes": sizes}
        )
        n = int(num[0])
        return {"boxes": torch.from_numpy(boxes[0, :n]), "masks": masks[0, :n]}


class OpenVinoRunner(OnnxRunner):
    """`OnnxRunner`'s graph in OpenVINO's CPU plugin with `INFERENCE_PRECISION_HINT` f32 and
    `threads` threads: the backend of `predict --onnx F --backend openvino`."""

    def _open(self, path: Path) -> Any:
        import openvino

        compiled = openvino.Core().compile_model(
            str(path),
            "CPU",
            {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": self.threads},
        )
        return _OpenVinoSession(compiled)


class Int8Runner(OnnxRunner):
    """`OnnxRunner`'s graph quantized to int8 as `blendmask export --int8` does
    (`export/int8.py`: onnxruntime static quantization of the network's convs), calibrated on
    `CALIBRATION_IMAGES` random images of the timed size (random weights: the timing, not the
    accuracy, is measured here), run by onnxruntime with the same threads."""

    CALIBRATION_IMAGES = 2

    def _export(self, n: int) -> Any:
        from blendmask.export.int8 import quantize_file

        session = super()._export(n)  # writes n{n}.onnx
        del session
        start = time.perf_counter()
        images = [
            (common.random_image(*self.size, seed=k).permute(1, 2, 0) * 255).byte().numpy()
            for k in range(self.CALIBRATION_IMAGES)
        ]
        path = quantize_file(self.folder / f"n{n}.onnx", self.folder / f"n{n}_int8.onnx", images)
        self.export_seconds[f"{n}_quantize"] = round(time.perf_counter() - start, 1)
        return self._open(path)


class Int8OpenVinoRunner(OpenVinoRunner):
    """`Int8Runner`'s file in OpenVINO, opened as `OpenVinoRunner` opens a file (its
    low-precision transformations run the quantized convs with int8 kernels, the rest f32)."""

    def __init__(self, source: Int8Runner):
        self.source = source
        self.threads, self.size, self.splits = source.threads, source.size, []
        self.sessions, self.session, self.export_seconds = {}, None, source.export_seconds

    def _export(self, n: int) -> Any:
        self.source.set_detections(n)  # quantizes once per count; this opens the same file
        return self._open(self.source.folder / f"n{n}_int8.onnx")


class _OpenVinoSession:
    """onnxruntime's `session.run(None, feeds)` (outputs in graph order) on a compiled model."""

    def __init__(self, compiled: Any):
        self.compiled = compiled
        self.request = compiled.create_infer_request()

    def run(self, names: None, feeds: dict[str, Any]) -> list[Any]:
        results = self.request.infer(feeds)
        return [results[port] for port in self.compiled.outputs]


class TorchvisionRunner:
    def __init__(self, name: str, num_detections: int, size: tuple[int, int], device):
        self.model = common.build_torchvision(name, num_detections=num_detections, size=size)
        self.model.to(device)
        self.splits: list[tuple[float, float]] = []

    def set_detections(self, n: int) -> None:
        common.set_torchvision_detections(self.model, n)

    def __call__(self, image: Tensor) -> dict[str, Any]:
        return self.model([image])[0]


def random_boxes(n: int, height: int, width: int, seed: int = 0) -> Tensor:
    """Tensor[n, 4] xyxy inside the image: uniform centres, sides log-uniform in 32-512 px."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand((n, 2), generator=g) * torch.tensor([width, height])
    side = torch.exp(torch.empty((n, 2)).uniform_(math.log(32), math.log(512), generator=g))
    boxes = torch.cat([centre - side / 2, centre + side / 2], dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    return boxes


def time_blender(
    post: torch.nn.Module,
    num_bases: int,
    padded_size: tuple[int, int],
    image_size: tuple[int, int],
    detections: list[int],
    *,
    device: torch.device,
    precision: str,
    warmup: int,
    repeats: int,
) -> dict[str, Any]:
    """Our blender alone, stage by stage and in total: pool_bases (RoIAlign to R x R),
    merge_bases (interpolate M -> R, softmax over K, blend), sigmoid, paste_masks (R x R into
    the image, binarised), with the post-processor's settings."""
    from blendmask.modeling.blender import merge_bases, pool_bases
    from blendmask.structures.paste import paste_masks

    height, width = image_size
    g = torch.Generator().manual_seed(0)
    bases = torch.randn((1, num_bases, padded_size[0] // 4, padded_size[1] // 4), generator=g).to(
        device
    )
    spec = post.blender
    results: dict[str, Any] = {
        "bottom_resolution": spec.resolution,
        "attn_size": spec.attn_size,
        "num_bases": num_bases,
        "bases_shape": list(bases.shape),
        "boxes": "uniform centres, sides log-uniform 32-512 px, clipped to the image",
    }
    for n in detections:
        boxes = random_boxes(n, height, width).to(device)
        attentions = torch.randn((n, num_bases * spec.attn_size**2), generator=g).to(device)

        def pool(boxes: Tensor = boxes) -> Tensor:
            return pool_bases(bases, [boxes], spec)

        def merge(pooled_bases: Tensor, attentions: Tensor = attentions) -> Tensor:
            return merge_bases(pooled_bases, attentions, spec)

        def paste(probs: Tensor, boxes: Tensor = boxes) -> Tensor:
            return paste_masks(probs, boxes, (height, width), threshold=post.mask_threshold)

        def total() -> Tensor:
            return paste(merge(pool()).sigmoid())

        with common.inference(device, precision):
            rois = pool()
            probs = merge(rois).sigmoid()
            stages = {
                "pool": common.time_fn(pool, device, warmup=warmup, repeats=repeats),
                "merge": common.time_fn(
                    lambda r=rois: merge(r), device, warmup=warmup, repeats=repeats
                ),
                "paste": common.time_fn(
                    lambda p=probs: paste(p), device, warmup=warmup, repeats=repeats
                ),
                "total": common.time_fn(total, device, warmup=warmup, repeats=repeats),
            }
        results[str(n)] = {k: v["median_s"] for k, v in stages.items()}
        results[str(n)]["median_s"] = stages["total"]["median_s"]
        results[str(n)]["runs_s"] = stages["total"]["runs_s"]
        print(f"  blender N={n:4d}: {stages['total']['median_s'] * 1e3:.1f} ms", flush=True)
    return results
