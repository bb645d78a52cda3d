"""What `blendmask predict SOURCE...` reads: sources expanded into image files and video files.

A source is an image file, a folder (searched recursively for files matching `--glob`, default:
every image and video suffix), a text file listing paths (`.txt` / `.lst`: one path a line,
relative ones relative to the list's folder, blank lines and `# comments` skipped) or a video
file (`VIDEO_SUFFIXES`, its frames decoded with PyAV by `prediction/video.py`).

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


def expand_sources(
    sources: Sequence[str | Path], glob: str | None = None, exclude: str | Path | None = None
) -> Sources:
    """Image and video files named by `sources` (see the module docstring).

    `glob`: a shell pattern (`*.jpg`, `cam1_*`) the files found in folders must match (their
    name, or their path relative to the folder when the pattern holds a "/"); None: every
    image and video suffix. Files named directly are taken whatever their name. `exclude`: a
    folder not searched (predict's --out: a second run would predict its own overlays).

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
            files = _folder_files(path, glob, exclude)
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
    as `a/../b.png` and `b.png`, or through a link) would be predicted twice."""
    for path in files:
        key = os.path.realpath(path)
        if key in found.seen:
            continue
        found.seen.add(key)
        (found.videos if is_video(path) else found.images).append(path)


def _folder_files(folder: Path, glob: str | None, exclude: str | Path | None) -> list[Path]:
    """The files under `folder` (recursively, not into linked folders) matching `glob`, sorted
    by path; nothing from `exclude` or below it."""
    suffixes = IMAGE_SUFFIXES + VIDEO_SUFFIXES
    skip = os.path.realpath(exclude) if exclude is not None else None
    if skip == os.path.realpath(folder):
        raise ValueError(
            f"{folder}: the input folder is the output folder; choose an --out outside it (or "
            "a subfolder: it is left out of the search)"
        )
    files = []
    for root, dirs, names in os.walk(folder):
        if skip is not None:  # pruned, not filtered: an --out may hold a million overlays
            dirs[:] = [d for d in dirs if os.path.realpath(os.path.join(root, d)) != skip]
        for name in names:
            path = Path(root, name)
            if glob is None:
                ok = path.suffix.lower() in suffixes
            else:
                ok = fnmatch.fnmatch(
                    path.relative_to(folder).as_posix() if "/" in glob else name, glob
                )
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
    """One output file name per input (its overlay, mask or video name): unique within the
    list, and a plain name, never a path, whatever the input is called.

    The rule: the input's stem, its leading dots made "_" (`...png` would give `..`, and
    `.x` a hidden file) and an empty stem "_"; then every name that is not unique (compared
    ignoring case: macOS and Windows folders do) gets the input's index in front,
    `0007_frame`, and so on until none repeats (a file really called `0001_img.png` next to
    two `img.png`). Depends on the whole input list only, so a resumed run names every image
    as the first run did."""
    names = [_safe_stem(p.stem) for p in paths]
    for _ in range(len(names) + 1):  # each round lengthens the clashing names; ends soon
        counts = Counter(n.casefold() for n in names)
        clashing = [i for i, n in enumerate(names) if counts[n.casefold()] > 1]
        if not clashing:
            break
        for i in clashing:
            names[i] = f"{i:04d}_{names[i]}"
    return [n + suffix for n in names]


def _safe_stem(stem: str) -> str:
    """`stem` as a name inside an output folder: no leading dot (`..` would climb out of
    OUT/masks/, `.x` hides), never empty; path separators cannot occur in a stem."""
    stripped = stem.lstrip(".")
    return "_" * (len(stem) - len(stripped)) + stripped or "_"
