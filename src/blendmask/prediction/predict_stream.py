"""The files `blendmask predict` streams into: JSON lines that survive a crash, and the images
read for them by DataLoader workers.

OUT/predictions.jsonl holds one record per image, appended and flushed batch by batch, so memory
does not grow with the number of images and a resumed run knows what is done:

    {"file_name": "imgs/a.jpg", "image_id": 3, "height": 480, "width": 640,
     "detections": [{"box": [x0, y0, x1, y1], "score": 0.93, "label": 0, "category_id": 1,
                     "name": "person", "mask": {"size": [480, 640], "counts": "..."}},
                    ...]}

Each detection is the record `Detections.to_json` gives (`structures.detection_records`);
docs/detections.md describes it and docs/detections.schema.json validates a line.

A process killed mid-write (SIGKILL) may leave a last line without its newline; readers ignore
it and the next writer cuts it off before appending (`JsonLinesWriter`), so a torn line never
breaks a rerun. Under torchrun each rank appends to its own part file
(`predictions.part<rank>.jsonl`) and rank 0 merges the parts into predictions.jsonl at the end
(`merge_parts`, which drops a record whose key is already there: a merge interrupted after its
rename but before deleting the parts repeats nothing).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset

from blendmask.atomic import AppendFile, atomic_write, describe_write_error, open_output
from blendmask.data.sources import output_names
from blendmask.predictor import load_input_image
from blendmask.runtime.distributed import DistInfo
from blendmask.structures import Detections, detection_records

logger = logging.getLogger(__name__)

PREDICTIONS = "predictions.jsonl"
ERRORS = "errors.jsonl"
RESULTS = "results.json"
# The layout of a record's detections (docs/detections.md): 2 = {"box" (xyxy), "score", "label",
# "category_id", "name", "mask"}; 1 (unversioned) had "bbox" (xywh), "category",
# "segmentation".
RECORD_VERSION = 2


def part_path(out: Path, name: str, info: DistInfo) -> Path:
    """Where this rank appends `name` (e.g. predictions.jsonl): the file itself in one
    process, `<stem>.part<rank>.jsonl` under torchrun."""
    if not info.distributed:
        return out / name
    stem = name.removesuffix(".jsonl")
    return out / f"{stem}.part{info.rank}.jsonl"


def part_files(out: Path, name: str) -> list[Path]:
    """The per-rank part files of `name` left in `out` (this run's, or a killed run's)."""
    stem = name.removesuffix(".jsonl")
    return sorted(out.glob(f"{stem}.part*.jsonl"))


class JsonLinesWriter:
    """Appends records to a JSON lines file, one line each, written to the OS after every
    `write`.

    The file is opened on the first write (no file when nothing is written), never through a
    link (`atomic.AppendFile`); a write that fails (a full disk) names the file. Before
    appending to an existing file, a torn last line (no newline: its writer was killed
    mid-line) is cut off, so the file stays one valid record per line.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: AppendFile | None = None

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        if not records:
            return
        if self._file is None:
            self._file = AppendFile(self.path, readable=True)
            _cut_torn_line(self._file.fd, self.path)  # type: ignore[arg-type]
        lines = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
        # Unbuffered: a SIGKILL after this loses nothing (fsync would only add safety against
        # a power cut, at a disk sync per batch).
        self._file.write(lines.encode())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def cut_torn_line(path: Path) -> None:
    """Truncate `path` after its last newline (nothing when it ends with one or is absent);
    a link at `path` is refused (`WriteError`), not followed."""
    if not os.path.lexists(path):
        return
    fd = open_output(path, os.O_RDWR)
    try:
        _cut_torn_line(fd, path)
    finally:
        os.close(fd)


def _cut_torn_line(fd: int, path: Path) -> None:
    try:
        end = os.fstat(fd).st_size
        if end == 0 or os.pread(fd, 1, end - 1) == b"\n":
            return
        while end > 0:  # search backwards, a block at a time: files may be gigabytes
            start = max(0, end - 65536)
            newline = os.pread(fd, end - start, start).rfind(b"\n")
            if newline >= 0:
                os.ftruncate(fd, start + newline + 1)
                return
            end = start
        os.ftruncate(fd, 0)
    except OSError as exc:
        raise describe_write_error(path, exc) from exc


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a JSON lines file, streamed; a torn last line or a line that is not a
    JSON object (a damaged file) is skipped with a warning."""
    if not path.is_file():
        return
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                logger.warning("%s: line %d is incomplete (a killed run); ignored", path, number)
                return
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                logger.warning("%s: line %d is not a JSON object; ignored", path, number)
                continue
            yield record


def record_key(record: dict[str, Any]) -> str:
    """What identifies a record: its file (and frame, for video frames); an error record its
    "path". The file by its resolved path ("real_path"), so that `grow/a.png` typed in one
    folder and `/data/grow/a.png` are one image; records of older versions have none and their
    path as typed is resolved from the current folder."""
    name = record.get("real_path")
    if name is None:
        typed = record.get("file_name", record.get("path"))
        name = real_key(typed) if isinstance(typed, str) else str(typed)
    frame = record.get("frame")
    return str(name) if frame is None else f"{name}#{frame}"


def real_key(path: str | Path) -> str:
    """`path` resolved (absolute, links and `..` followed): the resume key of an image."""
    return os.path.realpath(path)


def done_keys(out: Path, name: str = PREDICTIONS) -> set[str]:
    """Keys of every record in OUT/`name` and its part files: the images already predicted."""
    keys: set[str] = set()
    for path in (out / name, *part_files(out, name)):
        keys.update(record_key(r) for r in read_records(path))
    return keys


def image_output_names(images: list[Path], out: Path, resume: bool) -> list[str]:
    """Each image's overlay / mask file name: the one its record has ("output_name"; a
    resumed run writes nothing new for it), else `output_names`' name, lengthened with the
    image's index while it clashes with a name already taken. An image added to a grown
    folder can sort before the others and get an earlier image's name from `output_names`:
    without this it would overwrite that image's overlay and masks."""
    names = output_names(images, ".png")
    recorded: dict[str, str] = {}
    if resume:
        for path in (out / PREDICTIONS, *part_files(out, PREDICTIONS)):
            for record in read_records(path):
                if isinstance(record.get("output_name"), str):
                    recorded[record_key(record)] = record["output_name"]
    taken = {name.casefold() for name in recorded.values()}
    for k, path in enumerate(images):
        own = recorded.get(real_key(path))
        if own is not None:
            names[k] = own
            continue
        while names[k].casefold() in taken:
            names[k] = f"{k:04d}_{names[k]}"
        taken.add(names[k].casefold())
    return names


