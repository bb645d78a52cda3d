"""Throughput and memory of streaming `blendmask predict` over folders of images.

1. Images/s of `predict` (`prediction.predict.predict_images`, as the command runs it: DataLoader
   decoding, batches, JSON lines, overlays) over a folder of `--images` synthetic 640 x 480
   JPEGs, at batch 1 / 4 and 1 / 2 decoding workers, with a `--preset` model of random
   weights (`Predictor.from_config`, saved to a model file);
2. the same images through a plain loop, with the same threads: our `Predictor` one image at a
   time (decode in the loop, no files written: what the streaming machinery adds or saves), and
   torchvision's Mask R-CNN R50-FPN (random weights, `weights=None, weights_backbone=None`,
   its transform set to the images' own size, 480 x 640, so that neither model upsamples).
   Mask R-CNN is slow on a CPU: it runs on the first `--maskrcnn-images` images;
3. peak RSS of `predict` over `--tiny-small` and `--tiny-large` tiny images (64 x 48 PNGs;
   the `tiny` preset with random weights, batch 4, 2 workers, overlays on): the main process
   (ru_maxrss) and the largest worker. Memory must not grow with the number of images (within
   10%);
4. what overlays cost: `predict` over `--overlay-images` 800 x 1333 JPEGs with exactly 100
   detections each (the `--preset` network with random weights, score threshold 0, NMS off,
   post-NMS top-k 100: `common.build_blendmask`), with and without overlays, `--overlay-rounds`
   interleaved rounds (the fastest of each kept). Overlays may add at most 30% to the
   no-overlay CPU time (`overlay_cost_ratio_cpu_seconds` <= 0.3; wall time beside it).
   `--only overlays` measures this alone.

Each measurement runs in its own process (`--one`), so peak RSS and caches are its own.

    nice -n 19 python benchmarks/predict_throughput.py \
        --json benchmarks/results/predict_throughput.json [--threads 2] [--preset shapes_lite0]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def make_folder(folder: Path, count: int, size: tuple[int, int], suffix: str) -> Path:
    """`count` synthetic images (noise plus a few bright rectangles) of size (H, W)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    height, width = size
    for k in range(count):
        image = rng.integers(0, 80, (height, width, 3), dtype=np.uint8)
        for _ in range(3):
            y, x = rng.integers(0, height - height // 4), rng.integers(0, width - width // 4)
            image[y : y + height // 4, x : x + width // 4] = rng.integers(120, 256, 3)
        Image.fromarray(image).save(folder / f"img{k:05d}{suffix}", quality=90)
    return folder


def save_model(preset: str, path: Path) -> Path:
    import torch

    from blendmask.checkpoint_io import save_model_file
    from blendmask.predictor import Predictor
    from blendmask.presets import get_preset

    torch.manual_seed(0)
    cfg = get_preset(preset)
    # Random weights give few detections above the default threshold; a low candidate
    # threshold gives each image a realistic number to encode and draw.
    cfg.model.fcos.inference_th_test = 0.01
    predictor = Predictor.from_config(cfg.validate(), device="cpu")
    save_model_file(path, predictor.cfg, predictor.model)
    return path


def run_predict(args: argparse.Namespace) -> dict[str, Any]:
    from blendmask.prediction.predict import predict_images

    start = time.perf_counter()
    summary = predict_images(
        weights=args.model,
        inputs=[args.folder],
        out=args.out,
        device="cpu",
        batch_size=args.batch_size,
        workers=args.workers,
        score_threshold=args.conf,
        overlays=bool(args.overlays),
        resume=False,
    )
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "images": summary["predicted"], "detections": summary["detections"]}


def run_plain_ours(args: argparse.Namespace) -> dict[str, Any]:
    from blendmask.predictor import Predictor

    predictor = Predictor.from_checkpoint(args.model, device="cpu", score_threshold=args.conf)
    paths = sorted(Path(args.folder).iterdir())[: args.limit or None]
    start = time.perf_counter()
    detections = sum(len(predictor([str(p)])[0]) for p in paths)
    return {"seconds": time.perf_counter() - start, "images": len(paths), "detections": detections}


def run_plain_maskrcnn(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from torchvision.io import decode_image
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=480, max_size=640
    ).eval()
    paths = sorted(Path(args.folder).iterdir())[: args.limit or None]
    start = time.perf_counter()
    detections = 0
    with torch.inference_mode():
        for path in paths:
            image = decode_image(str(path)).float() / 255
            detections += len(model([image])[0]["boxes"])
    return {"seconds": time.perf_counter() - start, "images": len(paths), "detections": detections}


def one(args: argparse.Namespace) -> None:
    """One measurement in this process; prints its json."""
    import torch

    torch.set_num_threads(args.threads)
    runner = {"predict": run_predict, "ours": run_plain_ours, "maskrcnn": run_plain_maskrcnn}
    before = cpu_seconds()
    result = runner[args.one](args)
    result["cpu_seconds"] = round(cpu_seconds() - before, 2)
    result["images_per_s"] = round(result["images"] / result["seconds"], 2)
    result["seconds"] = round(result["seconds"], 2)
    # Linux ru_maxrss is in KiB. CHILDREN: the largest of the finished DataLoader workers.
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result["worker_peak_rss_mb"] = round(children, 1)
    print(json.dumps(result))


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (DataLoader
    workers): unlike wall time, not stretched by other jobs on a shared machine."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(args: argparse.Namespace, kind: str, **options: Any) -> dict[str, Any]:
    command = [sys.executable, __file__, "--one", kind, "--threads", str(args.threads)]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} {options}: {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(kind, options, result, flush=True)
    return result


def save_model_with_detections(preset: str, path: Path, count: int) -> Path:
    """A model file whose network returns exactly `count` detections per image."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import build_blendmask

    from blendmask.checkpoint_io import save_model_file

    model, _, cfg = build_blendmask(preset, num_detections=count)
    save_model_file(path, cfg.validate(), model)
    return path


def measure_overlays(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Seconds of predict with and without overlays at 100 detections per image (item 4)."""
    model = save_model_with_detections(args.preset, root / "model100.pt", 100)
    folder = make_folder(root / "photos", args.overlay_images, (800, 1333), ".jpg")
    common = {"model": model, "folder": folder, "conf": 0.0, "workers": 1}
    rows: dict[int, list[dict[str, Any]]] = {0: [], 1: []}
    for _ in range(args.overlay_rounds):  # interleaved: background load hits both alike
        for overlays in (0, 1):
            out = root / f"out_overlays{overlays}"
            rows[overlays].append(measure(args, "predict", overlays=overlays, out=out, **common))
    result: dict[str, Any] = {
        "images": args.overlay_images,
        "image_size": [800, 1333],
        "detections_per_image": rows[0][0]["detections"] / max(1, rows[0][0]["images"]),
    }
    # The criterion is on CPU seconds: on a shared machine the wall time of one run can
    # double with the other jobs' load; wall seconds are reported beside them.
    for unit in ("cpu_seconds", "seconds"):
        plain, drawn = (min(r[unit] for r in rows[k]) for k in (0, 1))
        result[f"{unit}_no_overlays"], result[f"{unit}_overlays"] = plain, drawn
        result[f"overlay_cost_ratio_{unit}"] = round((drawn - plain) / plain, 3)
    result["overlays_within_30_percent"] = result["overlay_cost_ratio_cpu_seconds"] <= 0.30
    result["rounds"] = {"no_overlays": rows[0], "overlays": rows[1]}
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.one:
        one(args)
        return
    report: dict[str, Any] = {"settings": settings(args), "throughput": [], "memory": []}
    save = functools.partial(write_report, report, args.json)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        report["overlays"] = measure_overlays(args, root)
        save()
        if args.only == "overlays":
            print(json.dumps(report["overlays"], indent=1))
            return
        model = save_model(args.preset, root / "model.pt")
        folder = make_folder(root / "images", args.images, (480, 640), ".jpg")
        common = {"model": model, "folder": folder, "conf": args.conf}
        for batch in (1, 4):
            for workers in (1, 2):
                out = root / f"out_b{batch}_w{workers}"
                row = measure(args, "predict", batch_size=batch, workers=workers, out=out, **common)
                report["throughput"].append(
                    {"run": "predict", "batch": batch, "workers": workers, **row}
                )
                save()
        row = measure(args, "ours", **common)
        report["throughput"].append({"run": "plain loop, our Predictor", **row})
        save()
        row = measure(args, "maskrcnn", limit=args.maskrcnn_images, **common)
        report["throughput"].append({"run": "plain loop, torchvision Mask R-CNN R50-FPN", **row})
        save()
        tiny_model = save_model("tiny", root / "tiny.pt")
        for count in (args.tiny_small, args.tiny_large):
            tiny = make_folder(root / f"tiny{count}", count, (48, 64), ".png")
            out = root / f"out_tiny{count}"
            row = measure(
                args, "predict", model=tiny_model, folder=tiny, out=out, batch_size=4, workers=2,
                conf=args.conf,
            )  # fmt: skip
            report["memory"].append({"images": count, **row})
            save()
    small, large = (row["peak_rss_mb"] for row in report["memory"])
    report["rss_ratio_large_to_small"] = round(large / small, 3)
    report["rss_flat_within_10_percent"] = abs(large / small - 1) <= 0.10
    report["settings"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    save()
    print(json.dumps(report, indent=1))


def write_report(report: dict[str, Any], path: str | None) -> None:
    """The report so far (after each measurement: a run cut short keeps what it measured)."""
    if path:
        # Here, not at the top: common imports torch, which the parent process otherwise never
        # needs (each measurement runs in its own subprocess).
        from common import write_json

        write_json(path, report, indent=1, sort_keys=False)


def settings(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    return {
        "preset": args.preset,
        "threads": args.threads,
        "images": args.images,
        "image_size": [480, 640],
        "conf": args.conf,
        "maskrcnn_images": args.maskrcnn_images,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "note": "shared machine: other jobs ran at the same time; figures are indicative",
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None, help="write the report here")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--preset", default="shapes_lite0")
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--maskrcnn-images", type=int, default=20)
    p.add_argument("--tiny-small", type=int, default=200)
    p.add_argument("--tiny-large", type=int, default=2000)
    # Random weights score ~0.1: 0.05 keeps detections to encode and draw, as a trained model has.
    p.add_argument("--conf", type=float, default=0.05)
    # one measurement (internal)
    p.add_argument("--one", choices=["predict", "ours", "maskrcnn"], default=None)
    p.add_argument("--model", default=None)
    p.add_argument("--folder", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--overlays", type=int, default=1, help="internal: 0 = --no-overlays")
    p.add_argument("--overlay-images", type=int, default=10)
    p.add_argument("--overlay-rounds", type=int, default=2)
    p.add_argument("--only", choices=["all", "overlays"], default="all")
    return p.parse_args(argv)


if __name__ == "__main__":
    main()
