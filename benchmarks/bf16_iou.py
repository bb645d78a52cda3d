"""Mask agreement between fp32 and bf16 inference on the synthetic shapes val set.

bf16 inference (`torch.autocast`: AVX512-BF16 / AMX on CPU, tensor cores on GPU) roughly
doubles the dense-matmul rate; this checks what it costs in masks. The post-processing and the
blender run in fp32 either way (the post-processor casts its inputs), so the difference comes
from the network's outputs: bases, attentions, scores and boxes.

Two figures, mean over detections:
- `mean_mask_iou` (end to end): for each fp32 detection with score >= `--min-score`, the best
  mask IoU with any bf16 detection of the same class (0 when there is none); the reverse
  direction and their mean are recorded too. A detection that bf16 drops or replaces (the
  post-processor's threshold, top-k or NMS decide differently) counts against bf16 here.
- `mean_mask_iou_paired`: the fp32 detections kept fixed (same boxes, same locations), their
  masks blended once from the fp32 and once from the bf16 bases and attentions: the effect of
  bf16 on the masks alone.

Images are the val split of `blendmask shapes --seed S` (rendered in memory, identical to the
files that command writes), or the PNGs of `--images DIR`. With `--weights model.pt` the
trained model is used (what the figure means); without, random weights of `--preset` with a
score threshold of 0 and `--max-dets` detections per image: the masks are then meaningless and
only the numerics are compared.

    python benchmarks/bf16_iou.py --weights runs/demo/model.pt --json results/bf16_iou.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def shapes_val_images(num: int, seed: int, image_size: int) -> list[Tensor]:
    """The first `num` images of the shapes val split (Tensor[3, S, S] in [0, 1])."""
    from blendmask.data.shapes import render_shapes_image

    images = []
    for i in range(num):
        # write_shapes_dataset seeds image i of split index 1 (val) with [seed, 1, i].
        pixels, _ = render_shapes_image(np.random.default_rng([seed, 1, i]), image_size)
        images.append(torch.from_numpy(pixels).permute(2, 0, 1).float() / 255.0)
    return images


def folder_images(folder: Path, num: int) -> list[Tensor]:
    from blendmask.io import image_to_tensor, load_image

    if not folder.is_dir():
        raise FileNotFoundError(f"--images: {folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise FileNotFoundError(f"--images: no .png / .jpg files in {folder}")
    return [image_to_tensor(load_image(p)) for p in files[:num]]


def mask_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU matrix of bool masks a (Tensor[A, H, W]) and b (Tensor[B, H, W]) -> Tensor[A, B]."""
    fa = a.flatten(1).float()
    fb = b.flatten(1).float()
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    # Two empty masks agree perfectly.
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def matched_iou(a_masks: Tensor, a_labels: Tensor, b_masks: Tensor, b_labels: Tensor) -> Tensor:
    """For every mask of set a, the best IoU with a mask of set b of the same class (0 if none)."""
    if a_masks.shape[0] == 0:
        return torch.zeros((0,))
    if b_masks.shape[0] == 0:
        return torch.zeros((a_masks.shape[0],))
    iou = mask_iou(a_masks, b_masks)
    iou = torch.where(a_labels[:, None] == b_labels[None, :], iou, torch.zeros_like(iou))
    return iou.max(dim=1).values


