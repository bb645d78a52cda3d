"""Time and peak memory of one training step: our BlendMask against torchvision's Mask R-CNN.

The paper (BlendMask Sec. 4.3) compares training cost with Mask R-CNN at the same backbone;
this measures it here: batch 2 at `--size` (800 x 1333 by default), random weights and
synthetic targets (4 instances per image: elliptic masks in random boxes), SGD step included
(zero_grad, forward, losses, backward, step).

Every model runs in a fresh subprocess, so its peak resident memory (max RSS, from
`getrusage`) is its own: the figure includes the Python interpreter, torch and the model, and
`rss_after_build_bytes` says how much of it was there before the first step. On CUDA the peak is
`torch.cuda.max_memory_allocated` over the steps.

The two models train the same parts of the same backbone: ours is R_50_1x (FrozenBN, stem and
res2 frozen); Mask R-CNN is torchvision's `MaskRCNN` on `resnet_fpn_backbone("resnet50",
weights=None)` with FrozenBN and 3 trainable stages (what `maskrcnn_resnet50_fpn` builds when
given ImageNet weights, the way it is trained); `--maskrcnn-literal` uses
`maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)` instead (BatchNorm in training
mode, all stages trainable).

    python benchmarks/train_step.py --json benchmarks/results/train_step.json \
        [--size 800 1333] [--batch 2] [--repeats 3] [--threads 2] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

MASKRCNN = "maskrcnn_resnet50_fpn"
RESULT_PREFIX = "RESULT "


def current_rss_bytes() -> int:
    """Resident memory now (VmRSS), 0 where /proc is not available."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def max_rss_bytes() -> int:
    """Peak resident memory of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def synthetic_batch(
    batch: int, height: int, width: int, num_instances: int, num_classes: int = 80, seed: int = 0
) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """Images (Tensor[3, H, W] in [0, 1]) and targets: boxes float[G, 4] xyxy, labels int64[G]
    in [0, num_classes), masks uint8[G, H, W] (an ellipse filling each box)."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    ys = torch.arange(height, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(width, dtype=torch.float32)[None, :] + 0.5
    for i in range(batch):
        images.append(common.random_image(height, width, seed=seed + i))
        side = torch.rand((num_instances, 2), generator=g) * 0.4 + 0.1  # 10-50% of the image
        side = side * torch.tensor([width, height])
        centre = (
            torch.rand((num_instances, 2), generator=g) * (torch.tensor([width, height]) - side)
            + side / 2
        )
        boxes = torch.cat([centre - side / 2, centre + side / 2], dim=1)
        masks = []
        for (cx, cy), (w, h) in zip(centre.tolist(), side.tolist()):
            inside = ((xs - cx) / (w / 2)) ** 2 + ((ys - cy) / (h / 2)) ** 2 <= 1
            masks.append(inside.to(torch.uint8))
        labels = torch.randint(0, num_classes, (num_instances,), generator=g)
        targets.append({"boxes": boxes, "labels": labels, "masks": torch.stack(masks)})
    return images, targets


