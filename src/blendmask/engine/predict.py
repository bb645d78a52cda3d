"""`blendmask predict` as a function: COCO results and overlays for image files or folders.

Nothing is lost: an unreadable image is skipped and recorded (errors.jsonl), the others'
results are written; each file appears whole (atomic writes); a second process writing the same
folder is refused (`OutputLock`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from blendmask.atomic import atomic_write, remove_stale_temps
from blendmask.engine.logging import write_json
from blendmask.engine.output_lock import OutputLock
from blendmask.predictor import DEFAULT_SCORE_THRESHOLD, Predictor, load_input_image
from blendmask.structures import resolve_classes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# One json line per image that could not be read: {"path", "image_id", "error"}.
ERRORS_FILE = "errors.jsonl"


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named by `inputs`: files as given, folders expanded (sorted, not recursive)."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(
                    f"{p}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})"
                )
            paths.extend(found)
        elif p.is_file():
            paths.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such image or folder")
    if not paths:
        raise ValueError("predict: no input images given")
    return paths


def _overlay_names(paths: list[Path]) -> list[str]:
    """One PNG name per image: its stem, made unique with the index when stems repeat."""
    stems = [p.stem for p in paths]
    counts = Counter(stems)  # not stems.count per image: quadratic in a 100k-image folder
    repeated = {s for s, n in counts.items() if n > 1}
    return [f"{i:04d}_{s}.png" if s in repeated else f"{s}.png" for i, s in enumerate(stems)]


def predict_images(
    *,
    weights: str | Path | None,
    inputs: Sequence[str | Path],
    out: str | Path,
    device: str = "auto",
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    batch_size: int = 1,
    overlays: bool = True,
    strict: bool = False,
    predictor: Any = None,
    nms_iou: float | None = None,
    max_detections: int | None = None,
    classes: Sequence[int | str] | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """`blendmask predict --weights W INPUT... --out DIR`.

    Writes DIR/results.json (COCO results: image_id = position in the input list, file_name,
    original category_id, bbox xywh, score, segmentation as compressed RLE) with the detections
    scoring >= `score_threshold`, and DIR/overlays/<name>.png drawing exactly those. Returns
    a summary (images, detections, skipped, paths).

    An image that cannot be read (corrupt, not an image, over `MAX_IMAGE_PIXELS`) is skipped
    and recorded in DIR/errors.jsonl, one {"path", "image_id", "error"} line each (the file
    is removed when nothing failed); with `strict` it ends the run with its error instead.
    ValueError when no image at all could be read, or when another process writes DIR.
    Memory is bounded by the largest image, not by detections x image (masks are encoded and
    drawn one detection at a time).

    `predictor`: a ready predictor used instead of loading `weights`; anything with `cfg`,
    `max_image_pixels` and `predict_tensors` (`predict --onnx`: `SegmenterPredictor`). It
    takes `score_threshold` and `classes` (applied here), not `nms_iou`, `max_detections` or
    `overrides` (ValueError), which are the knobs of `Predictor.from_checkpoint`.
    """
    knobs = {"nms_iou": nms_iou, "max_detections": max_detections, "classes": classes}
    paths = collect_images(inputs)
    out = Path(out)
    with OutputLock(out):
        # Temp files of an earlier run that was killed mid-write (ours are unique per process).
        for folder in (out, out / "overlays"):
            remove_stale_temps(folder)
        if predictor is None:
            predictor = _load_predictor(
                weights, device, batch_size, overrides, score_threshold=score_threshold, **knobs
            )
        elif nms_iou is not None or max_detections is not None or overrides:
            raise ValueError(
                "--iou, --max-det, --set: not with a ready predictor (--onnx: the exported "
                "graph fixes its post-processing; set it at export, `blendmask export --set`)"
            )
        names = predictor.cfg.data.category_names
        labels = None if classes is None else resolve_classes(classes, names)
        results, errors = _predict_all(
            predictor, paths, out, (score_threshold, labels), batch_size, overlays, strict
        )
        write_json(out / "results.json", results)
        errors_path = out / ERRORS_FILE
        if errors:
            text = "".join(json.dumps(e) + "\n" for e in errors).encode()
            atomic_write(errors_path, lambda f: f.write(text))
        else:
            # A previous run's list would describe images this run read fine.
            errors_path.unlink(missing_ok=True)
    if errors and len(errors) == len(paths):
        raise ValueError(
            f"none of the {len(paths)} image(s) could be read (listed in {errors_path}); "
            f"the first: {errors[0]['error']}"
        )
    return {
        "images": len(paths),
        "detections": len(results),
        "skipped": len(errors),
        "results": str(out / "results.json"),
        "errors": str(errors_path) if errors else None,
        "overlays": str(out / "overlays") if overlays else None,
    }


def _load_predictor(
    weights: str | Path | None,
    device: str,
    batch_size: int,
    overrides: Sequence[str],
    **knobs: Any,
) -> Predictor:
    """`Predictor.from_checkpoint` with the knobs of `predict`."""
    if weights is None:
        raise ValueError("predict: needs --weights (or a ready predictor)")
    return Predictor.from_checkpoint(
        weights, device=device, batch_size=batch_size, overrides=overrides, **knobs
    )


def _predict_all(
    predictor: Predictor,
    paths: list[Path],
    out: Path,
    keep: tuple[float, list[int] | None],
    batch_size: int,
    overlays: bool,
    strict: bool,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(COCO results, error records) of every image, writing the overlays on the way.

    `keep`: (score threshold, 0-based labels or None): the detections written. A `Predictor`
    has applied both already; a ready predictor (`--onnx`) may not have."""
    score_threshold, labels = keep
    wanted = None if labels is None else torch.tensor(labels, dtype=torch.int64)
    from blendmask.evaluation.coco import detections_to_coco_results
    from blendmask.visualization import draw_detections, save_png

    cfg = predictor.cfg
    num_classes = cfg.model.fcos.num_classes
    category_ids = list(cfg.data.category_ids) or list(range(1, num_classes + 1))
    names = _overlay_names(paths)
    results: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for start in range(0, len(paths), batch_size):
        loaded = []
        for index in range(start, min(start + batch_size, len(paths))):
            image = _load(predictor, paths[index], index, strict, errors)
            if image is not None:
                loaded.append((index, image))
        if not loaded:
            continue
        detections = predictor.predict_tensors([image for _, image in loaded])
        for (index, image), det in zip(loaded, detections):
            mask = det.scores >= score_threshold
            if wanted is not None:
                mask &= torch.isin(det.labels, wanted)
            det = det.select(mask)
            for r in detections_to_coco_results([det], [index], category_ids):
                results.append({**r, "file_name": str(paths[index])})
            if overlays:
                # In place: the decoded image is not needed after its overlay.
                overlay = draw_detections(
                    image, det, class_names=list(cfg.data.category_names), inplace=True
                )
                save_png(overlay, out / "overlays" / names[index])
    return results, errors


def _load(
    predictor: Predictor, path: Path, index: int, strict: bool, errors: list[dict[str, Any]]
) -> Tensor | None:
    """The decoded image, or None after recording why it cannot be read (`strict`: raise)."""
    try:
        return load_input_image(path, predictor.max_image_pixels)
    except (ValueError, OSError) as exc:  # corrupt, not an image, too large, vanished
        if strict:
            raise
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        errors.append({"path": str(path), "image_id": index, "error": message})
        return None
