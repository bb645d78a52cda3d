"""`blendmask predict` as a function: streaming prediction over images, folders, path lists and
videos, resumable, sharded across torchrun ranks.

- Sources (`data/sources.py::expand_sources`) become image files and video files.
- Images are decoded in DataLoader workers (`ImageFiles`), run in batches through the one
  inference path (`Predictor.predict_tensors`: `preprocess` then `infer`) and written as they
  come: one JSON line per image in OUT/predictions.jsonl (`prediction/predict_stream.py`), its
  overlay in OUT/overlays/, its masks in OUT/masks/ (`--save-masks`). Memory does not grow with
  the number of images.
- Resume (default): images whose record is already in OUT/predictions.jsonl are skipped, so a
  run killed at any point (SIGKILL included) loses at most the batch in flight. Changed
  settings (threshold, classes, model, ...) over the same OUT are refused instead of mixing
  two models' results.
- An unreadable image is skipped and recorded in OUT/errors.jsonl (one {"path", "image_id",
  "error"} line each; they are tried again by the next run); `strict` ends the run instead.
- Videos go through `prediction/video.py`: OUT/videos/<name>.mp4 (annotated, same frame count) and
  OUT/videos/<name>.jsonl (one record per frame).
- Under torchrun the pending images (and videos) are split across ranks (`shard_indices`,
  each exactly once); each rank appends to its own part file and rank 0 merges them.
- `coco`: OUT/results.json in the COCO results format, written from the JSON lines at the end.

A second process writing the same OUT is refused (`OutputLock`, held by rank 0).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from torch.utils.data import DataLoader
from tqdm import tqdm

from blendmask.atomic import refuse_link, remove_stale_temps
from blendmask.config.flags import make_request
from blendmask.data.batching import worker_init
from blendmask.data.sources import Sources, expand_sources, output_names
from blendmask.io import resolve_device
from blendmask.prediction.predict_ids import image_ids
from blendmask.prediction.predict_outputs import OutputSpec
from blendmask.prediction.predict_settings import (
    SETTINGS,
    check_arguments,
    check_settings,
    run_settings,
    write_settings,
)
from blendmask.prediction.predict_stream import (
    ERRORS,
    PREDICTIONS,
    RECORD_VERSION,
    RESULTS,
    ImageFiles,
    JsonLinesWriter,
    done_keys,
    finish_outputs,
    image_output_names,
    part_files,
    part_path,
    real_key,
    sum_counts,
)
from blendmask.prediction.request import DEFAULT_WORKERS, PredictRequest
from blendmask.prediction.video import predict_videos, video_done
from blendmask.predictor import Predictor
from blendmask.runtime import distributed as dist_utils
from blendmask.runtime.distributed import DistInfo
from blendmask.runtime.output_lock import LOCK_NAME, OutputLock
from blendmask.structures import resolve_classes
from blendmask.structures.inference import InferenceModel
from blendmask.visualization import save_png


def predict_images(
    request: PredictRequest | None = None,
    *,
    predictor: InferenceModel | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """`blendmask predict --weights W SOURCE... --out DIR` (see the module docstring): runs
    `request`, or the `PredictRequest` of the keyword arguments (`kwargs` replace fields of a
    given `request`).

    Returns a summary: images, videos, frames, predicted (this run), resumed (skipped as
    done), detections (this run), skipped (unreadable, this run), and the paths written.
    ValueError when no image could be read at all, when another process writes DIR, or when
    DIR holds results of other settings (`resume`; `resume=False` starts DIR over).

    `predictor`: a ready `InferenceModel` used instead of loading `weights` (`predict --onnx`:
    `SegmenterPredictor`); it takes `score_threshold` and `classes` (applied here), not `nms_iou`,
    `max_detections` or `overrides` (ValueError: the knobs of `Predictor.from_checkpoint`).

    `gt_json`: a ground-truth COCO json whose image ids the records take (matched by
    file_name); without it each file gets an id once, kept by resumed runs (`predict_ids`).
    `precision`: `Predictor`'s, for `weights` (recorded in the settings when not fp32).
    """
    r = make_request(PredictRequest, request, kwargs)
    check_arguments(predictor, r.save_masks, r.nms_iou, r.max_detections, r.overrides, r.precision)
    if r.onnx is not None and predictor is None:
        raise ValueError(
            f"predict: onnx={r.onnx}: load it as the predictor "
            "(`export.segmenter_predictor.SegmenterPredictor`), as `blendmask predict --onnx`"
        )
    out = Path(r.out)
    sources = expand_sources(r.inputs, r.glob, exclude=out)
    if not len(sources):
        raise ValueError(f"predict: the sources {', '.join(map(str, r.inputs))} name no file")
    settings = run_settings(r.weights, predictor, r.score_threshold, r.overrides, **r.knobs())
    settings.update(
        overlays=r.overlays,
        save_masks=r.save_masks,
        json=None if r.gt_json is None else str(r.gt_json),
        record_version=RECORD_VERSION,  # records of another layout are not resumed into
    )
    workers = DEFAULT_WORKERS if r.workers is None else r.workers
    with _distributed(r.device) as (info, dev):
        # The model and its knobs are checked before OUT is made or touched: a refused
        # model leaves no folder, .lock or settings behind.
        if predictor is None:
            predictor = _load_predictor(r, dev)
        spec = _output_spec(predictor, out, r)
        with _locked(out, info):
            dist_utils.run_on_main(info, lambda: _prepare(out, settings, r.resume))
            state = _read_state(out, sources, r.resume, r.gt_json)
            dist_utils.barrier()  # every rank has read what is done before any rank writes
            counts = _run_images(
                predictor, spec, sources.images, state, info, r.batch_size, workers, r.strict
            )
            counts["frames"], counts["videos_skipped"] = predict_videos(
                predictor, spec, sources.videos, *state.videos, info, r.batch_size, r.strict
            )
            totals = sum_counts(dist_utils.all_gather_objects(counts))
            dist_utils.barrier()
            dist_utils.run_on_main(info, lambda: finish_outputs(out, r.coco))
    if totals["attempted"] and totals["skipped"] == totals["attempted"] and not state.done:
        if not sources.videos:
            raise ValueError(
                f"none of the {totals['attempted']} image(s) could be read (listed in "
                f"{out / ERRORS}); the first: {totals['first_error']}"
            )
    return _summary(out, sources, totals, r.coco, r.overlays)


class _State(NamedTuple):
    """What OUT holds when a run starts, read by every rank before any writes: the images
    done, each image's id and output file name, the videos' names and those still to do."""

    done: set[str]
    ids: list[int]
    names: list[str]
    videos: tuple[list[str], list[int]]


def _read_state(out: Path, sources: Sources, resume: bool, gt_json: str | Path | None) -> _State:
    video_names = output_names(sources.videos, "")
    return _State(
        done=done_keys(out) if resume else set(),
        ids=image_ids(sources.images, out if resume else None, gt_json),
        names=image_output_names(sources.images, out, resume),
        videos=(video_names, [k for k, n in enumerate(video_names) if not video_done(out, n)]),
    )


def _summary(
    out: Path, sources: Sources, totals: dict[str, Any], coco: bool, overlays: bool
) -> dict[str, Any]:
    skipped = totals["skipped"] + totals["videos_skipped"]
    return {
        "images": len(sources.images),
        "videos": len(sources.videos),
        **{k: totals[k] for k in ("predicted", "resumed", "detections", "skipped", "frames")},
        "videos_skipped": totals["videos_skipped"],
        "predictions": str(out / PREDICTIONS),
        "results": str(out / RESULTS) if coco else None,
        "errors": str(out / ERRORS) if skipped else None,
        "overlays": str(out / "overlays") if overlays and sources.images else None,
    }


def _output_spec(predictor: InferenceModel, out: Path, r: PredictRequest) -> OutputSpec:
    cfg = predictor.cfg
    names = list(cfg.data.category_names)
    return OutputSpec(
        out=out,
        category_ids=list(cfg.data.category_ids) or list(range(1, cfg.model.fcos.num_classes + 1)),
        class_names=names,
        score_threshold=r.score_threshold,
        labels=None if r.classes is None else resolve_classes(r.classes, names),
        overlays=r.overlays,
        save_masks=r.save_masks,
    )


@contextlib.contextmanager
def _distributed(device: str) -> Iterator[tuple[DistInfo, Any]]:
    """(this rank, its device): a process group under torchrun (closed at the end when this
    call started it), else (rank 0 of 1, `device` as given)."""
    if not dist_utils.launched_by_torchrun():
        yield DistInfo(), device
        return
    started = dist_utils.get_world_size() == 1
    info, dev = dist_utils.init_distributed(resolve_device(device))
    try:
        yield info, dev
    finally:
        if started:
            dist_utils.cleanup_distributed()


@contextlib.contextmanager
def _locked(out: Path, info: DistInfo) -> Iterator[None]:
    """OUT/.lock held by rank 0 for the run; every rank fails when rank 0 cannot take it."""
    with contextlib.ExitStack() as stack:
        dist_utils.run_on_main(info, lambda: stack.enter_context(OutputLock(out)))
        yield


def _prepare(out: Path, settings: dict[str, Any], resume: bool) -> None:
    """Rank 0, before any rank reads or writes: clear killed writers' temp files, start over
    (`resume=False`) or check that OUT's records were made with the same `settings`, and
    drop the previous errors (those images are tried again)."""
    # Our subfolders and files: a link there was planted. Refused before anything is read
    # through it (the records file is read for resuming).
    for path in (out / PREDICTIONS, out / ERRORS, out / SETTINGS, out / RESULTS):
        refuse_link(path)
    for folder in (out, out / "overlays", out / "videos", out / "masks"):
        if folder != out:
            refuse_link(folder)
        remove_stale_temps(folder)
    records = [out / PREDICTIONS, *part_files(out, PREDICTIONS)]
    if not resume:
        for path in (*records, out / RESULTS, *(out / "videos").glob("*.jsonl")):
            path.unlink(missing_ok=True)
    elif any(p.is_file() for p in records):
        check_settings(out, settings)
    for path in (out / ERRORS, *part_files(out, ERRORS)):
        path.unlink(missing_ok=True)
    write_settings(out, settings)


def _load_predictor(r: PredictRequest, device: Any) -> Predictor:
    """`Predictor.from_checkpoint` with the knobs of `predict`."""
    if r.weights is None:
        raise ValueError("predict: needs --weights (or a ready predictor)")
    return Predictor.from_checkpoint(
        r.weights,
        device=device,
        batch_size=r.batch_size,
        overrides=r.overrides,
        score_threshold=r.score_threshold,
        **r.knobs(),
    )


def _run_images(
    predictor: InferenceModel,
    spec: OutputSpec,
    images: list[Path],
    state: _State,
    info: DistInfo,
    batch_size: int,
    workers: int,
    strict: bool,
) -> dict[str, Any]:
    """Predict this rank's share of the images not `done`, writing each batch's records,
    overlays and masks as it comes; returns this rank's counts."""
    done, ids, names = state.done, state.ids, state.names
    pending = [i for i, path in enumerate(images) if real_key(path) not in done]
    mine = [pending[k] for k in dist_utils.shard_indices(len(pending), info)]
    loader = DataLoader(
        ImageFiles(images, mine, predictor.max_image_pixels),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=list,
        worker_init_fn=functools.partial(_worker_init, spec.out / LOCK_NAME) if workers else None,
    )
    counts = {"attempted": len(mine), "resumed": len(images) - len(pending), "predicted": 0}
    counts.update(detections=0, skipped=0, first_error=None)
    records = JsonLinesWriter(part_path(spec.out, PREDICTIONS, info))
    errors = JsonLinesWriter(part_path(spec.out, ERRORS, info))
    # disable=None: the bar (images/s, ETA) shows on a terminal, not in logs or pipes.
    bar = tqdm(total=len(mine), unit="img", desc="predict", disable=None if info.is_main else True)
    try:
        for batch in loader:
            bad = [(i, error) for i, image, error in batch if error is not None]
            if bad and strict:
                raise ValueError(bad[0][1])
            errors.write([{"path": str(images[i]), "image_id": ids[i], "error": e} for i, e in bad])
            counts["skipped"] += len(bad)
            counts["first_error"] = counts["first_error"] or (bad[0][1] if bad else None)
            good = [(i, image) for i, image, error in batch if error is None]
            written = _predict_batch(predictor, spec, good, images, ids, names)
            records.write(written)
            counts["predicted"] += len(written)
            counts["detections"] += sum(len(r["detections"]) for r in written)
            bar.update(len(batch))
    finally:
        records.close()
        errors.close()
        bar.close()
    return counts