def paired_iou(model, post, batch: Tensor, sizes, device: torch.device) -> Tensor:
    """Per fp32 detection: IoU of its mask blended from fp32 vs bf16 network outputs."""
    from blendmask.structures.paste import paste_masks

    with torch.inference_mode():
        out32 = model(batch, sizes)
        with common.autocast(device, "bf16"):
            out16 = model(batch, sizes)
    dets = post.detect(out32, sizes)[0]
    if dets["boxes"].shape[0] == 0:
        return torch.zeros((0,))
    h, w = sizes[0]
    boxes = dets["boxes"]
    p32 = post.blend(out32.bases, [boxes], [dets["attentions"]])[0]
    p16 = post.blend(
        out16.bases.float(), [boxes], [out16.attentions[0, dets["point_inds"]].float()]
    )[0]
    clipped = boxes.clone()
    clipped[:, 0::2] = clipped[:, 0::2].clamp(0, w)
    clipped[:, 1::2] = clipped[:, 1::2].clamp(0, h)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    m32 = paste_masks(p32[keep], clipped[keep], (h, w), threshold=post.mask_threshold)
    m16 = paste_masks(p16[keep], clipped[keep], (h, w), threshold=post.mask_threshold)
    return torch.diagonal(mask_iou(m32, m16)) if keep.any() else torch.zeros((0,))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--weights", type=Path, default=None, help="a trained model file (model.pt)")
    p.add_argument("--preset", default="shapes_lite0", help="random weights when no --weights")
    p.add_argument("--images", type=Path, default=None, help="a folder of images to use instead")
    p.add_argument("--num-images", type=int, default=50)
    p.add_argument("--seed", type=int, default=0, help="shapes dataset seed")
    p.add_argument("--image-size", type=int, default=256, help="shapes image size")
    p.add_argument("--min-score", type=float, default=None, help="default 0.3 trained, 0 random")
    p.add_argument("--max-dets", type=int, default=20, help="detections per image, random weights")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument(
        "--optimize",
        action="store_true",
        help="run both precisions on optimize_for_inference(model) (BN folded, channels-last), "
        "as the Predictor does",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = common.setup(args.threads, args.device)
    from blendmask.data.transforms import resize_image

    if args.weights is not None:
        from blendmask.checkpoint_io import load_model_file

        cfg, model, _, post = load_model_file(args.weights, device)
        min_score = 0.3 if args.min_score is None else args.min_score
        source = str(args.weights)
    else:
        from blendmask.factory import build
        from blendmask.presets import get_preset

        cfg = get_preset(args.preset)
        cfg.model.fcos.inference_th_test = 0.0
        cfg.model.fcos.post_nms_topk_test = args.max_dets
        torch.manual_seed(0)
        model, _, post = build(cfg, load_pretrained=False)
        model.to(device).eval()
        post.to(device).eval()
        min_score = 0.0 if args.min_score is None else args.min_score
        source = f"random weights, preset {args.preset}"
    if args.optimize:
        from blendmask.modeling.inference import optimize_for_inference

        model = optimize_for_inference(model)
    if args.images is not None:
        images = folder_images(args.images, args.num_images)
    else:
        images = shapes_val_images(args.num_images, args.seed, args.image_size)

    forward_ious, backward_ious, paired = [], [], []
    counts = {"fp32": 0, "bf16": 0}
    seconds = {"fp32": 0.0, "bf16": 0.0}
    for image in images:
        orig = [(int(image.shape[1]), int(image.shape[2]))]
        resized = resize_image(image, cfg.data.min_size_test, cfg.data.max_size_test)
        batch, sizes = common.pad_to(resized.to(device))
        if args.optimize:
            batch = batch.contiguous(memory_format=torch.channels_last)
        dets = {}
        for precision in ("fp32", "bf16"):
            start = time.perf_counter()
            with common.inference(device, precision):
                det = post(model(batch, sizes), sizes, orig)[0].to("cpu")
            seconds[precision] += time.perf_counter() - start
            dets[precision] = det
            counts[precision] += int((det.scores >= min_score).sum())
        # Detections with score >= min_score on one side are looked for among all the
        # detections of the other side: a score that merely crosses min_score is no mismatch.
        for src, dst, out in (("fp32", "bf16", forward_ious), ("bf16", "fp32", backward_ious)):
            keep = dets[src].scores >= min_score
            out.append(
                matched_iou(
                    dets[src].masks[keep], dets[src].labels[keep], dets[dst].masks, dets[dst].labels
                )
            )
        paired.append(paired_iou(model, post, batch, sizes, device).cpu())

    def mean(values: list[Tensor]) -> float | None:
        flat = torch.cat(values) if values else torch.zeros((0,))
        return float(flat.mean()) if flat.numel() else None

    fwd, bwd = mean(forward_ious), mean(backward_ious)
    data: dict[str, Any] = {
        "machine": common.machine_info(args.threads, device),
        "settings": {
            "model": source,
            "random_weights": args.weights is None,
            "images": str(args.images) if args.images else f"shapes val, seed {args.seed}",
            "num_images": len(images),
            "image_size": args.image_size,
            "min_score": min_score,
            "optimize_for_inference": args.optimize,
        },
        "detections_above_min_score": counts,
        "mean_mask_iou": fwd,
        "mean_mask_iou_bf16_to_fp32": bwd,
        "mean_mask_iou_symmetric": (fwd + bwd) / 2 if fwd is not None and bwd is not None else None,
        "mean_mask_iou_paired": mean(paired),
        "seconds_per_image": {k: v / max(len(images), 1) for k, v in seconds.items()},
    }
    common.write_json(args.json, data)
    print(
        f"bf16 vs fp32 on {len(images)} images ({source}): mean mask IoU {fwd}, "
        f"paired {data['mean_mask_iou_paired']}, detections >= min score {counts}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
