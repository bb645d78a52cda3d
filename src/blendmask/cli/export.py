"""export a model file to ONNX or TorchScript (end to end by default), checked after writing

End to end (the default): images in, boxes, scores, labels, R x R mask probabilities and
pasted masks out; NMS, the blender and pasting run inside the file, which then needs no
PyTorch (`blendmask.onnx_runtime.OnnxSegmenter`, `blendmask predict --onnx`). The check runs
the file and the PyTorch `Predictor` on the same images and matches their detections.
`--no-end-to-end`: the network's raw tensors only (ONNX; `export.onnx_predictor`), checked
output by output.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from blendmask.checkpoint_io import load_model_file
from blendmask.cli.arguments import DEVICE_HELP, DEVICES
from blendmask.export.compare import compare
from blendmask.export.end_to_end_onnx import export_end_to_end_onnx
from blendmask.export.int8 import calibration_images, quantize_and_gate
from blendmask.export.onnx import (
    SIZE_DIVISIBILITY,
    check_onnx,
    check_opset,
    default_export_size,
    export_onnx,
)
from blendmask.export.torchscript import TorchScriptSegmenter, export_torchscript
from blendmask.factory import build_postprocessor
from blendmask.io import resolve_device
from blendmask.onnx_runtime import OnnxSegmenter
from blendmask.predictor import INFERENCE_KEYS, Predictor, inference_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True, help="model file (model.pt)")
    parser.add_argument(
        "--out", required=True, help="file to write (e.g. model.onnx, or model.ts for TorchScript)"
    )
    parser.add_argument(
        "--format",
        default="onnx",
        choices=["onnx", "torchscript"],
        help="onnx (default; runs without PyTorch) or torchscript",
    )
    parser.add_argument(
        "--end-to-end",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the whole pipeline (default); --no-end-to-end: the network's raw tensors (ONNX)",
    )
    parser.add_argument(
        "--no-paste", action="store_true", help="end to end without the pasted `masks` output"
    )
    parser.add_argument(
        "--height", type=int, default=None, help="trace height (default: test size, /32)"
    )
    parser.add_argument(
        "--width", type=int, default=None, help="trace width (default: max test size, /32)"
    )
    parser.add_argument(
        "--opset",
        type=int,
        default=17,
        help="ONNX opset (default 17; end to end needs >= 16; at most what torch's exporter writes)",
    )
    parser.add_argument(
        "--static", action="store_true", help="raw export: fixed 1 x 3 x H x W input"
    )
    parser.add_argument(
        "--device", default="cpu", choices=DEVICES, help=DEVICE_HELP + "; traces and checks there"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a test-time setting before exporting: " + ", ".join(INFERENCE_KEYS),
    )
    parser.add_argument(
        "--check-images",
        nargs="+",
        default=None,
        metavar="IMAGE",
        help="end to end: compare with the Predictor on these images (default: 2 synthetic)",
    )
    parser.add_argument("--no-check", action="store_true", help="write the file only")
    parser.add_argument(
        "--int8",
        action="store_true",
        help="end-to-end ONNX quantized to int8 (onnxruntime static quantization, calibrated "
        "on --calib), written only when it passes the accuracy gate against fp32",
    )
    parser.add_argument(
        "--calib", default=None, metavar="DIR", help="--int8: a folder of the user's images"
    )
    parser.add_argument(
        "--calib-count",
        type=int,
        default=8,
        metavar="N",
        help="--int8: calibrate on the first N images of --calib (by name) and gate on the "
        "next N (default 8; on the calibration images when there are no more)",
    )
    parser.add_argument(
        "--int8-force",
        action="store_true",
        help="--int8: write the file even when the gate fails (its metadata says so)",
    )


def _load(args: argparse.Namespace):
    """(cfg, network, post-processor) of the model file, with the --set test-time settings."""
    device = resolve_device(args.device)
    cfg, model, _, post = load_model_file(args.weights, device)
    if args.overrides:
        # only the settings that act after the network (or on its input size): the weights fit
        cfg = inference_config(cfg, args.overrides)
        post = build_postprocessor(cfg).eval().to(device)
    return cfg, model, post


def run(args: argparse.Namespace) -> int:
    if args.format == "onnx":
        check_opset(args.opset)  # before loading the model: a bad --opset fails at once
    if args.int8:
        _check_int8_arguments(args)
    cfg, model, post = _load(args)
    default_h, default_w = default_export_size(cfg)
    height = args.height or default_h
    width = args.width or default_w
    if not args.end_to_end:
        if args.format != "onnx":
            raise ValueError("--no-end-to-end writes ONNX only (the network's raw tensors)")
        return _run_raw(args, cfg, model, height, width)
    paste = not args.no_paste
    if args.int8:
        return _run_int8(args, cfg, model, post, height, width)
    if args.format == "onnx":
        path = export_end_to_end_onnx(
            model,
            post,
            args.out,
            height=height,
            width=width,
            opset=args.opset,
            paste=paste,
            cfg=cfg,
        )
        print(f"wrote {path} (end to end, opset {args.opset}, traced at {height}x{width})")
        load = OnnxSegmenter
    else:
        path = export_torchscript(
            model, post, args.out, height=height, width=width, paste=paste, cfg=cfg
        )
        print(f"wrote {path} (end to end, TorchScript, traced at {height}x{width})")
        load = TorchScriptSegmenter
    if args.no_check or not paste:
        return 0
    return _check_end_to_end(cfg, model, post, load(path), args.check_images)


def _check_int8_arguments(args: argparse.Namespace) -> None:
    if args.format != "onnx" or not args.end_to_end or args.no_paste:
        raise ValueError("--int8: end-to-end ONNX with pasted masks only (the gate compares them)")
    if args.calib is None:
        raise ValueError("--int8 needs --calib DIR: a few of your images to calibrate on")
    calibration_images(args.calib, args.calib_count)  # a bad folder fails before the export


def _run_int8(args: argparse.Namespace, cfg, model, post, height: int, width: int) -> int:
    """Export fp32 (checked against PyTorch), quantize it, gate int8 against it; exit status 1
    and no file when the gate fails (unless --int8-force)."""
    with tempfile.TemporaryDirectory(prefix="blendmask_export_") as tmp:
        fp32 = export_end_to_end_onnx(
            model, post, Path(tmp) / "fp32.onnx", height=height, width=width,
            opset=args.opset, cfg=cfg,
        )  # fmt: skip
        if not args.no_check:
            status = _check_end_to_end(cfg, model, post, OnnxSegmenter(fp32), args.check_images)
            if status:
                return status
        report, written = quantize_and_gate(
            fp32, args.out, args.calib, count=args.calib_count, force=args.int8_force
        )
    print(f"int8 vs fp32 (accuracy gate), {report.line()}")
    if not written:
        print(
            f"int8 gate FAILED: nothing written to {args.out}; keep the fp32 export, or "
            "pass --int8-force to write it anyway"
        )
        return 1
    forced = " despite the failed gate (--int8-force)" if not report.passed() else ""
    print(f"wrote {args.out} (end to end, int8, opset {args.opset}){forced}")
    return 0


def _check_end_to_end(cfg, model, post, segmenter, image_paths) -> int:
    """Match the file's detections with the Predictor's; exit status 1 when they differ."""
    device = next(model.parameters()).device
    predictor = Predictor(cfg, model, post, device=device, score_threshold=None)
    images = image_paths or _synthetic_images(cfg.data.min_size_test, cfg.data.max_size_test)
    report = compare(lambda image: predictor([image])[0].to("cpu"), segmenter, images)
    print(f"exported file vs PyTorch Predictor, {report.line()}")
    return 0 if report.passed() else 1


def _synthetic_images(min_size: int, max_size: int) -> list[np.ndarray]:
    """Two smooth random uint8 RGB images of different shapes (landscape at the test size,
    portrait at half of it): the dynamic axes and the resize path both get exercised."""
    generator = torch.Generator().manual_seed(0)
    images = []
    for height, width in ((min_size, max_size), (max(32, max_size // 2), max(32, min_size // 2))):
        coarse = torch.rand((1, 3, 8, 8), generator=generator)
        smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")
        images.append((smooth[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
    return images


def _run_raw(args: argparse.Namespace, cfg, model, height: int, width: int) -> int:
    """Today's network-only export, checked output by output at two sizes."""
    dynamic = not args.static
    path = export_onnx(
        model, args.out, height=height, width=width, opset=args.opset, dynamic=dynamic, cfg=cfg
    )
    print(f"wrote {path} (opset {args.opset}, traced at {height}x{width}, dynamic={dynamic})")
    if args.no_check:
        return 0
    generator = torch.Generator().manual_seed(0)
    sizes = [(height, width)]
    if dynamic:
        # A second, smaller size shows that the dynamic axes hold.
        sizes.append(
            (max(SIZE_DIVISIBILITY, height // 64 * 32), max(SIZE_DIVISIBILITY, width // 64 * 32))
        )
    for h, w in sizes:
        images = torch.rand(1, 3, h, w, generator=generator)
        diffs = check_onnx(model, path, images)
        text = ", ".join(f"{name} {diff:.2e}" for name, diff in diffs.items())
        print(f"onnxruntime vs PyTorch at {h}x{w}, max abs diff: {text}")
    return 0
