"""The end-to-end export against the PyTorch `Predictor` on real images: every detection
matched (same label, box IoU >= 0.999, score difference <= 1e-4) and mean mask IoU >= 0.99.
Boxes with a side under 1 px are matched by coordinates (each within 1e-3 px, what IoU 0.999
allows a 1 px box): their IoU moves by more than 0.001 with one float32 step of a coordinate
(see `export/compare.py`).

    python benchmarks/onnx_parity.py --weights runs/demo/model.pt --images runs/demo/data/images/val
    python benchmarks/onnx_parity.py --synthetic-r50 [--set data.min_size_test=320]
        [--format onnx|torchscript] [--count 10] [--json benchmarks/results/onnx_parity.json]

`--synthetic-r50`: R_50_1x with reference-style (AdelaiDet) weights: a seeded checkpoint with
the reference's keys and shapes (tests/data/keys/r50.json, as tests/test_predictor_reference.py)
converted by `convert.convert_adelaidet_model`; images: skimage's sample photos.
Writes the file to a temporary folder; prints and optionally stores the figures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

from common import write_json  # noqa: E402

# skimage.data photos shipped with scikit-image (no download); gray ones are stacked to RGB.
SKIMAGE_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "rocket",
    "colorwheel",
    "camera",
    "coins",
)


def skimage_photos(count: int) -> list[tuple[str, np.ndarray]]:
    import skimage.data

    out = []
    for name in SKIMAGE_PHOTOS[:count]:
        array = getattr(skimage.data, name)()
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=2)
        out.append((name, np.ascontiguousarray(array[..., :3])))
    return out


def folder_images(folder: Path, count: int) -> list[tuple[str, Path]]:
    suffixes = (".png", ".jpg", ".jpeg")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes)[:count]
    if not paths:
        raise SystemExit(f"--images: no images in {folder}")
    return [(p.name, p) for p in paths]


def load_model(args: argparse.Namespace, tmp: Path) -> tuple[Any, Any, Any]:
    """(cfg, network, post-processor), with the --set test-time settings."""
    from blendmask.checkpoint_io import load_model_file
    from blendmask.config import apply_overrides
    from blendmask.factory import build_postprocessor

    if args.synthetic_r50:
        from helpers.reference import synthetic_checkpoint

        from blendmask.convert import convert_adelaidet_model

        cfg, model, report = convert_adelaidet_model(
            synthetic_checkpoint(tmp / "R_50_1x.pth"), "R_50_1x"
        )
        assert report.complete, "the synthetic checkpoint no longer fits R_50_1x"
        model.eval()
    else:
        cfg, model, _, _ = load_model_file(args.weights, "cpu")
    cfg = apply_overrides(cfg, list(args.overrides)).validate()
    return cfg, model, build_postprocessor(cfg).eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", type=Path, help="model file (model.pt)")
    source.add_argument("--synthetic-r50", action="store_true")
    p.add_argument("--images", type=Path, default=None, help="folder (default: skimage photos)")
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--format", default="onnx", choices=["onnx", "torchscript"])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from blendmask.export import compare
    from blendmask.export.compare import ParityReport, add_image, as_arrays
    from blendmask.export.end_to_end_onnx import export_end_to_end_onnx
    from blendmask.export.onnx import default_export_size
    from blendmask.export.torchscript import TorchScriptSegmenter, export_torchscript
    from blendmask.onnx_runtime import OnnxSegmenter
    from blendmask.predictor import Predictor

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cfg, model, post = load_model(args, tmp)
        images = (
            folder_images(args.images, args.count) if args.images else skimage_photos(args.count)
        )
        height, width = default_export_size(cfg)
        start = time.perf_counter()
        if args.format == "onnx":
            path = export_end_to_end_onnx(
                model, post, tmp / "m.onnx", height=height, width=width, cfg=cfg
            )
            exported: Any = OnnxSegmenter(path, threads=args.threads)
        else:
            path = export_torchscript(
                model, post, tmp / "m.ts", height=height, width=width, cfg=cfg
            )
            exported = TorchScriptSegmenter(path)
        export_s = time.perf_counter() - start
        predictor = Predictor(cfg, model, post, device="cpu", score_threshold=None)
        total, rows = ParityReport(), []
        for name, image in images:
            want, got = as_arrays(predictor([image])[0]), as_arrays(exported(image))
            one = ParityReport()
            add_image(one, want, got)
            add_image(total, want, got)
            rows.append({"image": name, **one.summary()})
            print(f"  {name}: {one.line()}", flush=True)
    summary = {
        "model": "R_50_1x, synthetic AdelaiDet checkpoint converted"
        if args.synthetic_r50
        else str(args.weights),
        "format": args.format,
        "test_size": [cfg.data.min_size_test, cfg.data.max_size_test],
        "score_threshold": cfg.model.fcos.inference_th_test,
        "export_seconds": round(export_s, 1),
        "criterion": {
            "min_box_iou": compare.MIN_BOX_IOU,
            "subpixel_below_px": compare.MIN_IOU_SIDE,
            "subpixel_box_atol_px": compare.BOX_ATOL,
            "max_score_diff": compare.MAX_SCORE_DIFF,
            "min_mean_mask_iou": compare.MIN_MEAN_MASK_IOU,
        },
        "total": total.summary(),
        "images": rows,
    }
    print(f"total: {total.line()}")
    if args.json is not None:
        write_json(args.json, summary, sort_keys=False)
    return 0 if total.passed() else 1


if __name__ == "__main__":
    sys.exit(main())
