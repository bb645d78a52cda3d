"""`blendmask predict` as a function: COCO results and overlays for image files or folders."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from blendmask.engine.logging import write_json

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


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
    repeated = {s for s in stems if stems.count(s) > 1}
    return [f"{i:04d}_{s}.png" if s in repeated else f"{s}.png" for i, s in enumerate(stems)]


def predict_images(
    *,
    weights: str | Path,
    inputs: Sequence[str | Path],
    out: str | Path,
    device: str = "auto",
    score_threshold: float = 0.3,
    batch_size: int = 1,
    overlays: bool = True,
) -> dict[str, Any]:
    """`blendmask predict --weights W INPUT... --out DIR`.

    Writes DIR/results.json (COCO results: image_id = position in the input list, file_name,
    original category_id, bbox xywh, score, segmentation as compressed RLE) with the detections
    scoring >= `score_threshold`, and DIR/overlays/<name>.png drawing exactly those. Returns
    a summary (images, detections, paths).
    """
    from blendmask.evaluation.coco import detections_to_coco_results
    from blendmask.predictor import Predictor, to_image_tensor
    from blendmask.structures import Detections
    from blendmask.visualization import draw_detections, save_png

    paths = collect_images(inputs)
    predictor = Predictor.from_checkpoint(weights, device=device, batch_size=batch_size)
    cfg = predictor.cfg
    num_classes = cfg.model.fcos.num_classes
    category_ids = list(cfg.data.category_ids) or list(range(1, num_classes + 1))
    out = Path(out)
    names = _overlay_names(paths)
    results: list[dict[str, Any]] = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        images = [to_image_tensor(p) for p in chunk]
        detections = predictor.predict_tensors(images)
        for offset, (path, image, det) in enumerate(zip(chunk, images, detections)):
            index = start + offset
            keep = det.scores >= score_threshold
            det = Detections(
                boxes=det.boxes[keep],
                scores=det.scores[keep],
                labels=det.labels[keep],
                masks=det.masks[keep],
            )
            for r in detections_to_coco_results([det], [index], category_ids):
                results.append({**r, "file_name": str(path)})
            if overlays:
                overlay = draw_detections(image, det, class_names=list(cfg.data.category_names))
                save_png(overlay, out / "overlays" / names[index])
    write_json(out / "results.json", results)
    return {
        "images": len(paths),
        "detections": len(results),
        "results": str(out / "results.json"),
        "overlays": str(out / "overlays") if overlays else None,
    }