def build_maskrcnn_train(size: tuple[int, int], literal: bool, box_batch: int) -> nn.Module:
    from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    torch.manual_seed(0)
    min_size, max_size = min(size), max(size)
    if literal:
        return maskrcnn_resnet50_fpn(
            weights=None,
            weights_backbone=None,
            min_size=min_size,
            max_size=max_size,
            box_batch_size_per_image=box_batch,
        )
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=3)
    return MaskRCNN(
        backbone,
        num_classes=91,
        min_size=min_size,
        max_size=max_size,
        box_batch_size_per_image=box_batch,
    )


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One model's steps, in this (fresh) process."""
    device = common.setup(args.threads, args.device)
    height, width = args.size
    name = args.worker
    num_classes = 80
    if name.startswith("blendmask_"):
        from blendmask.presets import get_preset

        num_classes = get_preset(name.removeprefix("blendmask_")).model.fcos.num_classes
    images, targets = synthetic_batch(args.batch, height, width, args.instances, num_classes)
    images = [im.to(device) for im in images]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    if name == MASKRCNN:
        model = (
            build_maskrcnn_train((height, width), args.maskrcnn_literal, args.maskrcnn_box_batch)
            .to(device)
            .train()
        )
        tv_targets = [dict(t, labels=t["labels"] + 1) for t in targets]  # 0 is background

        def losses() -> dict[str, Tensor]:
            return model(images, tv_targets)

        config = "literal maskrcnn_resnet50_fpn" if args.maskrcnn_literal else "FrozenBN, 3 stages"
    elif name.startswith("blendmask_"):
        from blendmask.factory import build
        from blendmask.presets import get_preset

        preset = name.removeprefix("blendmask_")
        torch.manual_seed(0)
        model, criterion, _ = build(get_preset(preset), load_pretrained=False)
        model.to(device).train()
        criterion.to(device)
        batch, sizes = common.pad_batch(images)

        def losses() -> dict[str, Tensor]:
            return criterion(model(batch, sizes), targets)

        config = f"preset {preset}"
    else:
        raise ValueError(f"unknown model {name!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    # A small learning rate keeps random weights finite over the steps; it does not change cost.
    optimizer = torch.optim.SGD(params, lr=1e-5, momentum=0.9, weight_decay=1e-4)
    last: dict[str, float] = {}

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with common.autocast(device, args.precision):
            loss_dict = losses()
        loss = sum(loss_dict.values())
        loss.backward()
        optimizer.step()
        last["loss"] = float(loss)  # also waits for the GPU

    rss_built = current_rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    stats = common.time_fn(step, device, warmup=args.warmup, repeats=args.repeats)
    result: dict[str, Any] = {
        "config": config,
        "trainable_parameters": sum(p.numel() for p in params),
        "step": stats,
        "median_s": stats["median_s"],
        "loss_last": last["loss"],
        "rss_after_build_bytes": rss_built,
        "max_rss_bytes": max_rss_bytes(),
    }
    if device.type == "cuda":
        result["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    return result


def run_subprocess(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run `worker` for `name` in a fresh interpreter and parse its result line."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        name,
        "--size",
        *map(str, args.size),
        "--batch",
        str(args.batch),
        "--instances",
        str(args.instances),
        "--maskrcnn-box-batch",
        str(args.maskrcnn_box_batch),
        "--repeats",
        str(args.repeats),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
        "--precision",
        args.precision,
    ]
    if args.maskrcnn_literal:
        cmd.append("--maskrcnn-literal")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"train step of {name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--size", type=int, nargs=2, default=[800, 1333], metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--instances", type=int, default=4, help="instances per image")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=1, help="alternate the models this many times")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default="fp32", choices=list(common.PRECISIONS))
    p.add_argument("--preset", default="R_50_1x", help="our preset")
    p.add_argument("--maskrcnn-literal", action="store_true")
    p.add_argument(
        "--maskrcnn-box-batch",
        type=int,
        default=512,
        help="Mask R-CNN RoIs sampled per image for the box/mask losses (torchvision: 512)",
    )
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        print(RESULT_PREFIX + json.dumps(worker(args)), flush=True)
        return 0
    device = common.setup(args.threads, args.device)
    ours = f"blendmask_{args.preset}"
    data: dict[str, Any] = {
        "machine": common.machine_info(args.threads, device),
        "settings": {
            "size": list(args.size),
            "batch": args.batch,
            "instances_per_image": args.instances,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "precision": args.precision,
            "timed": "zero_grad + forward + losses + backward + SGD step",
            "memory": "max RSS of a fresh subprocess per model (interpreter, torch, model, steps)",
            "maskrcnn_box_batch_size_per_image": args.maskrcnn_box_batch,
        },
        "models": {},
    }
    print(f"train step: batch {args.batch} at {args.size[0]}x{args.size[1]}", flush=True)
    # With --rounds > 1 the models alternate (A B A B), so that a change of background load
    # hits both; the step times of all rounds are pooled and the peak memory is the largest.
    rounds: dict[str, list[dict[str, Any]]] = {ours: [], MASKRCNN: []}
    for _ in range(args.rounds):
        for name in (ours, MASKRCNN):
            r = run_subprocess(name, args)
            rounds[name].append(r)
            print(
                f"  {name:28s} {r['median_s']:.2f} s/step, "
                f"max RSS {r['max_rss_bytes'] / 2**30:.2f} GiB",
                flush=True,
            )
    for name, results in rounds.items():
        merged = dict(results[-1])
        merged["step"] = common.summarize([t for r in results for t in r["step"]["runs_s"]])
        merged["median_s"] = merged["step"]["median_s"]
        for key in ("max_rss_bytes", "rss_after_build_bytes", "cuda_max_allocated_bytes"):
            if key in merged:
                merged[key] = max(r[key] for r in results)
        data["models"][name] = merged
    a, b = data["models"][ours], data["models"][MASKRCNN]
    data["ratios"] = {
        "blendmask_over_maskrcnn_time": common.ratio(a["median_s"], b["median_s"]),
        "blendmask_over_maskrcnn_max_rss": common.ratio(a["max_rss_bytes"], b["max_rss_bytes"]),
        "blendmask_over_maskrcnn_step_memory": common.ratio(
            a["max_rss_bytes"] - a["rss_after_build_bytes"],
            b["max_rss_bytes"] - b["rss_after_build_bytes"],
        ),
    }
    if device.type == "cuda":
        data["ratios"]["blendmask_over_maskrcnn_cuda_memory"] = common.ratio(
            a["cuda_max_allocated_bytes"], b["cuda_max_allocated_bytes"]
        )
    common.write_json(args.json, data)
    for key, value in data["ratios"].items():
        print(f"  {key}: {value:.3f}" if value is not None else f"  {key}: n/a")
    return 0


if __name__ == "__main__":
    sys.exit(main())
