"""What `blendmask predict SOURCE...` reads: sources expanded into image files and video files.

A source is an image file, a folder (searched recursively for files matching `--glob`, default:
every image and video suffix), a text file listing paths (`.txt` / `.lst`: one path a line,
relative ones relative to the list's folder, blank lines and `# comments` skipped) or a video
file (`VIDEO_SUFFIXES`, its frames decoded with PyAV by `engine/video.py`).

Expansion only lists paths (sorted within a folder, in order otherwise); nothing is decoded, so
a million-file folder costs one list of paths. A file listed in a text file that does not exist
is kept: reading it fails later and is recorded like any unreadable image, instead of ending
the run. A missing source on the command line is an error (FileNotFoundError).
"""

from __future__ import annotations

import fnmatch
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
LIST_SUFFIXES = (".txt", ".lst")


@dataclass
class Sources:
    """The expanded sources: image files and video files, each in input order, each once."""

    images: list[Path] = field(default_factory=list)
    videos: list[Path] = field(default_factory=list)
    seen: set[str] = field(default_factory=set, repr=False)

    def __len__(self) -> int:
        return len(self.images) + len(self.videos)


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def expand_sources(sources: Sequence[str | Path], glob: str | None = None) -> Sources:
    """Image and video files named by `sources` (see the module docstring).

    `glob`: a shell pattern (`*.jpg`, `cam1_*`) the files found in folders must match (their
    name, or their path relative to the folder when the pattern holds a "/"); None: every
    image and video suffix. Files named directly are taken whatever their name.

    Raises:
        FileNotFoundError: a source that does not exist, or a folder with no matching file.
        ValueError: no source given.
    """
    if not sources:
        raise ValueError("predict: no input images given")
    found = Sources()
    for item in sources:
        path = Path(item)
        if path.is_dir():
            files = _folder_files(path, glob)
            if not files:
                wanted = glob or ", ".join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)
                raise FileNotFoundError(f"{path}: folder holds no files matching {wanted}")
            _add(found, files)
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            _add(found, read_path_list(path))
        elif path.is_file():
            _add(found, [path])
        else:
            raise FileNotFoundError(f"{path}: no such image, video, folder or list file")
    return found


def _add(found: Sources, files: list[Path]) -> None:
    """Append `files` to `found`, each file once: a file named again (by a folder and a list,
    or as `a/../b.png` and `b.png`) would be predicted twice."""
    for path in files:
        key = os.path.normpath(path)
        if key in found.seen:
            continue
        found.seen.add(key)
        (found.videos if is_video(path) else found.images).append(path)


def _folder_files(folder: Path, glob: str | None) -> list[Path]:
    """The files under `folder` (recursively) matching `glob`, sorted by path."""
    suffixes = IMAGE_SUFFIXES + VIDEO_SUFFIXES
    files = []
    for path in folder.rglob("*"):
        if glob is None:
            ok = path.suffix.lower() in suffixes
        else:
            name = path.relative_to(folder).as_posix() if "/" in glob else path.name
            ok = fnmatch.fnmatch(name, glob)
        # `is_file` last: one stat per candidate, not per file of the tree.
        if ok and path.is_file():
            files.append(path)
    return sorted(files)


def read_path_list(list_file: Path) -> list[Path]:
    """The paths listed in a text file, one a line; relative paths are relative to the
    list's folder. Blank lines and lines starting with "#" are skipped."""
    try:
        text = list_file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{list_file}: a list of paths must be UTF-8 text ({exc})") from None
    paths = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path = Path(line).expanduser()
        paths.append(path if path.is_absolute() else list_file.parent / path)
    return paths


def output_names(paths: Sequence[Path], suffix: str) -> list[str]:
    """One output file name per input: its stem + `suffix`, made unique with the input's index
    when stems repeat (`0007_frame.png`). Depends on the whole input list only, so a resumed
    run names every image as the first run did."""
    stems = [p.stem for p in paths]
    counts = Counter(stems)  # not stems.count per image: quadratic in a 100k-image folder
    repeated = {s for s, n in counts.items() if n > 1}
    return [
        f"{i:04d}_{s}{suffix}" if s in repeated else f"{s}{suffix}" for i, s in enumerate(stems)
    ]
