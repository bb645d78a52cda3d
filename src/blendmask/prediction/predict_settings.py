"""OUT/predict_settings.json: the settings a `blendmask predict` output folder was made with,
which a resumed run must repeat (instance and panoptic predict alike).

The model is named by its path and identified by the SHA-256 of its file's content: a model
file replaced at the same path is another model and is refused on resume, while the same file
typed as another path (or moved) is accepted. Settings files of older versions have no hash;
their model is compared by path.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from blendmask.atomic import atomic_write
from blendmask.io import file_digest
from blendmask.prediction.predict_outputs import MASK_MODES
from blendmask.structures.inference import InferenceModel

SETTINGS = "predict_settings.json"
_HASH = "model_sha256"


def run_settings(
    weights: str | Path | None,
    predictor: InferenceModel | None,
    score_threshold: float | None,
    overrides: Sequence[str],
    **more: Any,
) -> dict[str, Any]:
    """The settings of a run: the model (path and content hash), the score threshold, the
    `--set` overrides and `more` (the other knobs)."""
    model = model_name(weights, predictor)
    return {
        "model": model,
        _HASH: file_digest(model) if Path(model).is_file() else None,
        "score_threshold": score_threshold,
        **more,
        "overrides": list(overrides),
    }


def model_name(weights: str | Path | None, predictor: InferenceModel | None) -> str:
    if weights is not None:
        return str(weights)
    segmenter = getattr(predictor, "segmenter", None)  # `predict --onnx`
    return str(getattr(segmenter, "path", type(predictor).__name__))


def check_settings(out: Path, settings: dict[str, Any]) -> None:
    """ValueError when OUT/predict_settings.json holds other `settings` (naming the keys)."""
    path = out / SETTINGS
    if not path.is_file():
        return
    before = json.loads(path.read_text())
    changed = changed_settings(before, settings)
    if changed:
        raise ValueError(
            f"{out} holds predictions made with other settings ("
            + ", ".join(
                f"{k}: {_short(k, before.get(k))!r} -> {_short(k, settings[k])!r}" for k in changed
            )
            + "); use --no-resume to start it over, or another --out"
        )


def write_settings(out: Path, settings: dict[str, Any]) -> None:
    text = json.dumps(settings, indent=1).encode()
    atomic_write(out / SETTINGS, lambda f: f.write(text))


def changed_settings(before: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """The keys of `settings` whose value differs from `before`'s; the model by its content
    hash where both have one, else by its path (see the module docstring)."""
    by_hash = before.get(_HASH) is not None and settings.get(_HASH) is not None
    skip = {"model"} if by_hash else {_HASH}
    return [k for k in settings if k not in skip and before.get(k) != settings[k]]


def _short(key: str, value: Any) -> Any:
    """A setting as the refusal shows it: a content hash by its first 12 digits."""
    return value[:12] + "..." if key == _HASH and isinstance(value, str) else value


def check_arguments(
    predictor: InferenceModel | None,
    save_masks: str | None,
    nms_iou: float | None,
    max_detections: int | None,
    overrides: Sequence[str],
    precision: str = "fp32",
) -> None:
    """The settings `predict_images` refuses before it starts (ValueError, one line)."""
    if predictor is not None and precision != "fp32":
        raise ValueError(f"precision {precision!r}: for a model file (--weights), not --onnx")
    if save_masks is not None and save_masks not in MASK_MODES:
        raise ValueError(
            f"--save-masks: expected one of {', '.join(MASK_MODES)}, got {save_masks!r}"
        )
    if predictor is not None and (nms_iou is not None or max_detections is not None or overrides):
        raise ValueError(
            "--iou, --max-det, --set: not with a ready predictor (--onnx: the exported "
            "graph fixes its post-processing; set it at export, `blendmask export --set`)"
        )
