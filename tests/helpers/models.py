"""Tiny models with chosen random weights, built in a second: they detect many objects with
distinct scores, so two paths (PyTorch and ONNX, one process and two) can be compared
detection by detection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from blendmask.checkpoint_io import save_model_file
from blendmask.data.shapes import render_shapes_image
from blendmask.factory import build
from blendmask.predictor import Predictor
from blendmask.presets import get_preset


def spread_model(seed: int = 0):
    """The tiny preset at random init, (cfg, model, post-processor) in eval mode, its last head
    convs with larger weights so that scores, boxes and attentions spread out (at the reference
    init every score is ~0.01 and comparing detections would be decided by ties)."""
    torch.manual_seed(seed)
    cfg = get_preset("tiny")
    model, _, post = build(cfg, load_pretrained=False)
    with torch.no_grad():
        for conv in (model.head.cls_logits, model.head.ctrness, model.head.bbox_pred):
            conv.weight.normal_(0.0, 0.3)
        # ltrb of at least ~1 stride: degenerate (zero-height) boxes make pasting ill-posed
        model.head.bbox_pred.bias.fill_(1.0)
        model.top_layer.weight.normal_(0.0, 0.3)
        # Where the random bases are all 0 (dead ReLUs) every mask probability would be
        # exactly 0.5 and pasting would threshold noise; a bias per base avoids that.
        model.basis_module.tower[-1].bias.normal_(0.0, 1.0)
    return cfg, model.eval(), post.eval()


def boxy_model(seed: int = 0):
    """`spread_model` with boxes of a few strides: its ltrb can reach ~0 after the ReLU, and
    the IoU of a 0.01 px thin box moves by 0.5% with float rounding (box IoU >= 0.999 is the
    acceptance figure)."""
    cfg, model, post = spread_model(seed)
    with torch.no_grad():
        model.head.bbox_pred.bias.fill_(4.0)
    return cfg, model, post


def shapes_images(count: int = 10, seed: int = 0) -> list[np.ndarray]:
    """Synthetic shapes photos (uint8 RGB) of varied sizes and aspect ratios: each is resized
    to the tiny test size, and some are padded."""
    rng = np.random.default_rng(seed)
    images = []
    for k in range(count):
        pixels, _ = render_shapes_image(rng, 96 + 16 * (k % 4))
        # Crop some to landscape / portrait so the resize and the padding vary.
        if k % 3 == 1:
            pixels = pixels[: pixels.shape[0] * 2 // 3]
        elif k % 3 == 2:
            pixels = pixels[:, : pixels.shape[1] * 3 // 5]
        images.append(np.ascontiguousarray(pixels))
    return images


def write_dense_model(path: Path, category_ids: list[int], names: list[str]) -> None:
    """A seeded random tiny model whose detections overlap some objects.

    A plain random model scores every location near the prior (0.01, under the 0.05 candidate
    threshold) and gives no detection, so the comparison would hold trivially: the class bias
    0 makes every location a candidate (the NMS keeps up to --max-det), the box bias a few
    strides around each location, so some boxes match objects (AP > 0)."""
    cfg = get_preset("tiny")
    cfg.data.category_ids, cfg.data.category_names = category_ids, names
    cfg.model.fcos.num_classes = len(category_ids)
    torch.manual_seed(0)
    predictor = Predictor.from_config(cfg, device="cpu")
    torch.nn.init.constant_(predictor.model.head.cls_logits.bias, 0.0)
    torch.nn.init.constant_(predictor.model.head.bbox_pred.bias, 1.5)
    save_model_file(path, predictor.cfg, predictor.model)
