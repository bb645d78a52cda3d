"""FLOPs of our network by part, this machine's dense matmul peak, and where the time goes.

The distance to the physical limit: a part that runs at a small fraction of the measured
dense-matmul rate (at the same thread count and precision) is memory- or overhead-bound and is
where a speed-up can come from; a part near the peak can only get faster by doing less work.
BlendMask Sec. 3.2 / 4.3 argue the top layer and bottom module are cheap next to the detector;
this script counts them.

- FLOPs (`torch.utils.flop_counter.FlopCounterMode`, 2 per multiply-add, convolutions and
  matmuls only) of one forward at `--size`, split into backbone, FPN, FCOS towers, FCOS
  predictors, top layer, bottom module (bases) and the auxiliary semantic head (`seg_head`,
  only needed for its training loss), plus analytic FLOPs of the blender for N detections
  (RoIAlign, interpolation and grid_sample are not counted by the flop counter).
- The same count for torchvision's FCOS and Mask R-CNN (`--peers`), with Mask R-CNN forced to
  N detections as in latency.py, so the per-detection mask head is visible.
- Dense `torch.mm` GFLOP/s at the same thread count, fp32 and bf16.
- Time of every part (forward hooks, median of `--repeats`), achieved GFLOP/s and the fraction
  of the matmul peak; post-processing split into detect / blend / paste.
- `--profile PATH`: a `torch.profiler` table of one inference (ops by self CPU time).

    python benchmarks/flops.py --json benchmarks/results/flops.json [--size 800 1333] \
        [--threads 2] [--preset R_50_1x] [--detections 100] [--profile results/profile.txt]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

# Part name -> regular expression over module names (without the root's class name). The
# patterns select modules that do not nest inside each other, so sums do not double count.
OUR_PARTS: dict[str, str] = {
    "backbone": r"body",
    "fpn": r"fpn",
    "fcos_towers": r"head\.(share|cls|bbox)_tower\.\d+",
    "fcos_predictors": r"head\.(cls_logits|bbox_pred|ctrness|scales\.\d+)",
    "top_layer": r"top_layer",
    # the whole bottom module; `bottom_module` = this minus the semantic head (see `_derive`)
    "basis_module": r"basis_module",
    "semantic_head": r"basis_module\.seg_head",
}
# What is reported for our network, in forward order.
OUR_PART_NAMES = (
    "backbone",
    "fpn",
    "fcos_towers",
    "fcos_predictors",
    "top_layer",
    "bottom_module",
    "semantic_head",
)
TV_PARTS: dict[str, str] = {
    "backbone": r"backbone\.body",
    "fpn": r"backbone\.fpn",
    "rpn": r"rpn",
    "fcos_head": r"head",
    "box_head": r"roi_heads\.(box_roi_pool|box_head|box_predictor)",
    "mask_head": r"roi_heads\.(mask_roi_pool|mask_head|mask_predictor)",
}


def _derive(per_part: dict[str, float]) -> dict[str, float]:
    """`basis_module` (whole) -> `bottom_module` (bases only) = whole - semantic head."""
    out = dict(per_part)
    if "basis_module" in out:
        out["bottom_module"] = out.pop("basis_module") - out.get("semantic_head", 0)
    return out


def split_counts(counts: dict[str, dict[Any, int]], parts: dict[str, str]) -> dict[str, int]:
    """FlopCounterMode's per-module counts -> FLOPs per part, plus "total" and "other"."""
    total = sum(counts.get("Global", {}).values())
    out = {part: 0 for part in parts}
    for name, per_op in counts.items():
        if name == "Global" or "." not in name:
            continue
        # "BlendMask.head.cls_tower.0" -> "head.cls_tower.0"
        rel = name.split(".", 1)[1]
        for part, pattern in parts.items():
            if re.fullmatch(pattern, rel):
                out[part] += sum(per_op.values())
    out = _derive(out)
    out["other"] = total - sum(out.values())
    out["total"] = total
    return out


def count_flops(fn) -> dict[str, dict[Any, int]]:
    counter = FlopCounterMode(display=False, depth=None)
    with counter:
        fn()
    return counter.get_flop_counts()