def _worker_init(lock_path: Path, worker_id: int) -> None:
    """`worker_init`, and close this worker's copy of the descriptor of OUT/.lock.

    A forked worker inherits it, and an flock lasts while any copy is open: a worker orphaned
    by a killed main process would keep OUT locked against the rerun until it noticed and
    exited. Closing the copy (not unlocking: that would free the main process's lock) leaves
    the lock to the main process alone. Linux only (/proc); elsewhere workers are spawned and
    inherit nothing."""
    worker_init(worker_id)
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        return
    target = str(lock_path.resolve())
    for fd in os.listdir(fds):
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone by now
            if os.readlink(fds / fd) == target:
                os.close(int(fd))


def _predict_batch(
    predictor: InferenceModel,
    spec: OutputSpec,
    batch: list[tuple[int, Any]],
    images: list[Path],
    ids: list[int],
    names: list[str],
) -> list[dict[str, Any]]:
    """The records of one batch of decoded images, their overlays and masks written first (a
    record on disk means its files are complete)."""
    if not batch:
        return []
    records = []
    for (index, image), det in zip(batch, predictor.predict_tensors([im for _, im in batch])):
        det = spec.keep(det)
        pasted = spec.paste(det)  # once, for the record, the mask files and the overlay
        record = spec.record(det, pasted, file_name=str(images[index]), image_id=ids[index])
        record["real_path"] = real_key(images[index])  # the resume key (`record_key`)
        record["output_name"] = names[index]  # kept by resumed runs (`image_output_names`)
        masks = spec.write_masks(det, Path(names[index]).stem, pasted)
        if masks is not None:
            record["masks"] = masks
        if spec.overlays:
            save_png(spec.draw(image, det, pasted), spec.out / "overlays" / names[index])
        records.append(record)
    return records
