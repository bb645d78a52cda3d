"""`blendmask predict` on video files: frames decoded with PyAV (FFmpeg), run in batches
through the same `predict_tensors` as images, drawn and encoded into an annotated video.

Per video NAME (its stem, made unique as the overlays are): OUT/videos/NAME.mp4, the annotated
video (H.264 when PyAV's FFmpeg has libx264, else MPEG-4 part 2; same frame count and frame
rate; an odd width or height gets one black column / row, as 4:2:0 video needs even sizes), and
OUT/videos/NAME.jsonl, one record per frame ({"file_name", "frame", "time", "height", "width",
"detections"}, as images' records). Both are written to temp files and renamed when the video
is complete, the records last: a video is done when its .jsonl exists, and a video interrupted
midway is predicted again from its first frame by the next run.

PyAV is an optional dependency (`pip install 'blendmask[video]'`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from blendmask.atomic import make_folder, refuse_link
from blendmask.io import check_regular_file
from blendmask.prediction.predict_outputs import OutputSpec
from blendmask.prediction.predict_stream import ERRORS, JsonLinesWriter, one_line, part_path
from blendmask.runtime import distributed as dist_utils
from blendmask.runtime.distributed import DistInfo
from blendmask.structures.inference import InferenceModel


def video_done(out: Path, name: str) -> bool:
    return (out / "videos" / f"{name}.jsonl").is_file()


def predict_videos(
    predictor: InferenceModel,
    spec: OutputSpec,
    videos: Sequence[Path],
    names: Sequence[str],
    pending: Sequence[int],
    info: DistInfo,
    batch_size: int,
    strict: bool = False,
) -> tuple[int, int]:
    """Predict this rank's share of the `pending` videos (indices into `videos` / `names`).
    A video that cannot be decoded is recorded in OUT/errors.jsonl (`strict`: raised).
    Returns (frames predicted, videos skipped)."""
    mine = [pending[k] for k in dist_utils.shard_indices(len(pending), info)]
    frames = skipped = 0
    errors = JsonLinesWriter(part_path(spec.out, ERRORS, info))
    try:
        for index in mine:
            try:
                frames += predict_video(predictor, spec, videos[index], names[index], batch_size)
            except (ValueError, OSError) as exc:
                if strict:
                    raise
                skipped += 1
                errors.write([{"path": str(videos[index]), "video": True, "error": one_line(exc)}])
    finally:
        errors.close()
    return frames, skipped


def predict_video(
    predictor: InferenceModel, spec: OutputSpec, path: Path, name: str, batch_size: int
) -> int:
    """Predict every frame of the video at `path` (see the module docstring); returns the
    number of frames. ValueError naming the file when it cannot be decoded."""
    av = _import_av()
    check_regular_file(path, "video")  # before av.open: a FIFO would block forever
    folder = make_folder(spec.out / "videos")
    # Named like `atomic_write`'s temp files, so `remove_stale_temps` clears a killed run's.
    tmp_records = folder / f".{name}.jsonl.{os.getpid()}.tmp"
    tmp_video = folder / f".{name}.mp4.{os.getpid()}.tmp"
    # Removed first (a link left there is removed, not followed); the writers then create
    # them anew (`JsonLinesWriter` without following links).
    tmp_records.unlink(missing_ok=True)
    tmp_video.unlink(missing_ok=True)
    records = JsonLinesWriter(tmp_records)
    writer = None
    count = 0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = stream.average_rate or stream.guessed_rate or Fraction(25)
            bar = tqdm(total=stream.frames or None, unit="frame", desc=name, disable=None)
            for batch in _batched(container.decode(stream), batch_size):
                written, overlays = _predict_frames(predictor, spec, batch, path, count)
                if spec.overlays:
                    writer = writer or _VideoWriter(av, tmp_video, rate, overlays[0].shape)
                    writer.write(overlays)
                records.write(written)
                count += len(batch)
                bar.update(len(batch))
            bar.close()
        if writer is not None:
            writer.close()
            refuse_link(folder / f"{name}.mp4")
            os.replace(tmp_video, folder / f"{name}.mp4")
        records.close()
        if count == 0:
            raise ValueError(f"cannot read video {path}: it holds no frames")
        refuse_link(folder / f"{name}.jsonl")
        os.replace(tmp_records, folder / f"{name}.jsonl")
    except av.FFmpegError as exc:
        raise ValueError(f"cannot read video {path}: {type(exc).__name__}: {exc}") from None
    finally:
        records.close()
        if writer is not None:
            writer.container.close()  # a no-op once closed
        tmp_records.unlink(missing_ok=True)
        tmp_video.unlink(missing_ok=True)
    return count


def _predict_frames(
    predictor: InferenceModel, spec: OutputSpec, frames: list[Any], path: Path, first: int
) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """(records, overlays as uint8 [H, W, 3] arrays) of consecutive frames numbered from
    `first`."""
    images = [torch.from_numpy(f.to_ndarray(format="rgb24")).permute(2, 0, 1) for f in frames]
    records, overlays = [], []
    for k, (frame, image, det) in enumerate(zip(frames, images, predictor.predict_tensors(images))):
        det = spec.keep(det)
        time = None if frame.time is None else round(float(frame.time), 6)
        pasted = spec.paste(det)  # once, for the record and the overlay
        records.append(spec.record(det, pasted, file_name=str(path), frame=first + k, time=time))
        if spec.overlays:
            overlays.append(spec.draw(image, det, pasted).permute(1, 2, 0).contiguous().numpy())
    return records, overlays


class _VideoWriter:
    """Frames (uint8 RGB [H, W, 3]) -> an mp4 file, one encoded frame per frame given."""

    def __init__(self, av: Any, path: Path, rate: Fraction, shape: tuple[int, ...]) -> None:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self.av = av
        self.container = av.open(str(path), mode="w", format="mp4")
        self.stream = self.container.add_stream(codec, rate=rate)
        # 4:2:0 chroma needs even sizes: pad odd ones by one pixel.
        self.height, self.width = shape[0] + shape[0] % 2, shape[1] + shape[1] % 2
        self.stream.height, self.stream.width = self.height, self.width
        self.stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            self.stream.options = {"crf": "20", "preset": "veryfast"}
        self.pts = 0

    def write(self, frames: Iterable[np.ndarray]) -> None:
        for array in frames:
            if array.shape[:2] != (self.height, self.width):
                padded = np.zeros((self.height, self.width, 3), dtype=np.uint8)
                padded[: array.shape[0], : array.shape[1]] = array
                array = padded
            frame = self.av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = self.pts
            self.pts += 1
            self.container.mux(self.stream.encode(frame))

    def close(self) -> None:
        self.container.mux(self.stream.encode(None))  # flush the encoder's delayed frames
        self.container.close()


def _batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _import_av() -> Any:
    try:
        import av
    except ImportError:
        raise ValueError(
            "predict on videos needs PyAV: pip install 'blendmask[video]' (or pip install av)"
        ) from None
    return av
