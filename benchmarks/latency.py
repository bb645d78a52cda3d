"""Inference latency of BlendMask against torchvision's Mask R-CNN and FCOS, in one process.

Measures the claims of BlendMask Sec. 4.3 / Table 8 (faster than Mask R-CNN with the same
backbone; the blender costs little; inference time does not grow with the number of
detections, while Mask R-CNN's mask head runs once per detection):

- our presets (default `R_50_1x` and `RT_R_50_4x`) and torchvision `maskrcnn_resnet50_fpn` /
  `fcos_resnet50_fpn`, all with random weights (weights=None, weights_backbone=None), on the
  same input, thread count and precision;
- every model forced to exactly N detections (score threshold 0, NMS off, N per image; see
  common.py), for N = 10 and 100;
- our blender alone (RoIAlign pooling + attention interpolation + blend + paste) for 10 and 100
  instances at the same image size;
- warm-up, then the median of `--repeats` runs, the models interleaved run by run so that a
  change of background load hits all of them alike.

Timed per call: input padding, network, post-processing down to the final binary masks at the
input size (torchvision's transform, heads and mask pasting; our network + post-processor).

    python benchmarks/latency.py --json benchmarks/results/latency.json \
        [--threads 2] [--device cpu|cuda] [--size 800 1333] [--repeats 3] [--precision fp32|bf16] \
        [--update-readme docs/results.md]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import steady  # noqa: E402

TORCHVISION_MODELS = ("maskrcnn_resnet50_fpn", "fcos_resnet50_fpn")
README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"


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


def time_models(
    runners: dict[str, Any],
    image: Tensor,
    detections: list[int],
    *,
    device: torch.device,
    precision: str,
    warmup: int,
    repeats: int,
    max_spread: float = steady.MAX_SPREAD,
    attempts: int = steady.ATTEMPTS,
) -> dict[str, dict[str, Any]]:
    """{model: {"N": {median_s, min_s, max_s, spread, ..., detections, mean box size}}},
    models interleaved; raises steady.NoisyMeasurement (see steady.py)."""
    results: dict[str, dict[str, Any]] = {name: {} for name in runners}
    for n in detections:
        for runner in runners.values():
            runner.set_detections(n)
        with common.inference(device, precision):
            # Warm-up also records what each model returns: the detection counts must be N.
            for name, runner in runners.items():
                for _ in range(max(warmup, 1)):
                    out = runner(image)
                entry = {"detections": int(out["boxes"].shape[0])}
                entry.update(common.box_stats(out["boxes"]))
                results[name][str(n)] = entry
                runner.splits.clear()
            # Interleaved, and refused (NoisyMeasurement) while some model's runs disagree.
            times, _ = steady.measure(
                {
                    name: lambda r=runner: common.time_once(lambda: r(image), device)[0]
                    for name, runner in runners.items()
                },
                repeats,
                max_spread=max_spread,
                attempts=attempts,
            )
        for name, runner in runners.items():
            results[name][str(n)].update(common.summarize(times[name]))
            results[name][str(n)]["spread"] = steady.spread(times[name])
            if runner.splits:
                net = sorted(s[0] for s in runner.splits)
                post = sorted(s[1] for s in runner.splits)
                results[name][str(n)]["network_median_s"] = net[len(net) // 2]
                results[name][str(n)]["postprocess_median_s"] = post[len(post) // 2]
            print(
                steady.line(f"{name} N={n}", times[name])
                + f" ({results[name][str(n)]['detections']} detections)",
                flush=True,
            )
    return results


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


def compute_ratios(models: dict[str, Any], blender: dict[str, Any], ours: str, lo: str, hi: str):
    """The headline ratios (None when a figure is missing)."""

    def med(name: str, n: str) -> float:
        return models.get(name, {}).get(n, {}).get("median_s", float("nan"))

    def r(a: float, b: float) -> float | None:
        return a / b if math.isfinite(a) and math.isfinite(b) and b > 0 else None

    mrcnn, fcos = "maskrcnn_resnet50_fpn", "fcos_resnet50_fpn"
    ratios = {
        "blendmask_over_maskrcnn": r(med(ours, hi), med(mrcnn, hi)),
        f"blendmask_over_maskrcnn_at_{lo}": r(med(ours, lo), med(mrcnn, lo)),
        "blendmask_over_fcos": r(med(ours, hi), med(fcos, hi)),
        f"blendmask_over_fcos_at_{lo}": r(med(ours, lo), med(fcos, lo)),
        f"blendmask_scaling_{hi}_over_{lo}": r(med(ours, hi), med(ours, lo)),
        f"maskrcnn_scaling_{hi}_over_{lo}": r(med(mrcnn, hi), med(mrcnn, lo)),
        f"fcos_scaling_{hi}_over_{lo}": r(med(fcos, hi), med(fcos, lo)),
    }
    if hi in blender:
        ratios[f"blender_{hi}_over_blendmask"] = r(blender[hi]["median_s"], med(ours, hi))
    return ratios


def readme_block(data: dict[str, Any]) -> str:
    """The markdown between the bench markers (`make bench`: in docs/results.md): setting,
    table and ratios."""
    m = data["machine"]
    s = data["settings"]
    lo, hi = (str(n) for n in s["detections"][:2]) if len(s["detections"]) > 1 else ("", "")
    label = {
        "maskrcnn_resnet50_fpn": "torchvision Mask R-CNN R50-FPN",
        "fcos_resnet50_fpn": "torchvision FCOS R50-FPN (boxes only)",
    }
    flags = ", ".join(m.get("cpu_flags") or []) or "none of avx2 / avx512 / amx"
    lines = [
        f"Latest `make bench` ({m['time'][:10]}): {m['cpu_model']} (flags: {flags}), device "
        f"{m['device']}, {m['threads']} threads, input {s['size'][0]}x{s['size'][1]}, "
        f"{s['precision']}, torch {m['torch']}, random weights, median of {s['repeats']} runs "
        f"after warm-up, load average at start {m['load_average_start'][0]:.1f}.",
        "",
        "| model | "
        + " | ".join(f"{n} detections (s)" for n in s["detections"])
        + (" | scaling |" if lo else " |"),
        "|---|" + "---|" * (len(s["detections"]) + (1 if lo else 0)),
    ]
    ours = [f"blendmask_{p}" for p in s.get("presets", [])]
    names = [n for n in ours if n in data["models"]]
    names += [n for n in data["models"] if n not in names]
    for name in names:
        per_n = data["models"][name]
        cells = [f"{per_n[str(n)]['median_s']:.3f}" for n in s["detections"]]
        nice = label.get(name) or _our_label(name, s["precision"], m["threads"])
        scale = f" {per_n[hi]['median_s'] / per_n[lo]['median_s']:.2f} |" if lo else ""
        lines.append(f"| {nice} | " + " | ".join(cells) + " |" + scale)
    if data.get("blender"):
        cells = [f"{data['blender'][str(n)]['median_s']:.4f}" for n in s["detections"]]
        lines.append(
            "| our blender alone (pool + interpolate + blend + paste) | "
            + " | ".join(cells)
            + (" | |" if lo else " |")
        )
    if data.get("blender") and hi in data["blender"]:
        b = data["blender"][hi]
        lines.append("")
        lines.append(
            f"Blender at {hi} instances: RoIAlign {b['pool'] * 1e3:.1f} ms, interpolate + softmax "
            f"+ blend {b['merge'] * 1e3:.1f} ms, paste into the image {b['paste'] * 1e3:.1f} ms."
        )
    lines.append("")
    headline = [
        "blendmask_over_maskrcnn",
        "blendmask_over_fcos",
        f"blendmask_scaling_{hi}_over_{lo}",
        f"maskrcnn_scaling_{hi}_over_{lo}",
    ]
    keys = [k for k in headline if k in data["ratios"]]
    keys += sorted(k for k in data["ratios"] if k not in keys and not _same_count(k))
    ratio_text = ", ".join(
        f"`{k}` {data['ratios'][k]:.2f}" if isinstance(data["ratios"][k], float) else f"`{k}` n/a"
        for k in keys
    )
    lines.append(f"Ratios: {ratio_text}.")
    first, top = (ours[0] if ours else ""), str(s["detections"][-1])
    if first in data["models"]:
        fp32 = data["models"][first][top]["median_s"]
        paths = [n for n in names if n.startswith(first) and n != first]
        lines.append("")
        lines.append(
            f"Our paths against our PyTorch {s['precision']} at {top} detections: "
            + ", ".join(
                f"{_our_label(n, s['precision'], m['threads']).split('(ours), ')[-1]} "
                f"{data['models'][n][top]['median_s'] / fp32:.2f}x"
                for n in paths
            )
            + "."
        )
    lines.append("")
    lines.append("Method: `benchmarks/README.md`; FLOPs and time by part: below.")
    return "\n".join(lines)


def _same_count(key: str) -> bool:
    """A `*_scaling_N_over_N` ratio: a run with one detection count has nothing to scale."""
    parts = key.split("_")
    return "scaling" in parts and len(parts) >= 3 and parts[-1] == parts[-3]


def _our_label(name: str, precision: str, threads: int) -> str:
    """blendmask_<preset>[_bf16 | _onnxruntime | _openvino | _int8 | _int8_openvino] -> the
    table's row label."""
    base = name.removeprefix("blendmask_")
    if base.endswith("_int8_openvino"):
        preset = base.removesuffix("_int8_openvino")
        return f"BlendMask {preset} (ours), end-to-end ONNX int8 in OpenVINO CPU, {threads} threads"
    if base.endswith("_int8"):
        preset = base.removesuffix("_int8")
        return (
            f"BlendMask {preset} (ours), end-to-end ONNX int8 in onnxruntime CPU, {threads} threads"
        )
    if base.endswith("_openvino"):
        preset = base.removesuffix("_openvino")
        return f"BlendMask {preset} (ours), end-to-end ONNX in OpenVINO CPU f32, {threads} threads"
    if base.endswith("_onnxruntime"):
        preset = base.removesuffix("_onnxruntime")
        return f"BlendMask {preset} (ours), end-to-end ONNX in onnxruntime CPU, {threads} threads"
    if base.endswith("_bf16"):
        return f"BlendMask {base.removesuffix('_bf16')} (ours), PyTorch bf16 autocast"
    return f"BlendMask {base} (ours), PyTorch {precision}"


