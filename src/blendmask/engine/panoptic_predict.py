"""`blendmask predict` for panoptic models: per image the panoptic PNG (COCO's encoding, id =
R + 256 G + 256^2 B), its `segments_info` in one COCO panoptic results json, and an overlay
(stuff tinted with its class colour, things filled and outlined in their own colours, labels).

Writes OUT/panoptic/NAME.png, OUT/panoptic.json ({"annotations": [{"file_name", "source",
"segments_info"}], "categories": [...]}: scoreable with `eval`'s PQ) and OUT/overlays/NAME.png.
An image that cannot be read is skipped and listed in OUT/errors.jsonl (`strict`: stop).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from blendmask.atomic import atomic_write
from blendmask.data.panoptic_format import id_to_rgb
from blendmask.data.sources import expand_sources, output_names
from blendmask.engine.output_lock import OutputLock
from blendmask.engine.panoptic import category_id_tables, panoptic_to_coco
from blendmask.predictor import DEFAULT_SCORE_THRESHOLD, Predictor, load_input_image
from blendmask.visualization import (
    class_color,
    draw_labels,
    instance_color,
    label_size,
    mask_contour,
    overlay_sizes,
    save_png,
)

STUFF_ALPHA = 0.45  # how much of a stuff class colour tints its region
THING_ALPHA = 0.35
_STUFF_PALETTE_OFFSET = 7  # stuff colours from another stretch of `class_color`'s hues


def draw_panoptic(
    image: Tensor,
    result: Any,
    *,
    thing_names: Sequence[str],
    stuff_names: Sequence[str],
) -> Tensor:
    """An overlay of a `PanopticSegmentation` on `image` (uint8 Tensor[3, H0, W0]): stuff tinted
    with its class colour and named, things filled and outlined in per-instance colours and
    labelled "name score" ("name" for segments without a score: a ground truth). Returns uint8
    Tensor[3, H0, W0]."""
    segment_map = result.segment_map.cpu()
    canvas = image.to(torch.float32).clone()
    font_size, _, contour_width = overlay_sizes(*image.shape[-2:])
    boxes, texts, colors = [], [], []
    things = sorted(
        (s for s in result.segments if s["isthing"]), key=lambda s: -float(s.get("score", 0.0))
    )
    stuff = [s for s in result.segments if not s["isthing"]]
    for seg in stuff:
        mask = segment_map == seg["id"]
        color = class_color(int(seg["category"]) + _STUFF_PALETTE_OFFSET)
        tint = torch.tensor(color, dtype=torch.float32)[:, None]
        canvas[:, mask] = canvas[:, mask] * (1 - STUFF_ALPHA) + tint * STUFF_ALPHA
        name = _name(stuff_names, int(seg["category"]) - 1, "stuff")
        boxes.append(_stuff_label_box(mask, label_size(name, font_size)[0]))
        texts.append(name)
        colors.append(color)
    for rank, seg in enumerate(things):
        mask = segment_map == seg["id"]
        color = instance_color(rank)
        fill = torch.tensor(color, dtype=torch.float32)[:, None]
        canvas[:, mask] = canvas[:, mask] * (1 - THING_ALPHA) + fill * THING_ALPHA
        canvas[:, mask_contour(mask, contour_width)] = fill
        ys, xs = torch.nonzero(mask, as_tuple=True)
        boxes.append([float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1])
        name = _name(thing_names, int(seg["category"]), "class")
        texts.append(f"{name} {seg['score']:.2f}" if "score" in seg else name)
        colors.append(color)
    out = canvas.round().clamp(0, 255).to(torch.uint8)
    if not boxes:
        return out
    return draw_labels(
        out, torch.tensor(boxes, dtype=torch.float32), texts, colors, font_size=font_size
    )


def _name(names: Sequence[str], index: int, kind: str) -> str:
    return names[index] if 0 <= index < len(names) else f"{kind} {index}"


def _stuff_label_box(mask: Tensor, text_width: int) -> list[float]:
    """A zero-height box whose label (drawn just above it) sits at the middle of the region's
    median row, so that the name lands on the region rather than at its bounding box's corner."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    y = float(ys.median())
    row = xs[ys == int(y)]
    x = float(row.median()) if len(row) else float(xs.median())
    return [x - text_width / 2, y, x + text_width / 2, y]


