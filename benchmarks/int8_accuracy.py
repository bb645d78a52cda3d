"""The int8 end-to-end file against fp32 on a trained model, in both runtimes: issue 25's
accuracy gate for a deployment path (mask IoU >= 0.98 on the same detections, mask AP within
0.005 of fp32's).

For `--weights model.pt` and a val set it runs the package's own commands:
1. `export` fp32, and `export --int8 --calib DIR --int8-force` (onnxruntime static
   quantization, gated in onnxruntime: `export/int8.py`);
2. the int8 file's gate in OpenVINO too (`export/int8_gate.gate`: the fp32 file in
   onnxruntime against the int8 file in OpenVINO, on the same held-out images);
3. `predict --onnx F --backend B --coco` on the val images and `eval --results` for fp32 /
   onnxruntime, int8 / onnxruntime and int8 / OpenVINO: mask and box AP of each.

    python benchmarks/int8_accuracy.py --weights runs/demo/model.pt \
        --val-json runs/demo/data/annotations/instances_val.json \
        --val-images runs/demo/data/images/val --calib runs/demo/data/images/train \
        --json benchmarks/results/int8_accuracy_shapes.json

Calibrate on training images (the user's own, not the val set the AP is measured on).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from common import machine_info, write_json

REPO = Path(__file__).resolve().parents[1]
GATE_AP = 0.005
RUNS = {"fp32_onnxruntime": ("fp32", "onnxruntime"), "int8_onnxruntime": ("int8", "onnxruntime")}
RUNS["int8_openvino"] = ("int8", "openvino")


def blendmask(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "blendmask", *args], capture_output=True, text=True, cwd=REPO
    )
    if proc.returncode != 0:
        raise SystemExit(f"blendmask {args[0]} failed:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def openvino_gate(fp32: Path, int8: Path, calib: Path, count: int) -> dict[str, Any]:
    """The int8 gate with the int8 file in OpenVINO, on `export --int8`'s held-out images."""
    from blendmask.export.int8 import calibration_images
    from blendmask.export.int8_gate import gate
    from blendmask.export.openvino_segmenter import OpenVinoSegmenter
    from blendmask.onnx_runtime import OnnxSegmenter

    calib_files, held_out = calibration_images(calib, count)
    report = gate(OnnxSegmenter(fp32), OpenVinoSegmenter(int8), held_out or calib_files)
    return {**report.summary(), "passed": report.passed()}


def scored(name: str, onnx: Path, backend: str, args: argparse.Namespace, out: Path) -> dict:
    """predict on the val images, then eval of the COCO results: the AP figures."""
    pred = out / f"predict_{name}"
    blendmask(
        "predict", "--onnx", str(onnx), "--backend", backend, "--out", str(pred),
        "--coco", "--json", args.val_json, "--no-overlays", "--no-resume", args.val_images,
    )  # fmt: skip
    blendmask(
        "eval", "--results", str(pred / "results.json"), "--json", args.val_json,
        "--out", str(out / f"eval_{name}"),
    )  # fmt: skip
    metrics = json.loads((out / f"eval_{name}" / "metrics.json").read_text())
    return {k: round(float(metrics[k]), 4) for k in ("segm_AP", "segm_AP75", "bbox_AP")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--val-json", required=True)
    parser.add_argument("--val-images", required=True)
    parser.add_argument("--calib", required=True, help="training images to calibrate on")
    parser.add_argument("--calib-count", type=int, default=8)
    parser.add_argument("--out", default=str(REPO / "runs" / "int8_accuracy"))
    parser.add_argument("--json", required=True, help="the results file to write")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"fp32": out / "fp32.onnx", "int8": out / "int8.onnx"}
    # --no-check: export's own parity check against PyTorch is tests/test_onnx_runtime.py's
    blendmask("export", "--weights", args.weights, "--out", str(files["fp32"]), "--no-check")
    log = blendmask(
        "export", "--weights", args.weights, "--out", str(files["int8"]), "--int8",
        "--calib", args.calib, "--calib-count", str(args.calib_count), "--int8-force", "--no-check",
    )  # fmt: skip
    from blendmask.export.int8 import read_int8_metadata

    gates = {
        "onnxruntime": read_int8_metadata(files["int8"]),
        "openvino": openvino_gate(files["fp32"], files["int8"], Path(args.calib), args.calib_count),
    }
    aps = {name: scored(name, files[f], b, args, out) for name, (f, b) in RUNS.items()}
    base = aps["fp32_onnxruntime"]["segm_AP"]
    checks = {
        f"{name}: mask AP within {GATE_AP} of fp32": abs(ap["segm_AP"] - base) <= GATE_AP
        for name, ap in aps.items()
        if name != "fp32_onnxruntime"
    }
    checks["onnxruntime int8 gate passed"] = not gates["onnxruntime"]["forced"]
    checks["openvino int8 gate passed"] = gates["openvino"]["passed"]
    report = {
        "machine": machine_info(torch.get_num_threads(), torch.device("cpu")),
        "weights": args.weights,
        "val": args.val_json,
        "export_int8_log": log.strip().splitlines()[-3:],
        "gates": gates,
        "ap": aps,
        "checks": checks,
    }
    write_json(Path(args.json), report, sort_keys=False)
    print(json.dumps({"ap": aps, "checks": checks}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
