"""The COCO image ids `blendmask predict` gives its images ("image_id" of each record, of each
line of OUT/errors.jsonl and of OUT/results.json).

- With a ground-truth json (`predict --json GT`): the id of the GT image each file is
  (`metrics.image_ids.GroundTruthImages`: matched by file_name), so that
  `eval --results OUT/results.json --json GT` scores them; a file that is no image of GT is an
  error before anything runs.
- Without: an id given once per file and kept. A file already in OUT/predictions.jsonl (a
  resumed run) keeps the id of its record; each new file takes the next id never given in OUT
  (the highest recorded + 1, in source order). A first run numbers its images 0, 1, ... in
  source order; a folder that grew between runs gives its new files new ids, never one already
  taken (the position of a file in the grown list would repeat one).

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
    next_id = max(recorded.values(), default=-1) + 1
    ids = []
    for path in images:
        image_id = recorded.get(str(path))
        if image_id is None:
            image_id, next_id = next_id, next_id + 1
        ids.append(image_id)
    return ids


def recorded_image_ids(out: Path) -> dict[str, int]:
    """{record key: image_id} of the records in OUT/predictions.jsonl and its part files."""
    ids: dict[str, int] = {}
    for path in (out / PREDICTIONS, *part_files(out, PREDICTIONS)):
        for record in read_records(path):
            if is_int(record.get("image_id")):
                ids[record_key(record)] = int(record["image_id"])
    return ids
