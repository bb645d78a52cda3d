"""`blendmask predict` for panoptic models: per image the panoptic PNG (COCO's encoding, id =
R + 256 G + 256^2 B), its `segments_info` in one COCO panoptic results json, and an overlay
(stuff tinted with its class colour, things filled and outlined in their own colours, labels).

Writes OUT/panoptic/NAME.png, OUT/panoptic.json ({"annotations": [{"file_name", "source",
"real_path", "segments_info"}], "categories": [...]}: scoreable with `eval`'s PQ) and
OUT/overlays/NAME.png (NAME: `data.sources.output_names`, kept for the images of a resumed
run). An image that cannot be read is skipped and listed in OUT/errors.jsonl (`strict`: stop).
A rerun into the same OUT resumes: images already in panoptic.json (by resolved path) are
skipped and their annotations kept; other settings (model file content, threshold, ...) are
refused (OUT/predict_settings.json).
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

from blendmask.atomic import atomic_write, refuse_link, remove_stale_temps
from blendmask.checkpoint_io import read_model_file
from blendmask.config.flags import make_request
from blendmask.data.panoptic_format import id_to_rgb
from blendmask.data.sources import expand_sources, output_names
from blendmask.evaluation.evaluate_panoptic import category_id_tables, panoptic_to_coco
from blendmask.prediction.predict_settings import (
    SETTINGS,
    check_settings,
    run_settings,
    write_settings,
)
from blendmask.prediction.predict_stream import real_key
from blendmask.prediction.request import PredictRequest
from blendmask.predictor import Predictor, load_input_image
from blendmask.runtime.output_lock import OutputLock
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


def predict_panoptic_images(request: PredictRequest | None = None, **kwargs: Any) -> dict[str, Any]:
    """`blendmask predict --weights PANOPTIC_MODEL SOURCE... --out DIR` (module docstring): runs
    `request`, or the `PredictRequest` of the keyword arguments (as `predict_images`).

    `score_threshold`, `nms_iou`, `max_detections`, `classes` are the `Predictor` knobs of the
    thing instances (stuff is the semantic branch's); `batch_size` images go through the
    network at once. Resumes like instance predict: images already in OUT/panoptic.json are
    skipped (their annotations kept), other settings over the same OUT are refused;
    `resume=False` starts over. Returns a summary: images, predicted, resumed, skipped,
    segments, and the paths written. ValueError when no image could be read at all (as
    instance `predict`), or for a flag of instance models only (`coco`, `save_masks`,
    `gt_json`, `onnx`, `workers`)."""
    r = make_request(PredictRequest, request, kwargs)
    _check_panoptic_request(r)
    weights, batch_size, overlays, strict = r.weights, r.batch_size, r.overlays, r.strict
    out = Path(r.out)
    sources = expand_sources(r.inputs, r.glob, exclude=out)
    if sources.videos:
        raise ValueError(
            f"predict: a panoptic model takes images, not videos ({sources.videos[0]})"
        )
    if not sources.images:
        raise ValueError(f"predict: the sources {', '.join(map(str, r.inputs))} name no image")
    knobs, threshold, overrides = r.knobs(), r.score_threshold, r.overrides
    # The model is checked before OUT is made: a refused one leaves nothing behind.
    predictor = Predictor.from_checkpoint(
        weights, r.device, batch_size, overrides=overrides, score_threshold=threshold, **knobs
    )
    settings = run_settings(weights, None, threshold, overrides, overlays=overlays, **knobs)
    settings["panoptic"] = True
    with OutputLock(out):
        annotations = _resume(out, settings, r.resume)
        done, resumed = {_annotation_key(a) for a in annotations}, len(annotations)
        names = _names(sources.images, annotations)
        pending = [k for k, path in enumerate(sources.images) if real_key(path) not in done]
        errors: list[dict[str, str]] = []
        try:
            for start in range(0, len(pending), batch_size):
                chunk = [(sources.images[k], names[k]) for k in pending[start : start + batch_size]]
                images = _read_images(chunk, predictor.max_image_pixels, errors, strict)
                results = predictor.predict_panoptic([image for _, _, image in images])
                for (path, name, image), result in zip(images, results):
                    annotations.append(
                        _write_one(predictor, image, result, path, name, out, overlays)
                    )
        finally:  # also on --strict's error: what was predicted stays listed
            _write_results(out, annotations, predictor.cfg, errors)
    if errors and len(annotations) == resumed:  # no image could be read (`strict`: the first)
        raise ValueError(
            f"none of the {len(errors)} image(s) could be read (listed in "
            f"{out / 'errors.jsonl'}); the first: {errors[0]['error']}"
        )
    return {
        "images": len(sources.images),
        "predicted": len(pending) - len(errors),
        "resumed": len(sources.images) - len(pending),
        "skipped": len(errors),
        "segments": sum(len(a["segments_info"]) for a in annotations[resumed:]),
        "results": str(out / "panoptic.json"),
        "overlays": str(out / "overlays") if overlays else None,
        "errors": str(out / "errors.jsonl") if errors else None,
    }


def _check_panoptic_request(r: PredictRequest) -> None:
    """ValueError for the flags of instance models."""
    flags = (("--coco", r.coco), ("--save-masks", r.save_masks), ("--json", r.gt_json))
    unused = [f for f, v in (*flags, ("--onnx", r.onnx)) if v]
    if unused:
        raise ValueError(f"predict: {', '.join(unused)} are for instance models, not panoptic")
    if r.workers:
        # The panoptic loop reads its images in the main process: no DataLoader to give them.
        raise ValueError(
            f"predict: --num-workers {r.workers}: a panoptic model decodes its images in "
            "the main process (leave the flag out or give 0)"
        )
    if r.weights is None:
        raise ValueError("predict: a panoptic model needs weights (its model.pt)")


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


def _resume(out: Path, settings: dict[str, Any], resume: bool) -> list[dict[str, Any]]:
    """The annotations already in OUT/panoptic.json (none with `resume=False`, or when there
    is no such file), after checking that they were made with `settings`; records
    `settings`."""
    for name in ("panoptic", "overlays", "panoptic.json", "errors.jsonl", SETTINGS):
        refuse_link(out / name)  # ours: a link there was planted
    for folder in (out, out / "panoptic", out / "overlays"):
        remove_stale_temps(folder)
    results = out / "panoptic.json"
    annotations: list[dict[str, Any]] = []
    if resume and results.is_file():
        check_settings(out, settings)
        try:
            annotations = list(json.loads(results.read_text())["annotations"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"{results}: not a panoptic results file ({exc}); use --no-resume to start "
                "over, or another --out"
            ) from None
    write_settings(out, settings)
    return annotations


def _annotation_key(annotation: dict[str, Any]) -> str:
    """Which image an annotation is of: its resolved source path (older files: the source
    as typed, resolved from the current folder)."""
    return str(annotation.get("real_path") or real_key(annotation["source"]))


def _names(images: list[Path], annotations: list[dict[str, Any]]) -> list[str]:
    """The PNG name of each image: the one it had in `annotations` (a resumed run), else its
    `output_names` name, made unique (index in front) against the names already used."""
    used = {_annotation_key(a): a["file_name"] for a in annotations}
    taken = {name.casefold() for name in used.values()}
    names = []
    for k, (path, name) in enumerate(zip(images, output_names(images, ".png"))):
        if real_key(path) in used:
            names.append(used[real_key(path)])
            continue
        while name.casefold() in taken:
            name = f"{k:04d}_{name}"
        taken.add(name.casefold())
        names.append(name)
    return names


def _write_one(
    predictor: Predictor,
    image: Tensor,
    result: Any,
    path: Path,
    name: str,
    out: Path,
    overlays: bool,
) -> dict[str, Any]:
    """Write one image's panoptic PNG (and overlay) from its `result`; its annotation."""
    cfg = predictor.cfg
    thing_ids, stuff_ids = category_id_tables(cfg)
    ids, _, info = panoptic_to_coco(result, thing_ids, stuff_ids)
    _write_png(out / "panoptic" / name, ids)
    if overlays:
        picture = draw_panoptic(
            image, result, thing_names=cfg.data.category_names, stuff_names=cfg.data.stuff_names
        )
        save_png(picture, out / "overlays" / name)
    return {
        "file_name": name,
        "source": str(path),
        "real_path": real_key(path),
        "segments_info": info,
    }


def _write_png(path: Path, ids: np.ndarray) -> None:
    picture = Image.fromarray(id_to_rgb(ids), mode="RGB")
    atomic_write(path, lambda f: picture.save(f, format="PNG"))


def _write_results(
    out: Path, annotations: list[dict[str, Any]], cfg: Any, errors: list[dict[str, str]]
) -> None:
    thing_ids, stuff_ids = category_id_tables(cfg)
    categories = [
        {"id": int(c), "name": n, "isthing": 1}
        for c, n in zip(thing_ids, cfg.data.category_names or [str(c) for c in thing_ids])
    ] + [
        {"id": int(c), "name": n, "isthing": 0}
        for c, n in zip(stuff_ids, cfg.data.stuff_names or [str(c) for c in stuff_ids])
    ]
    text = json.dumps({"annotations": annotations, "categories": categories}).encode()
    atomic_write(out / "panoptic.json", lambda f: f.write(text))
    (out / "errors.jsonl").unlink(missing_ok=True)  # the last run's: tried again
    if errors:
        lines = "".join(json.dumps(e) + "\n" for e in errors).encode()
        atomic_write(out / "errors.jsonl", lambda f: f.write(lines))


def is_panoptic_model_file(weights: str | Path) -> bool:
    """Whether a model.pt holds a panoptic model (its stored config has the semantic branch)."""
    cfg, _ = read_model_file(weights)
    return bool(cfg.model.panoptic.enabled)
