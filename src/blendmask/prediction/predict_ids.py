"""The COCO image ids `blendmask predict` gives its images ("image_id" of each record, of each
line of OUT/errors.jsonl and of OUT/results.json).

- With a ground-truth json (`predict --json GT`): the id of the GT image each file is
  (`metrics.image_ids.GroundTruthImages`: matched by file_name), so that
  `eval --results OUT/results.json --json GT` scores them; a file that is no image of GT is an
  error before anything runs.
- Without: an id given once per file and kept. A file already in OUT/predictions.jsonl (a
  resumed run) keeps the id of its record; a new file takes its position in the source list
  when no other file holds that id, else the next id never given in OUT. A first run numbers
  its images 0, 1, ... in source order, and so does a run resumed after a stop or a killed
  torchrun rank (its ranks finished their shares unevenly): the ids equal an uninterrupted
  run's. A folder that grew between runs gives its new files new ids, never one already taken
  (the position of a file in the grown list may be another file's id).

Every torchrun rank reads the same records before any rank writes, so all give the same ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from blendmask.data.segmentation import is_int
from blendmask.metrics.coco import load_coco_gt
from blendmask.metrics.image_ids import GroundTruthImages
from blendmask.prediction.predict_stream import PREDICTIONS, part_files, read_records, record_key


def image_ids(images: Sequence[Path], out: Path | None, gt_json: str | Path | None) -> list[int]:
    """The image id of each of `images`: from `gt_json` when given, else kept from the records
    in `out` (None: a run that starts over) and new ones after the highest recorded.

    Raises ValueError naming the first image that is not in `gt_json`."""
    if gt_json is not None:
        gt = GroundTruthImages(load_coco_gt(gt_json).dataset["images"], str(gt_json))
        return [gt.image_id(path, f"predict --json {gt_json}") for path in images]
    recorded = recorded_image_ids(out) if out is not None else {}
    ids: list[int | None] = [recorded.get(str(path)) for path in images]
    taken = set(recorded.values())
    for position, image_id in enumerate(ids):
        if image_id is None and position not in taken:
            ids[position] = position
            taken.add(position)
    next_id = max(taken, default=-1) + 1
    for position, image_id in enumerate(ids):
        if image_id is None:
            ids[position], next_id = next_id, next_id + 1
    return [int(i) for i in ids if i is not None]


def recorded_image_ids(out: Path) -> dict[str, int]:
    """{record key: image_id} of the records in OUT/predictions.jsonl and its part files."""
    ids: dict[str, int] = {}
    for path in (out / PREDICTIONS, *part_files(out, PREDICTIONS)):
        for record in read_records(path):
            if is_int(record.get("image_id")):
                ids[record_key(record)] = int(record["image_id"])
    return ids