def blender_flops(
    num_detections: int, num_bases: int, resolution: int, mask_area: float
) -> dict[str, float]:
    """Analytic FLOPs of the blender for D detections (BlendMask Eq. 1-4 plus pasting):
    RoIAlign with one sample per bin (4 bilinear taps: ~8 FLOPs per output value), bilinear
    interpolation of the attention (~8), softmax over K (~4: shift, exp, sum, divide), blend
    (multiply + add: 2), sigmoid (~4 per pixel) and bilinear pasting (~8 per output pixel of
    each box, `mask_area` pixels per box on average)."""
    per_value = num_detections * num_bases * resolution * resolution
    out = {
        "pool": 8.0 * per_value,
        "interpolate": 8.0 * per_value,
        "softmax": 4.0 * per_value,
        "blend": 2.0 * per_value,
        "sigmoid": 4.0 * num_detections * resolution * resolution,
        "paste": 8.0 * num_detections * mask_area,
    }
    out["total"] = sum(out.values())
    return out


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int) -> dict[str, float]:
    """Dense square `torch.mm` rate (GFLOP/s, 2 n^3 per product), best and median of runs."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn((n, n), generator=g).to(device=device, dtype=dtype)
    b = torch.randn((n, n), generator=g).to(device=device, dtype=dtype)
    stats = common.time_fn(lambda: torch.mm(a, b), device, warmup=2, repeats=repeats)
    flops = 2.0 * n**3
    return {
        "n": n,
        "gflops_best": flops / stats["min_s"] / 1e9,
        "gflops_median": flops / stats["median_s"] / 1e9,
    }


class PartTimer:
    """Wall time per part of a network, from forward pre/post hooks (summed over the calls of
    one forward: the top layer runs once per level)."""

    def __init__(self, model: nn.Module, parts: dict[str, str], device: torch.device):
        self.device = device
        self.current: dict[str, float] = defaultdict(float)
        self.handles = []
        for name, module in model.named_modules():
            for part, pattern in parts.items():
                if name and re.fullmatch(pattern, name):
                    self.handles.append(module.register_forward_pre_hook(self._start))
                    self.handles.append(module.register_forward_hook(self._stop(part)))
        self._starts: list[float] = []

    def _start(self, module: nn.Module, args: Any) -> None:
        common.synchronize(self.device)
        self._starts.append(time.perf_counter())

    def _stop(self, part: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            common.synchronize(self.device)
            self.current[part] += time.perf_counter() - self._starts.pop()

        return hook

    def take(self) -> dict[str, float]:
        out = dict(self.current)
        self.current.clear()
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def time_parts(
    model: nn.Module,
    post: nn.Module,
    batch: Tensor,
    sizes: list[tuple[int, int]],
    *,
    device: torch.device,
    precision: str,
    warmup: int,
    repeats: int,
) -> dict[str, dict[str, float]]:
    """Median time (s) of every part of the network and of the post-processing stages."""
    timer = PartTimer(model, OUR_PARTS, device)
    runs: dict[str, list[float]] = defaultdict(list)
    with common.inference(device, precision):
        for i in range(warmup + repeats):
            t_net, outputs = common.time_once(lambda: model(batch, sizes), device)
            parts = _derive(timer.take())
            t_detect, dets = common.time_once(lambda o=outputs: post.detect(o, sizes), device)
            t_blend, _ = common.time_once(
                lambda o=outputs, d=dets: post.blend(
                    o.bases, [x["boxes"] for x in d], [x["attentions"] for x in d]
                ),
                device,
            )
            t_post, _ = common.time_once(lambda o=outputs: post(o, sizes, sizes), device)
            if i < warmup:
                continue
            for part, seconds in parts.items():
                runs[part].append(seconds)
            runs["network_other"].append(t_net - sum(parts.values()))
            runs["network_total"].append(t_net)
            runs["post_detect"].append(t_detect)
            runs["post_blend"].append(t_blend)
            # forward = detect + blend + rescale/paste
            runs["post_paste_and_rest"].append(t_post - t_detect - t_blend)
            runs["post_total"].append(t_post)
            runs["total"].append(t_net + t_post)
    timer.remove()
    return {part: common.summarize(times) for part, times in runs.items()}


def profile_inference(
    model: nn.Module,
    post: nn.Module,
    batch: Tensor,
    sizes: list[tuple[int, int]],
    *,
    device: torch.device,
    precision: str,
    path: Path,
    rows: int = 40,
) -> list[dict[str, Any]]:
    """torch.profiler of one inference: writes the op table to `path`, returns the top ops."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with common.inference(device, precision):
        model(batch, sizes)  # warm-up outside the profile
        with profile(activities=activities, record_shapes=True) as prof:
            post(model(batch, sizes), sizes, sizes)
            common.synchronize(device)
    averages = prof.key_averages()
    path.parent.mkdir(parents=True, exist_ok=True)
    sort_key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = averages.table(sort_by=sort_key, row_limit=rows)
    by_shape = prof.key_averages(group_by_input_shape=True).table(sort_by=sort_key, row_limit=rows)
    path.write_text(table + "\n\nGrouped by input shape:\n" + by_shape + "\n", encoding="utf-8")
    total = sum(e.self_cpu_time_total for e in averages) or 1.0
    top = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    return [
        {
            "op": e.key,
            "calls": e.count,
            "self_cpu_ms": e.self_cpu_time_total / 1e3,
            "self_cpu_fraction": e.self_cpu_time_total / total,
        }
        for e in top
    ]


