"""Which ground-truth image a file is: COCO image ids for files named by path.

`blendmask predict --json GT` gives its records the ground truth's image ids, and
`blendmask eval --results` finds the image of a result by its "file_name" (predict writes one),
so that predict's results score against the json of their images.

A path is an image of the ground truth when that image's `file_name` (relative to the images
folder, as COCO writes it) is the tail of the path, component by component: `val/000001.png` and
`/data/coco/val/000001.png` are `000001.png`; `other/val/a.png` is `val/a.png` but `xval/a.png`
is not. The longest matching `file_name` wins; two images of the same `file_name` are an error.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any


def _parts(name: str) -> tuple[str, ...]:
    """ "./val\\a.png" -> ("val", "a.png"); an absolute path keeps its root."""
    return tuple(p for p in PurePosixPath(name.replace("\\", "/")).parts if p != ".")


class GroundTruthImages:
    """The images of a COCO json (its "images": {"id", "file_name", ...}), looked up by path.

    `source` names the json in error messages."""

    def __init__(self, images: Iterable[dict[str, Any]], source: str) -> None:
        self.source = source
        # basename -> [(file_name's parts, image id)]: a lookup tries only same-named images
        self._by_name: dict[str, list[tuple[tuple[str, ...], int]]] = {}
        for image in images:
            name = image.get("file_name")
            if isinstance(name, str) and _parts(name):
                parts = _parts(name)
                self._by_name.setdefault(parts[-1], []).append((parts, image["id"]))
        self._found: dict[str, int | None] = {}

    def find(self, path: str | Path) -> int | None:
        """The id of the ground-truth image that `path` is, None when it is none of them.

        Raises ValueError when two images of the ground truth have the path's file_name."""
        key = str(path)
        if key not in self._found:
            self._found[key] = self._match(key)
        return self._found[key]

    def image_id(self, path: str | Path, where: str) -> int:
        """`find`, with a ValueError starting with `where` when `path` is no image of it."""
        try:
            found = self.find(path)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if found is None:
            raise ValueError(
                f"{where}: {str(path)!r} is not an image of {self.source} (no image's "
                f"file_name ends that path)"
            )
        return found

    def _match(self, path: str) -> int | None:
        parts = _parts(path)
        if not parts:
            return None
        matches = [
            (len(name), image_id)
            for name, image_id in self._by_name.get(parts[-1], [])
            if len(name) <= len(parts) and parts[-len(name) :] == name
        ]
        if not matches:
            return None
        longest = max(length for length, _ in matches)
        ids = [image_id for length, image_id in matches if length == longest]
        if len(ids) > 1:
            raise ValueError(
                f"{path!r} matches images {ids[0]} and {ids[1]} of {self.source}: they have the "
                f"same file_name"
            )
        return ids[0]
