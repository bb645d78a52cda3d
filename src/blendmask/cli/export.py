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

import numpy as np
import torch

from blendmask.checkpoint_io import load_model_file
from blendmask.cli.arguments import DEVICE_HELP, DEVICES
from blendmask.export.compare import compare
from blendmask.export.end_to_end_onnx import export_end_to_end_onnx
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
    cfg, model, post = _load(args)
    default_h, default_w = default_export_size(cfg)
    height = args.height or default_h
    width = args.width or default_w
    if not args.end_to_end:
        if args.format != "onnx":
            raise ValueError("--no-end-to-end writes ONNX only (the network's raw tensors)")
        return _run_raw(args, cfg, model, height, width)
    paste = not args.no_paste
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