def predict_panoptic_images(
    *,
    weights: str | Path,
    inputs: Sequence[str | Path],
    out: str | Path,
    device: str = "auto",
    score_threshold: float | None = DEFAULT_SCORE_THRESHOLD,
    nms_iou: float | None = None,
    max_detections: int | None = None,
    classes: Sequence[int | str] | None = None,
    batch_size: int = 1,
    overrides: Sequence[str] = (),
    glob: str | None = None,
    overlays: bool = True,
    strict: bool = False,
) -> dict[str, Any]:
    """`blendmask predict --weights PANOPTIC_MODEL SOURCE... --out DIR` (module docstring).

    `score_threshold`, `nms_iou`, `max_detections`, `classes` are the `Predictor` knobs of the
    thing instances (stuff is the semantic branch's); `batch_size` images go through the
    network at once. Returns a summary: images, predicted, skipped, segments, and the paths
    written. ValueError when no image could be read at all (as instance `predict`)."""
    sources = expand_sources(inputs, glob)
    if sources.videos:
        raise ValueError(
            f"predict: a panoptic model takes images, not videos ({sources.videos[0]})"
        )
    if not sources.images:
        raise ValueError(f"predict: the sources {', '.join(map(str, inputs))} name no image")
    out = Path(out)
    knobs = {"nms_iou": nms_iou, "max_detections": max_detections, "classes": classes}
    with OutputLock(out):
        predictor = Predictor.from_checkpoint(
            weights,
            device,
            batch_size,
            overrides=overrides,
            score_threshold=score_threshold,
            **knobs,
        )
        cfg = predictor.cfg
        thing_ids, stuff_ids = category_id_tables(cfg)
        annotations: list[dict[str, Any]] = []
        errors: list[dict[str, str]] = []
        pairs = list(zip(sources.images, output_names(sources.images, ".png")))
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            images = _read_images(chunk, predictor.max_image_pixels, errors, strict)
            results = predictor.predict_panoptic([image for _, _, image in images])
            for (path, name, image), result in zip(images, results):
                ids, _, info = panoptic_to_coco(result, thing_ids, stuff_ids)
                _write_png(out / "panoptic" / name, ids)
                annotations.append({"file_name": name, "source": str(path), "segments_info": info})
                if overlays:
                    picture = draw_panoptic(
                        image,
                        result,
                        thing_names=cfg.data.category_names,
                        stuff_names=cfg.data.stuff_names,
                    )
                    save_png(picture, out / "overlays" / name)
        _write_results(out, annotations, cfg, thing_ids, stuff_ids, errors)
    if not annotations:  # every image was unreadable (`strict` stopped at the first)
        raise ValueError(
            f"none of the {len(errors)} image(s) could be read (listed in "
            f"{out / 'errors.jsonl'}); the first: {errors[0]['error']}"
        )
    return {
        "images": len(sources.images),
        "predicted": len(annotations),
        "skipped": len(errors),
        "segments": sum(len(a["segments_info"]) for a in annotations),
        "results": str(out / "panoptic.json"),
        "overlays": str(out / "overlays") if overlays else None,
        "errors": str(out / "errors.jsonl") if errors else None,
    }


def _read_images(
    chunk: Sequence[tuple[Path, str]],
    max_pixels: int,
    errors: list[dict[str, str]],
    strict: bool,
) -> list[tuple[Path, str, Tensor]]:
    """(path, output name, uint8 Tensor[3, H0, W0]) of the readable images of `chunk`; each
    unreadable one is appended to `errors` (`strict`: raised)."""
    images = []
    for path, name in chunk:
        try:
            images.append((path, name, load_input_image(path, max_pixels)))
        except (ValueError, OSError) as exc:
            if strict:
                raise
            errors.append({"path": str(path), "error": str(exc)})
    return images


def _write_png(path: Path, ids: np.ndarray) -> None:
    picture = Image.fromarray(id_to_rgb(ids), mode="RGB")
    atomic_write(path, lambda f: picture.save(f, format="PNG"))


def _write_results(
    out: Path,
    annotations: list[dict[str, Any]],
    cfg: Any,
    thing_ids: Sequence[int],
    stuff_ids: Sequence[int],
    errors: list[dict[str, str]],
) -> None:
    categories = [
        {"id": int(c), "name": n, "isthing": 1}
        for c, n in zip(thing_ids, cfg.data.category_names or [str(c) for c in thing_ids])
    ] + [
        {"id": int(c), "name": n, "isthing": 0}
        for c, n in zip(stuff_ids, cfg.data.stuff_names or [str(c) for c in stuff_ids])
    ]
    text = json.dumps({"annotations": annotations, "categories": categories}).encode()
    atomic_write(out / "panoptic.json", lambda f: f.write(text))
    if errors:
        lines = "".join(json.dumps(e) + "\n" for e in errors).encode()
        atomic_write(out / "errors.jsonl", lambda f: f.write(lines))


def is_panoptic_model_file(weights: str | Path) -> bool:
    """Whether a model.pt holds a panoptic model (its stored config has the semantic branch)."""
    from blendmask.checkpoint_io import read_model_file

    cfg, _ = read_model_file(weights)
    return bool(cfg.model.panoptic.enabled)