def merge_parts(out: Path, name: str) -> int | None:
    """Append the part files of OUT/`name` to it (records already there skipped), atomically,
    then delete the parts. Returns the number of records in OUT/`name`, or None when there
    was no part (nothing read: the file may hold millions of lines)."""
    parts = part_files(out, name)
    target = out / name
    if not parts:
        return None
    seen: set[str] = set()
    count = 0

    def write(f: IO[bytes]) -> None:
        nonlocal count
        for path in (target, *parts):
            for record in read_records(path):
                key = record_key(record)
                if key in seen:
                    continue
                seen.add(key)
                f.write((json.dumps(record, separators=(",", ":")) + "\n").encode())
                count += 1

    atomic_write(target, write)
    for path in parts:
        path.unlink(missing_ok=True)
    return count


def detection_entries(
    det: Detections,
    category_ids: Sequence[int],
    class_names: Sequence[str],
    rles: Sequence[dict[str, Any]],
) -> list[dict[str, Any]]:
    """The "detections" of a record: `detection_records` of `det` with its masks' `rles`
    (pasted once per image, `prediction/predict_outputs.py`) and the model's category ids and
    names."""
    return detection_records(
        det.boxes,
        det.scores,
        det.labels,
        rles,
        category_ids=category_ids,
        class_names=class_names,
    )


def xyxy_to_xywh(box: Sequence[float]) -> list[float]:
    """[x0, y0, x1, y1] -> COCO's [x, y, w, h], in float32 as `Detections.to_coco` computes
    it (a record's box is float32 values), so both give the same numbers."""
    x0, y0, x1, y1 = (np.float32(v) for v in box)
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def finish_outputs(out: Path, coco: bool) -> None:
    """Rank 0, after every rank is done: one predictions.jsonl and one errors.jsonl (the
    ranks' parts merged), then results.json from the records (`coco`)."""
    merge_parts(out, PREDICTIONS)
    merge_parts(out, ERRORS)
    if coco:
        write_coco_results(out)


def write_coco_results(out: Path) -> Path:
    """OUT/results.json (COCO results: image_id, category_id, score, bbox, segmentation, plus
    file_name) from OUT/predictions.jsonl, streamed record by record: a record's "box"
    (xyxy) becomes "bbox" (xywh), its "mask" "segmentation"."""

    def write(f: IO[bytes]) -> None:
        f.write(b"[")
        first = True
        for record in read_records(out / PREDICTIONS):
            for entry in record.get("detections", []):
                result = {
                    "image_id": record["image_id"],
                    "category_id": entry["category_id"],
                    "score": entry["score"],
                    "bbox": xyxy_to_xywh(entry["box"]),
                    "segmentation": entry["mask"],
                    "file_name": record["file_name"],
                }
                f.write((b"" if first else b", ") + json.dumps(result).encode())
                first = False
        f.write(b"]")

    return atomic_write(out / RESULTS, write)


class ImageFiles(Dataset):
    """`paths[i]` for i in `indices`, decoded (`load_input_image`: EXIF orientation, 16-bit,
    gray, RGBA; `max_pixels` checked from the header) as (i, uint8 Tensor[3, H0, W0], None),
    or (i, None, one-line reason) when the file cannot be read.

    Returning the reason instead of raising keeps one bad file from ending a DataLoader (a
    worker's exception would stop the whole loop).
    """

    def __init__(self, paths: Sequence[Path], indices: Sequence[int], max_pixels: int) -> None:
        self.paths = paths
        self.indices = indices
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[int, Tensor | None, str | None]:
        index = self.indices[k]
        try:
            return index, load_input_image(self.paths[index], self.max_pixels), None
        except (ValueError, OSError) as exc:  # corrupt, empty, not an image, too large, gone
            return index, None, one_line(exc)


def one_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def sum_counts(per_rank: list[dict[str, Any]]) -> dict[str, Any]:
    """The counts of `_run_images` summed over the ranks."""
    totals: dict[str, Any] = {
        k: sum(c[k] for c in per_rank)
        for k in ("attempted", "predicted", "detections", "skipped", "frames", "videos_skipped")
    }
    totals["resumed"] = per_rank[0]["resumed"]  # every rank counts the same done set
    totals["first_error"] = next((c["first_error"] for c in per_rank if c["first_error"]), None)
    return totals
