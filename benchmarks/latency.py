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
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import steady  # noqa: E402
from latency_paths import (  # noqa: E402
    Bf16Runner,
    BlendMaskRunner,
    Int8OpenVinoRunner,
    Int8Runner,
    OnnxRunner,
    OpenVinoRunner,
    TorchvisionRunner,
    time_blender,
)
from latency_report import README_END, README_START, readme_block, update_readme  # noqa: E402,F401

TORCHVISION_MODELS = ("maskrcnn_resnet50_fpn", "fcos_resnet50_fpn")


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