def update_readme(path: Path, block: str) -> None:
    """Replace the text between the bench markers of `path` (appending a section with the
    markers when the file has none)."""
    if not path.is_file():
        raise FileNotFoundError(f"--update-readme: {path} not found")
    text = path.read_text(encoding="utf-8")
    start, end = text.find(README_START), text.find(README_END)
    if start == -1 and end == -1:
        text = text.rstrip("\n") + "\n\n## Speed\n\n" + README_START + "\n" + README_END + "\n"
        start, end = text.find(README_START), text.find(README_END)
    if start == -1 or end == -1 or end < start:
        raise ValueError(f"--update-readme: {path} must contain {README_START} before {README_END}")
    new = text[: start + len(README_START)] + "\n" + block + "\n" + text[end:]
    path.write_text(new, encoding="utf-8")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--size", type=int, nargs=2, default=[800, 1333], metavar=("H", "W"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--attempts", type=int, default=steady.ATTEMPTS, help="see steady.py")
    p.add_argument("--max-spread", type=float, default=steady.MAX_SPREAD, help="see steady.py")
    p.add_argument("--precision", default="fp32", choices=list(common.PRECISIONS))
    p.add_argument("--detections", type=int, nargs="+", default=[10, 100])
    p.add_argument(
        "--presets",
        nargs="+",
        default=["R_50_1x", "RT_R_50_4x"],
        help="our presets to time; the first is the one in the ratios",
    )
    p.add_argument(
        "--peers",
        nargs="*",
        default=list(TORCHVISION_MODELS),
        choices=list(TORCHVISION_MODELS),
        help="torchvision models to time beside ours",
    )
    p.add_argument("--box-bias", type=float, default=common.BOX_BIAS, help="see common.py")
    p.add_argument(
        "--onnx",
        action="store_true",
        help="also time the first preset exported end to end, in onnxruntime (same threads)",
    )
    p.add_argument(
        "--openvino",
        action="store_true",
        help="also time the first preset's end-to-end graph in OpenVINO (f32 hint, same threads)",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="also time the first preset's end-to-end graph quantized to int8 (export --int8's "
        "quantization) in onnxruntime, and with --openvino in OpenVINO too (same threads)",
    )
    p.add_argument(
        "--probe",
        action="store_true",
        help="record the precision probe's timings and choice (runtime/precision.py) in the json",
    )
    p.add_argument(
        "--with-bf16",
        action="store_true",
        help="also time the first preset under bf16 autocast (a row beside --precision's)",
    )
    p.add_argument("--no-blender", action="store_true", help="skip the blender-alone timing")
    p.add_argument(
        "--no-optimize",
        action="store_true",
        help="time our network without optimize_for_inference (BatchNorm folding, channels-last)",
    )
    p.add_argument(
        "--update-readme",
        type=Path,
        default=None,
        metavar="MARKDOWN",
        help="rewrite the block between the bench markers of this file (docs/results.md)",
    )
    p.add_argument(
        "--from-json",
        type=Path,
        default=None,
        metavar="JSON",
        help="measure nothing: rewrite the --update-readme block from an earlier --json output",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json is not None:
        if args.update_readme is None:
            raise SystemExit("--from-json needs --update-readme FILE")
        if not args.from_json.is_file():
            raise SystemExit(f"--from-json: {args.from_json} not found")
        data = json.loads(args.from_json.read_text(encoding="utf-8"))
        update_readme(args.update_readme, readme_block(data))
        return 0
    device = common.setup(args.threads, args.device)
    height, width = args.size
    detections = sorted(set(args.detections))
    if detections[0] < 1:
        raise SystemExit(f"--detections: expected positive counts, got {args.detections}")
    lo, hi = str(detections[0]), str(detections[-1])
    data: dict[str, Any] = {
        "machine": common.machine_info(args.threads, device),
        "settings": {
            "size": [height, width],
            "repeats": args.repeats,
            "warmup": args.warmup,
            "precision": args.precision,
            "detections": detections,
            "presets": args.presets,
            "box_bias_stride_units": args.box_bias,
            "forcing": (
                "every model: score threshold 0, NMS threshold 1.0 (nothing suppressed), "
                "detections per image N; ours: inference_th_test=0, nms_th=1.0, "
                "pre_nms_topk_test>=N, post_nms_topk_test=N, bbox_pred bias=box_bias; "
                "Mask R-CNN: box_score_thresh=0, box_nms_thresh=1.0, box_detections_per_img=N; "
                "FCOS: score_thresh=0, nms_thresh=1.0, detections_per_img=N; torchvision "
                "min_size/max_size = the input's sides (identity resize)"
            ),
            "timed": "pad + network + post-processing to binary masks at the input size",
            "ours": (
                "the Predictor's path: "
                + (
                    ""
                    if args.no_optimize
                    else "optimize_for_inference (BN folded, channels-last), "
                )
                + "dense_attentions=False, with_sem=False, torch.inference_mode"
            ),
        },
    }
    image = common.random_image(height, width).to(device)
    print(f"latency: {height}x{width}, {args.threads} threads, {args.precision}", flush=True)
    runners: dict[str, Any] = {}
    for preset in args.presets:
        runners[f"blendmask_{preset}"] = BlendMaskRunner(
            preset, detections[0], device, args.box_bias, optimize=not args.no_optimize
        )
    first = f"blendmask_{args.presets[0]}"
    if args.with_bf16:
        runners[f"{first}_bf16"] = Bf16Runner(
            BlendMaskRunner(
                args.presets[0], detections[0], device, args.box_bias, not args.no_optimize
            ),
            device,
        )
    if args.onnx:
        onnx_runner = OnnxRunner(args.presets[0], detections[0], args.box_bias, args.threads)
        onnx_runner.prepare(tuple(int(x) for x in common.pad_to(image)[0].shape[-2:]))
        runners[f"{first}_onnxruntime"] = onnx_runner
    if args.openvino:
        ov_runner = OpenVinoRunner(args.presets[0], detections[0], args.box_bias, args.threads)
        ov_runner.prepare(tuple(int(x) for x in common.pad_to(image)[0].shape[-2:]))
        runners[f"{first}_openvino"] = ov_runner
    if args.int8:
        int8_runner = Int8Runner(args.presets[0], detections[0], args.box_bias, args.threads)
        int8_runner.prepare(tuple(int(x) for x in common.pad_to(image)[0].shape[-2:]))
        runners[f"{first}_int8"] = int8_runner
        if args.openvino:  # the same int8 file, opened by OpenVINO
            runners[f"{first}_int8_openvino"] = Int8OpenVinoRunner(int8_runner)
    for name in args.peers:
        runners[name] = TorchvisionRunner(name, detections[0], (height, width), device)
    try:
        data["models"] = time_models(
            runners,
            image,
            detections,
            device=device,
            precision=args.precision,
            warmup=args.warmup,
            repeats=args.repeats,
            max_spread=args.max_spread,
            attempts=args.attempts,
        )
    except steady.NoisyMeasurement as exc:
        print(f"latency.py: refused: {exc}", file=sys.stderr)
        return 3
    if args.onnx:
        data["settings"]["onnxruntime"] = {
            "version": __import__("onnxruntime").__version__,
            "intra_op_threads": args.threads,
            "export_seconds": onnx_runner.export_seconds,
            "timed": "numpy padding + one session run (network, selection, NMS, blender, "
            "pasting to binary masks at the input size)",
        }
    if args.openvino:
        data["settings"]["openvino"] = {
            "version": __import__("openvino").__version__,
            "hint": "INFERENCE_PRECISION_HINT=f32",
            "threads": args.threads,
        }
    if args.int8:
        data["settings"]["int8"] = {
            "quantization": "export/int8.py quantize_file (QDQ, per-channel, u8s8, MinMax)",
            "calibration_images": Int8Runner.CALIBRATION_IMAGES,
            "export_seconds": int8_runner.export_seconds,
        }
    if args.probe:
        from blendmask.runtime.precision import probe_times, ranked_paths

        times = probe_times(device, use_cache=False)
        data["precision_probe"] = {
            "seconds": times,
            "ranked": [p.name for p in ranked_paths(times)],
        }
    ours = f"blendmask_{args.presets[0]}"
    data["blender"] = {}
    if not args.no_blender:
        first = runners[ours]
        padded = common.pad_to(image)[0].shape[-2:]
        data["blender"] = time_blender(
            first.post,
            first.cfg.model.basis_module.num_bases,
            (int(padded[0]), int(padded[1])),
            (height, width),
            detections,
            device=device,
            precision=args.precision,
            warmup=args.warmup,
            repeats=args.repeats,
        )
    data["ratios"] = compute_ratios(data["models"], data["blender"], ours, lo, hi)
    data["machine"]["load_average_end"] = list(os.getloadavg())
    common.write_json(args.json, data)
    for key, value in data["ratios"].items():
        print(f"  {key}: {value:.3f}" if value is not None else f"  {key}: n/a")
    if args.update_readme is not None:
        update_readme(args.update_readme, readme_block(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
