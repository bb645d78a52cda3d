"""Time and memory of one training step: our BlendMask against torchvision's Mask R-CNN.

The paper (BlendMask Sec. 4.3) compares training cost with Mask R-CNN at the same backbone;
this measures it here: batch 2 at `--size` (800 x 1333 by default), random weights and
synthetic targets (4 instances per image: elliptic masks in random boxes), SGD step included
(zero_grad, forward, losses, backward, step). Our forward is the training loop's own
(`training.step.training_losses`: channels-last input, top layer at the positives only).

Every path (ours and Mask R-CNN, at each of `--precision`) is built in one process and warmed
up, then the paths take turns step by step (A B A B ...), so a change of background load hits
all of them alike. Each path reports min / median / max of its `--repeats` steps; a measurement
where some path's slowest step is more than `--max-spread` (1.2) times its fastest is refused
and repeated, up to `--attempts` times, after which the script exits with status 3 naming the
noisy paths instead of writing noise (steady.py).

Memory: the peak resident memory (VmHWM, reset before each path's warm-up step, with freed
heap returned to the system first) during that path's warm-up step, and the resident memory
before it; on CUDA, `torch.cuda.max_memory_allocated` over the path's steps.

The two models train the same parts of the same backbone: ours (FrozenBN, stem and res2
frozen) and Mask R-CNN, torchvision's `MaskRCNN` on `resnet_fpn_backbone("resnet50",
weights=None)` with FrozenBN and 3 trainable stages (what `maskrcnn_resnet50_fpn` builds when
given ImageNet weights, the way it is trained); `--maskrcnn-literal` uses
`maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)` instead (BatchNorm in training
mode, all stages trainable).

    python benchmarks/train_step.py --json benchmarks/results/train_step.json \
        [--preset R_50_1x] [--precision fp32 bf16] [--size 800 1333] [--batch 2] \
        [--repeats 3] [--attempts 3] [--max-spread 1.2] [--threads 2] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import steady  # noqa: E402

MASKRCNN = "maskrcnn_resnet50_fpn"
DENSE = "_dense_attentions"


def _proc_status(field: str) -> int:
    """A memory field of /proc/self/status in bytes (VmRSS, VmHWM), 0 where unavailable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def current_rss_bytes() -> int:
    """Resident memory now (VmRSS), 0 where /proc is not available."""
    return _proc_status("VmRSS")


