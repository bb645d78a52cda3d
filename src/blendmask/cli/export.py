"""ONNX export of a model file, checked in onnxruntime"""

from __future__ import annotations

import argparse

import torch

from blendmask.checkpoint_io import load_model_file
from blendmask.export.onnx import SIZE_DIVISIBILITY, check_onnx, default_export_size, export_onnx
from blendmask.io import resolve_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True, help="model file (model.pt)")
    parser.add_argument("--out", default="model.onnx", help="ONNX file to write")
    parser.add_argument(
        "--height", type=int, default=None, help="trace height (default: test size, /32)"
    )
    parser.add_argument(
        "--width", type=int, default=None, help="trace width (default: max test size, /32)"
    )
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument(
        "--static", action="store_true", help="fixed 1 x 3 x H x W input (no dynamic axes)"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    cfg, model, _, _ = load_model_file(args.weights, device)
    default_h, default_w = default_export_size(cfg)
    height = args.height or default_h
    width = args.width or default_w
    dynamic = not getattr(args, "static", False)
    path = export_onnx(
        model, args.out, height=height, width=width, opset=args.opset, dynamic=dynamic, cfg=cfg
    )
    print(f"wrote {path} (opset {args.opset}, traced at {height}x{width}, dynamic={dynamic})")
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