def peer_flops(
    names: list[str], image: Tensor, num_detections: int, device: torch.device
) -> dict[str, dict[str, int]]:
    out = {}
    for name in names:
        model = common.build_torchvision(
            name, num_detections=num_detections, size=tuple(image.shape[-2:])
        ).to(device)
        with torch.inference_mode():
            model([image])  # so that the counted run returns N detections like the timed one
            counts = count_flops(lambda m=model: m([image]))
        out[name] = split_counts(counts, TV_PARTS)
        out[name] = {k: v for k, v in out[name].items() if v or k in ("total", "other")}
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--preset", default="R_50_1x")
    p.add_argument("--size", type=int, nargs=2, default=[800, 1333], metavar=("H", "W"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default="fp32", choices=list(common.PRECISIONS))
    p.add_argument("--detections", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--matmul-size", type=int, default=2048)
    p.add_argument(
        "--peers",
        nargs="*",
        default=["fcos_resnet50_fpn", "maskrcnn_resnet50_fpn"],
        choices=["fcos_resnet50_fpn", "maskrcnn_resnet50_fpn"],
    )
    p.add_argument("--box-bias", type=float, default=common.BOX_BIAS)
    p.add_argument("--profile", type=Path, default=None, help="write a profiler table here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = common.setup(args.threads, args.device)
    height, width = args.size
    image = common.random_image(height, width).to(device)
    batch, sizes = common.pad_to(image)
    model, post, cfg = common.build_blendmask(
        args.preset, num_detections=args.detections, box_bias=args.box_bias
    )
    model.to(device)
    post.to(device)
    print(f"flops: {args.preset} at {height}x{width}, {args.threads} threads", flush=True)

    with torch.inference_mode():
        outputs = model(batch, sizes)
        dets = post(outputs, sizes, sizes)
        counts = count_flops(lambda: model(batch, sizes))
    ours = split_counts(counts, OUR_PARTS)
    boxes = dets[0].boxes
    mean_area = float(((boxes[:, 2:] - boxes[:, :2]).prod(dim=1)).mean()) if len(boxes) else 0.0
    blend = blender_flops(
        len(boxes), cfg.model.basis_module.num_bases, cfg.model.blender.bottom_resolution, mean_area
    )
    ours["blender_analytic"] = int(blend["total"])

    peak = {
        "fp32": matmul_peak(device, torch.float32, args.matmul_size, max(args.repeats, 3)),
        "bf16": matmul_peak(device, torch.bfloat16, args.matmul_size, max(args.repeats, 3)),
    }
    print(
        f"  matmul peak: fp32 {peak['fp32']['gflops_best']:.0f}, "
        f"bf16 {peak['bf16']['gflops_best']:.0f} GFLOP/s",
        flush=True,
    )
    times = time_parts(
        model,
        post,
        batch,
        sizes,
        device=device,
        precision=args.precision,
        warmup=args.warmup,
        repeats=args.repeats,
    )
    peak_rate = peak[args.precision]["gflops_best"] * 1e9
    achieved = {}
    for part in OUR_PART_NAMES:
        seconds = times.get(part, {}).get("median_s", 0.0)
        flops = ours[part]
        achieved[part] = {
            "gflops": flops / 1e9,
            "seconds": seconds,
            "gflops_per_s": flops / seconds / 1e9 if seconds > 0 else None,
            "fraction_of_matmul_peak": flops / seconds / peak_rate if seconds > 0 else None,
            "fraction_of_time": seconds / times["total"]["median_s"],
        }
    total_s = times["total"]["median_s"]
    summary = {
        "total_gflops": ours["total"] / 1e9,
        "latency_s": total_s,
        "achieved_gflops_per_s": ours["total"] / total_s / 1e9,
        "fraction_of_matmul_peak": ours["total"] / total_s / peak_rate,
        "lower_bound_s_at_matmul_peak": ours["total"] / peak_rate,
    }
    data: dict[str, Any] = {
        "machine": common.machine_info(args.threads, device),
        "settings": {
            "preset": args.preset,
            "size": [height, width],
            "padded_size": list(batch.shape[-2:]),
            "precision": args.precision,
            "detections": len(boxes),
            "repeats": args.repeats,
            "flop_convention": "2 FLOPs per multiply-add (torch.utils.flop_counter)",
        },
        "flops": ours,
        "blender_flops_analytic": blend,
        "blender_mean_box_area_px": mean_area,
        "matmul_peak": peak,
        "times": times,
        "achieved": achieved,
        "summary": summary,
    }
    if args.peers:
        data["peer_flops"] = peer_flops(args.peers, image, args.detections, device)
    if args.profile is not None:
        data["profile_top_ops"] = profile_inference(
            model, post, batch, sizes, device=device, precision=args.precision, path=args.profile
        )
    common.write_json(args.json, data)
    print(f"  total {summary['total_gflops']:.1f} GFLOPs in {total_s:.3f} s", flush=True)
    for part, a in achieved.items():
        rate = a["gflops_per_s"]
        print(
            f"  {part:16s} {a['gflops']:8.1f} GFLOPs {a['seconds']:7.3f} s "
            f"{rate if rate is not None else float('nan'):7.1f} GFLOP/s "
            f"({a['fraction_of_time']:.0%} of time)"
        )
    for part in ("network_other", "post_detect", "post_blend", "post_paste_and_rest"):
        print(f"  {part:16s} {times[part]['median_s']:7.3f} s")
    print(
        f"  achieved {summary['achieved_gflops_per_s']:.1f} GFLOP/s = "
        f"{summary['fraction_of_matmul_peak']:.0%} of the {args.precision} matmul peak"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
