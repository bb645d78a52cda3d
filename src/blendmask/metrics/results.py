"""COCO results files: reading and validating a results json against its ground truth (one
result at a time, `JsonListStream`), scoring it without a model (`blendmask eval --results`),
and writing metrics.json / results.json."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from pycocotools.coco import COCO

from blendmask.atomic import atomic_write
from blendmask.data.segmentation import (
    check_segmentation,
    is_finite_number,
    is_int,
    segmentation_to_rle,
)
from blendmask.metrics.coco import IOU_TYPES, evaluate_coco, load_coco_gt
from blendmask.metrics.image_ids import GroundTruthImages


def load_results_json(
    results_json: str | Path, coco_gt: COCO, *, max_detections: int | None = None
) -> list[dict[str, Any]]:
    """Read and validate a COCO results json against `coco_gt`, one result at a time.

    Each result needs image_id (a ground-truth image), category_id (a ground-truth category),
    a finite score, and a bbox [x, y, w, h] (w, h >= 0) and/or a segmentation (RLE or
    polygons; converted to compressed RLE with str counts). Either every result has a
    segmentation or none has. A result with a "file_name" (`blendmask predict --coco` writes
    the image's path) is the ground-truth image of that file_name (`GroundTruthImages`), whatever
    its image_id (predict without --json numbers its own images).

    With `max_detections`, only the `max_detections` best-scoring results of each (image,
    category) are kept, in file order: COCOeval (maxDets, per category) never looks at the
    others, so the metrics are the same and memory is bounded by images x categories, not by
    the file's size.

    Raises:
        FileNotFoundError / ValueError naming the file and the offending result.
    """
    path = Path(results_json)
    if not path.is_file():
        raise FileNotFoundError(f"results json not found: {path}")
    image_ids = set(coco_gt.getImgIds())
    category_ids = set(coco_gt.getCatIds())
    files = GroundTruthImages(coco_gt.dataset.get("images", []), "the ground truth")
    kept = _BestPerPair(max_detections)
    count = with_masks = 0
    for k, result in enumerate(JsonListStream(path)):
        where = f"result {k} of {path}"
        item = _check_result(result, where, coco_gt, (image_ids, files), category_ids)
        with_masks += "segmentation" in item
        count += 1
        kept.add(item)
    if 0 < with_masks < count:
        raise ValueError(
            f"{path}: {with_masks} of {count} results have a 'segmentation'; expected all or none"
        )
    return kept.results()


class _BestPerPair:
    """Results in file order, at most `limit` (None: all) of the best scores per (image_id,
    category_id); ties keep the earlier result, as COCOeval's stable sort does. Holds at most
    2 x `limit` results per pair at any time."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.count = 0
        # (image_id, category_id) -> [(-score, position in the file, result)]
        self.pairs: dict[tuple[int, int], list[tuple[float, int, dict[str, Any]]]] = {}

    def add(self, item: dict[str, Any]) -> None:
        pair = self.pairs.setdefault((item["image_id"], item["category_id"]), [])
        pair.append((-item["score"], self.count, item))
        self.count += 1
        if self.limit is not None and len(pair) >= 2 * self.limit:
            self._trim(pair)

    def _trim(self, pair: list[tuple[float, int, dict[str, Any]]]) -> None:
        # by (-score, position): the best first, the earlier first among equal scores
        pair.sort(key=lambda entry: entry[:2])
        del pair[self.limit :]

    def results(self) -> list[dict[str, Any]]:
        if self.limit is not None:
            for pair in self.pairs.values():
                self._trim(pair)
        kept = sorted((entry for pair in self.pairs.values() for entry in pair), key=_position)
        return [entry[2] for entry in kept]


def _position(entry: tuple[float, int, dict[str, Any]]) -> int:
    return entry[1]


# A results file is decoded one result at a time (`JsonListStream`), each checked and kept in
# its compact form at once: the file's text and its raw objects are never all in memory (a
# 200 MB file loaded whole with `json.load` peaked at ~3.2 GB RSS).
READ_CHUNK_CHARS = 1 << 18
# A single result object longer than this is refused: no RLE or polygon of an image within
# `MAX_IMAGE_PIXELS` comes near it, and reading on would buffer the whole of a corrupt file.
MAX_RESULT_CHARS = 64 << 20
_NUMBER_CHARS = frozenset("0123456789+-.eE")
_JSON_TYPES = {"{": "dict", '"': "str", "t": "bool", "f": "bool", "n": "null"}


class JsonListStream:
    """The elements of the top-level JSON list of a UTF-8 file, decoded one at a time
    (`json.JSONDecoder.raw_decode` on a window of the text); ValueError naming the file and the
    character offset for invalid json or a top level that is not a list."""

    def __init__(self, path: Path, chunk_chars: int = READ_CHUNK_CHARS) -> None:
        self.path, self.chunk_chars = path, chunk_chars
        self.decoder = json.JSONDecoder()
        self.text, self.pos, self.offset, self.eof = "", 0, 0, False
        self.file: TextIO  # open while iterating

    def __iter__(self) -> Iterator[Any]:
        with self.path.open(encoding="utf-8-sig") as self.file:
            try:
                yield from self._elements()
            except UnicodeDecodeError as e:
                raise ValueError(f"{self.path} is not valid json: not UTF-8 text ({e})") from e

    def _elements(self) -> Iterator[Any]:
        first = self._peek()
        if first != "[":
            if first in _JSON_TYPES or first.isdigit() or first == "-":
                kind = _JSON_TYPES.get(first, "number")
                raise ValueError(
                    f"{self.path} is not a COCO results json: expected a list of result "
                    f"objects, got a {kind}"
                )
            raise self._error("Expecting '['")
        self.pos += 1
        if self._peek() == "]":
            self.pos += 1
        else:
            while True:
                yield self._value()
                after = self._peek()
                self.pos += 1
                if after == "]":
                    break
                if after != ",":
                    raise self._error("Expecting ',' delimiter or ']'", self.pos - 1)
        if self._peek():
            raise self._error("Extra data after the list")

    def _peek(self) -> str:
        """The next non-whitespace character, not consumed ("" at the end of the file)."""
        while True:
            while self.pos < len(self.text) and self.text[self.pos] in " \t\n\r":
                self.pos += 1
            if self.pos < len(self.text) or self.eof:
                return self.text[self.pos : self.pos + 1]
            self._fill(self.chunk_chars)

    def _fill(self, size: int) -> None:
        self.offset += self.pos
        chunk = self.file.read(size)
        self.text, self.pos, self.eof = self.text[self.pos :] + chunk, 0, not chunk

    def _value(self) -> Any:
        """The next JSON value; more text is read until it decodes (doubling, so an object
        spanning many chunks is decoded a few times, not once per chunk)."""
        self._peek()
        size = self.chunk_chars
        while True:
            try:
                value, end = self.decoder.raw_decode(self.text, self.pos)
                # a number cut by the window's end ("1." of "1.5") decodes too: accept the
                # value only once the character after it is seen
                if self.eof or (end < len(self.text) and self.text[end] not in _NUMBER_CHARS):
                    self.pos = end
                    return value
            except json.JSONDecodeError as e:
                if self.eof or len(self.text) - self.pos > MAX_RESULT_CHARS:
                    raise self._error(e.msg, e.pos) from None
            self._fill(size)
            size = max(size, len(self.text))

    def _error(self, message: str, pos: int | None = None) -> ValueError:
        at = self.offset + (self.pos if pos is None else pos)
        return ValueError(f"{self.path} is not valid json: {message} at character {at}")


def _check_result(
    result: Any,
    where: str,
    coco_gt: COCO,
    images: tuple[set[int], GroundTruthImages],
    category_ids: set[int],
) -> dict[str, Any]:
    """One result object -> its validated copy (float score and box, str RLE counts, the
    image_id of its file_name if it has one)."""
    if not isinstance(result, dict):
        raise ValueError(f"{where}: expected an object, got {type(result).__name__}")
    for key in ("image_id", "category_id", "score"):
        if key not in result and not (key == "image_id" and "file_name" in result):
            raise ValueError(f"{where}: missing '{key}'")
    image_id = _result_image_id(result, where, *images)
    if not is_int(result["category_id"]) or result["category_id"] not in category_ids:
        raise ValueError(
            f"{where}: category_id {result['category_id']!r} is not a ground-truth category "
            f"(expected one of {sorted(category_ids)})"
        )
    score = result["score"]
    if not is_finite_number(score):
        raise ValueError(f"{where}: expected a finite number 'score', got {score!r}")
    item = {"image_id": image_id, "category_id": result["category_id"]}
    item["score"] = float(score)
    if "bbox" in result:
        bbox = result["bbox"]
        if (
            not isinstance(bbox, list)
            or len(bbox) != 4
            or not all(is_finite_number(v) for v in bbox)
            or bbox[2] < 0
            or bbox[3] < 0
        ):
            raise ValueError(f"{where}: expected 'bbox' [x, y, w, h] with w, h >= 0, got {bbox!r}")
        item["bbox"] = [float(v) for v in bbox]
    if "segmentation" in result:
        image = coco_gt.imgs[image_id]
        item["segmentation"] = _check_result_segmentation(result["segmentation"], image, where)
    elif "bbox" not in item:
        raise ValueError(f"{where}: needs a 'bbox' or a 'segmentation'")
    return item


def _result_image_id(
    result: dict[str, Any], where: str, image_ids: set[int], files: GroundTruthImages
) -> int:
    """The ground-truth image of a result: that of its "file_name" when it has one (a path
    whose tail is an image's file_name), else its "image_id"."""
    name = result.get("file_name")
    if name is not None:
        if not isinstance(name, str):
            raise ValueError(f"{where}: expected a string 'file_name', got {name!r}")
        return files.image_id(name, where)
    # is_int first: a list or object id would make the set lookup raise TypeError.
    if not is_int(result["image_id"]) or result["image_id"] not in image_ids:
        raise ValueError(
            f"{where}: image_id {result['image_id']!r} is not an image of the ground truth"
        )
    return result["image_id"]


def _check_result_segmentation(segmentation: Any, image: dict, where: str) -> dict[str, Any]:
    """A result's mask -> compressed RLE with str counts.

    Checked as ground truth is (`check_segmentation`: compressed counts decoded, runs covering
    exactly height * width pixels, polygons finite and on the image), since pycocotools scores
    a garbage RLE with a nonsense area instead of failing."""
    height, width = image["height"], image["width"]
    if isinstance(segmentation, dict) and isinstance(segmentation.get("size"), list):
        size = segmentation["size"]
        if size != [height, width]:
            raise ValueError(
                f"{where}: segmentation size {size} is not the image's [{height}, {width}]"
            )
    check_segmentation(segmentation, height, width, where)
    rle = segmentation_to_rle(segmentation, height, width)
    counts = rle["counts"]
    return {
        "size": [height, width],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }


def write_evaluation(
    out_dir: str | Path, metrics: dict[str, Any], results: Sequence[dict[str, Any]]
) -> None:
    """Write `out_dir/metrics.json` and `out_dir/results.json`."""
    out_dir = Path(out_dir)
    # Atomic, and never through a link planted at either name.
    text = (json.dumps(metrics, indent=2) + "\n").encode()
    atomic_write(out_dir / "metrics.json", lambda f: f.write(text))
    atomic_write(out_dir / "results.json", lambda f: f.write(json.dumps(list(results)).encode()))


def evaluate_results_file(
    gt_json: str | Path,
    results_json: str | Path,
    out_dir: str | Path,
    *,
    max_detections: int = 100,
) -> dict[str, Any]:
    """Score a COCO results json against a ground-truth json, no model needed.

    Evaluates `segm` too when the results have masks. Writes `out_dir/metrics.json` (the
    metric keys, "per_category" ({name: {"bbox_AP", "segm_AP"}}), "images", the number of
    ground-truth images, and "seconds", the time taken) and `out_dir/results.json` (the validated results), and returns the metrics.

    The file is read one result at a time and only the results COCOeval scores are kept: the
    `max_detections` best of each image and category (`load_results_json`); results.json holds
    those. Memory then grows with images x categories, not with the file.
    """
    start = time.perf_counter()
    coco_gt = load_coco_gt(gt_json)
    results = load_results_json(results_json, coco_gt, max_detections=max_detections)
    # Box-only results get box AP only; an empty file scores 0 for both.
    iou_types = ("bbox",) if results and "segmentation" not in results[0] else IOU_TYPES
    if results and "segm" in iou_types:
        boxes_only = [a["id"] for a in coco_gt.dataset["annotations"] if "segmentation" not in a]
        if boxes_only:
            raise ValueError(
                f"{gt_json}: annotation {boxes_only[0]} (and {len(boxes_only) - 1} more) has no "
                f"'segmentation': mask results need ground-truth masks"
            )
    metrics: dict[str, Any] = evaluate_coco(
        coco_gt, results, iou_types, max_detections=max_detections, per_category=True
    )
    metrics["images"] = len(coco_gt.getImgIds())
    metrics["seconds"] = round(time.perf_counter() - start, 3)
    write_evaluation(out_dir, metrics, results)
    return metrics