def reset_peak_rss() -> None:
    """Return freed heap to the system and restart the peak (VmHWM) from the current RSS, so
    the next peak is one path's own (Linux; elsewhere the peak stays the process's)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_bytes() -> int:
    """Peak resident memory since the last `reset_peak_rss` (VmHWM; ru_maxrss elsewhere)."""
    peak = _proc_status("VmHWM")
    if peak:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss) if sys.platform == "darwin" else int(maxrss) * 1024


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


class TrainPath:
    """One model at one precision: its optimizer, batch and one-step closure."""

    def __init__(self, name: str, args: argparse.Namespace, precision: str) -> None:
        self.name, self.precision = name, precision
        self.device = torch.device(args.device)
        height, width = args.size
        # Both models get the same targets: our preset's classes (Mask R-CNN has 90).
        from blendmask.presets import get_preset

        num_classes = get_preset(args.preset).model.fcos.num_classes
        images, targets = synthetic_batch(args.batch, height, width, args.instances, num_classes)
        images = [im.to(self.device) for im in images]
        targets = [{k: v.to(self.device) for k, v in t.items()} for t in targets]
        torch.manual_seed(0)
        if name == MASKRCNN:
            size = (height, width)
            model = build_maskrcnn_train(size, args.maskrcnn_literal, args.maskrcnn_box_batch)
            model.to(self.device).train()
            tv_targets = [dict(t, labels=t["labels"] + 1) for t in targets]  # 0 is background
            self.losses = lambda: model(images, tv_targets)
            literal = args.maskrcnn_literal
            self.config = "literal maskrcnn_resnet50_fpn" if literal else "FrozenBN, 3 stages"
        else:
            from blendmask.factory import build
            from blendmask.presets import get_preset
            from blendmask.training.step import training_losses

            preset = name.removeprefix("blendmask_").removesuffix(DENSE)
            model, criterion, _ = build(get_preset(preset), load_pretrained=False)
            model.to(self.device).train()
            criterion.to(self.device)
            batch, sizes = common.pad_batch(images)
            if name.endswith(DENSE):
                # The training forward before the top layer ran at the positives only.
                x = batch.contiguous(memory_format=torch.channels_last)
                self.losses = lambda: criterion(model(x, sizes), targets)
                self.config = f"preset {preset}, dense top layer (the earlier training forward)"
            else:
                self.losses = lambda: training_losses(model, criterion, batch, sizes, targets)
                self.config = f"preset {preset}, the training loop's forward"
        self.params = [p for p in model.parameters() if p.requires_grad]
        # A small learning rate keeps random weights finite over the steps; it does not change
        # the cost.
        self.optimizer = torch.optim.SGD(self.params, lr=1e-5, momentum=0.9, weight_decay=1e-4)
        self.loss_last = float("nan")

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with common.autocast(self.device, self.precision):
            loss_dict = self.losses()
        loss = sum(loss_dict.values())
        loss.backward()
        self.optimizer.step()
        self.loss_last = float(loss.detach())  # also waits for the GPU

    def timed_step(self) -> float:
        return common.time_once(self.step, self.device)[0]

    def warm_up(self, steps: int) -> dict[str, Any]:
        """Untimed steps (at least one: the memory is measured over the first)."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        reset_peak_rss()
        before = current_rss_bytes()
        for _ in range(max(steps, 1)):
            self.step()
        memory = {"rss_before_step_bytes": before, "max_rss_bytes": peak_rss_bytes()}
        if self.device.type == "cuda":
            memory["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(self.device)
        return memory


def path_names(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(label, model, precision) of every path: ours then Mask R-CNN, per precision."""
    models = [f"blendmask_{args.preset}"] + ([] if args.no_maskrcnn else [MASKRCNN])
    names = [
        (model if precision == "fp32" else f"{model}_{precision}", model, precision)
        for precision in args.precision
        for model in models
    ]
    if args.with_dense_attentions:
        dense = f"blendmask_{args.preset}{DENSE}"
        names.insert(1, (dense, dense, "fp32"))
    return names


def ratios(paths: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Our step over Mask R-CNN's (fp32 and each precision), by min, median and max."""
    ours = f"blendmask_{args.preset}"
    out: dict[str, Any] = {}
    if MASKRCNN not in paths:
        return out
    peer = paths[MASKRCNN]
    for label, entry in paths.items():
        if not label.startswith(ours):
            continue
        suffix = label.removeprefix(ours) or "_fp32"
        out[f"blendmask{suffix}_over_maskrcnn_fp32"] = {
            k: common.ratio(entry["step"][k], peer["step"][k])
            for k in ("min_s", "median_s", "max_s")
        }
        same = MASKRCNN + label.removeprefix(ours)
        if suffix != "_fp32" and same in paths:
            out[f"blendmask{suffix}_over_maskrcnn{suffix}"] = {
                k: common.ratio(entry["step"][k], paths[same]["step"][k])
                for k in ("min_s", "median_s", "max_s")
            }
    if ours + DENSE in paths:  # this change against the earlier forward, in the same run
        out["blendmask_fp32_over_dense_attentions_fp32"] = {
            k: common.ratio(paths[ours]["step"][k], paths[ours + DENSE]["step"][k])
            for k in ("min_s", "median_s", "max_s")
        }
    a, b = paths[ours], peer
    out["blendmask_over_maskrcnn_time"] = common.ratio(a["median_s"], b["median_s"])
    out["blendmask_over_maskrcnn_max_rss"] = common.ratio(a["max_rss_bytes"], b["max_rss_bytes"])
    out["blendmask_over_maskrcnn_step_memory"] = common.ratio(
        a["max_rss_bytes"] - a["rss_before_step_bytes"],
        b["max_rss_bytes"] - b["rss_before_step_bytes"],
    )
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--size", type=int, nargs=2, default=[800, 1333], metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--instances", type=int, default=4, help="instances per image")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per path and attempt")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--attempts", type=int, default=steady.ATTEMPTS)
    p.add_argument("--max-spread", type=float, default=steady.MAX_SPREAD)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=list(common.PRECISIONS))
    p.add_argument("--preset", default="R_50_1x", help="our preset")
    p.add_argument("--no-maskrcnn", action="store_true", help="time our model alone")
    p.add_argument(
        "--with-dense-attentions",
        action="store_true",
        help="also time (fp32) our earlier training forward, the top layer run densely",
    )
    p.add_argument("--maskrcnn-literal", action="store_true")
    p.add_argument(
        "--maskrcnn-box-batch",
        type=int,
        default=512,
        help="Mask R-CNN RoIs sampled per image for the box/mask losses (torchvision: 512)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = common.setup(args.threads, args.device)
    names = path_names(args)
    data: dict[str, Any] = {
        "machine": common.machine_info(args.threads, device),
        "settings": {
            "preset": args.preset,
            "size": list(args.size),
            "batch": args.batch,
            "instances_per_image": args.instances,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "attempts": args.attempts,
            "max_spread": args.max_spread,
            "precision": args.precision,
            "timed": "zero_grad + forward + losses + backward + SGD step, paths interleaved",
            "memory": "peak RSS (VmHWM, reset) over each path's warm-up step, in one process",
            "maskrcnn_box_batch_size_per_image": args.maskrcnn_box_batch,
        },
    }
    h, w = args.size
    print(f"train step: batch {args.batch} at {h}x{w}, {args.threads} threads", flush=True)
    paths, entries = {}, {}
    for label, model, precision in names:
        paths[label] = TrainPath(model, args, precision)
        entries[label] = {"config": paths[label].config, "precision": precision}
        entries[label].update(paths[label].warm_up(args.warmup))
        entries[label]["trainable_parameters"] = sum(p.numel() for p in paths[label].params)
    try:
        times, attempts = steady.measure(
            {label: p.timed_step for label, p in paths.items()},
            args.repeats,
            max_spread=args.max_spread,
            attempts=args.attempts,
        )
    except steady.NoisyMeasurement as exc:
        print(f"train_step.py: refused: {exc}", file=sys.stderr)
        return 3
    data["settings"]["attempts_used"] = attempts
    for label, path in paths.items():
        entries[label]["step"] = steady.summary(times[label])
        entries[label]["median_s"] = entries[label]["step"]["median_s"]
        entries[label]["loss_last"] = path.loss_last
        print(steady.line(label, times[label]), flush=True)
    data["models"] = entries
    data["ratios"] = ratios(entries, args)
    data["machine"]["load_average_end"] = list(os.getloadavg())
    common.write_json(args.json, data)
    for key, value in data["ratios"].items():
        if isinstance(value, dict):
            print(
                f"  {key}: " + " / ".join(f"{value[k]:.3f}" for k in ("min_s", "median_s", "max_s"))
            )
        else:
            print(f"  {key}: {value:.3f}" if value is not None else f"  {key}: n/a")
    return 0


if __name__ == "__main__":
    sys.exit(main())
