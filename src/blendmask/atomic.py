"""Writing files so that nothing is lost and nothing is written through a planted link:
`atomic_write`, `open_output` / `AppendFile` and the errors they raise.

A file is written to a uniquely named temp file in its own folder, flushed to disk, then
renamed over the target: a reader, or a run resumed after a crash, sees either the previous
file or the complete new one. On any failure the temp file is removed (a 90 MB leftover would
keep a full disk full) and the error is one line naming the path and the reason.

Temp files are named `.NAME.PID.XXXXXXXX.tmp`; a process killed mid-write (SIGKILL cannot be
caught) leaves one behind, which `remove_stale_temps` deletes once that process is gone.

Every file the package writes goes through here. None of them follows a symbolic link at its
own name (`open_output` opens with O_NOFOLLOW; `atomic_write` refuses a link at the target), so
a link planted at OUT/.lock or OUT/predictions.jsonl cannot make a run truncate or append to
the file it points to; a FIFO or device there is refused too instead of blocking. The folder the
user names (--out) may itself be a link; the subfolders the package makes in it are checked
with `make_folder`.

The bottom layer: imports nothing from the rest of the package.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

# errno -> the reason shown to the user.
_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "not a directory (a file is in the way)",
    errno.EEXIST: "not a directory (a file is in the way)",
    errno.EISDIR: "is a directory",
    errno.ENAMETOOLONG: "file name too long",
}
_LINK_REASON = "it is a symbolic link (blendmask does not write through links; remove it)"
_NOT_FILE_REASON = "it is not a regular file"
# Absent where the OS lacks them (Windows): opening then follows links as `open` does.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
# `.last.pt.1234.k3j_x9ab.tmp` (this module) and `.last.pt.1234.tmp` (older versions).
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)(\.[A-Za-z0-9_]+)?\.tmp$")


class WriteError(OSError):
    """Writing `filename` failed; `str()` is one line naming it and the reason."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Call `write(f)` on a temp file next to `path`, fsync it, then rename it to `path`.

    Creates the parent folders. The file gets the permissions a plain `open(path, "w")` would
    give (mkstemp's are 0600). Raises `WriteError` (an OSError with the errno) naming `path`
    when the folder cannot be made or the file cannot be written; the previous `path` is then
    untouched and no temp file is left. Other exceptions of `write` pass through, also after
    removing the temp file.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The rename would replace a link rather than follow it, but a link where an output
        # goes was planted by someone: say so instead of quietly replacing it.
        refuse_link(path)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent
        )
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
        tmp = None
    except (OSError, RuntimeError) as exc:
        error = describe_write_error(path, exc)
        if error is exc:
            raise
        raise error from exc
    finally:
        # Also on KeyboardInterrupt: a half-written temp file is never of use.
        if tmp is not None:
            _remove_quietly(Path(tmp))
    return path


def describe_write_error(path: Path, exc: BaseException) -> BaseException:
    """`exc` (raised while writing `path`) as a one-line `WriteError`, or `exc` itself when it
    is not about writing (a RuntimeError of the serialiser that is no disk problem)."""
    if isinstance(exc, WriteError):
        return exc
    code = _find_errno(exc)
    if code is None and isinstance(exc, RuntimeError):
        # torch.save writing by name fails with "[enforce fail at inline_container.cc] ...
        # file write failed" and no errno: name the likely cause from the folder's state.
        if not _looks_like_write_failure(str(exc)):
            return exc
        code = _guess_errno(path.parent)
    if code is None:
        return WriteError(
            0, str(exc).splitlines()[0] if str(exc) else type(exc).__name__, str(path)
        )
    reason = _REASONS.get(code, os.strerror(code).lower())
    if code in (errno.ENOTDIR, errno.EEXIST):
        blocker = _file_in_the_way(path)
        if blocker is not None:
            reason = f"not a directory ({blocker} is a file)"
    return WriteError(code, reason, str(path))


def _find_errno(exc: BaseException | None) -> int | None:
    """The errno of `exc` or of an exception it was raised from / during (torch.save wraps the
    file object's OSError in a RuntimeError, or raises the OSError with one as context)."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno:
            return exc.errno
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def _looks_like_write_failure(message: str) -> bool:
    text = message.lower()
    return any(s in text for s in ("enforce fail", "file write failed", "unexpected pos"))


def _guess_errno(folder: Path) -> int | None:
    try:
        if shutil.disk_usage(folder).free < 1 << 20:
            return errno.ENOSPC
    except OSError:
        return None
    if not os.access(folder, os.W_OK):
        return errno.EACCES
    return None


def _file_in_the_way(path: Path) -> Path | None:
    """The first of `path`'s ancestors (or `path`) that exists and is not a folder."""
    for parent in [*reversed(path.parents), path]:
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def _default_mode() -> int:
    """0666 minus the umask: what `open(path, "w")` would have created."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass  # already gone, or the folder became unwritable: nothing more to do


def check_writable(folder: str | Path) -> Path:
    """Prove that a file can be made in `folder` (creating it and any missing parents for the
    test), so a long job fails at its start rather than at its first save. The folders it
    created are removed again: a command that then fails its other checks leaves nothing
    behind. Raises `WriteError`."""
    folder = Path(folder)
    missing = [p for p in (folder, *folder.parents) if not os.path.lexists(p)]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".write-test.{os.getpid()}.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise describe_write_error(folder, exc) from exc
    finally:
        for created in missing:  # deepest first
            with contextlib.suppress(OSError):  # not empty: another process wrote there
                created.rmdir()
    return folder


def refuse_link(path: str | Path) -> None:
    """`WriteError` naming `path` when it is a symbolic link (dangling or not)."""
    if os.path.islink(path):
        raise WriteError(errno.ELOOP, _LINK_REASON, str(path))


def make_folder(path: str | Path) -> Path:
    """`path` as a folder (made with its parents when missing), refused (`WriteError`) when it
    is a symbolic link: for the subfolders the package makes inside an output folder."""
    path = Path(path)
    try:
        refuse_link(path)
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise describe_write_error(path, exc) from exc
    return path


def open_output(path: str | Path, flags: int) -> int:
    """`os.open(path, flags)` for writing without following a link at `path` and without
    blocking on a FIFO there; the descriptor of a regular file, or `WriteError` naming `path`
    (a link, a FIFO / device / folder, or the OS's reason). Makes the parent folder when
    `flags` has O_CREAT."""
    path = Path(path)
    try:
        if flags & os.O_CREAT:
            path.parent.mkdir(parents=True, exist_ok=True)
        refuse_link(path)  # O_NOFOLLOW's ELOOP does not say why; this does
        fd = os.open(path, flags | _NOFOLLOW | _CLOEXEC | _NONBLOCK, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a link made between the check and the open
            raise WriteError(errno.ELOOP, _LINK_REASON, str(path)) from None
        raise describe_write_error(path, exc) from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        # EEXIST: something other than a file is in the way (the CLI: exit 2, fixable).
        raise WriteError(errno.EEXIST, _NOT_FILE_REASON, str(path))
    if _NONBLOCK:
        os.set_blocking(fd, True)
    return fd


class AppendFile:
    """A file opened for appending (`open_output`: no link followed, created when missing)
    whose `write` goes to the OS at once and whose errors (a full disk) name the file."""

    def __init__(self, path: str | Path, *, readable: bool = False) -> None:
        self.path = Path(path)
        access = os.O_RDWR if readable else os.O_WRONLY
        self.fd: int | None = open_output(self.path, access | os.O_APPEND | os.O_CREAT)

    def write(self, data: bytes) -> None:
        """Append all of `data` (unbuffered: a SIGKILL after this loses nothing of it)."""
        if self.fd is None:
            raise ValueError(f"{self.path}: write after close")
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as exc:
            raise describe_write_error(self.path, exc) from exc

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> AppendFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, owned by someone else
    return True


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temp files `atomic_write` left in `folder` when its process was killed
    (their process no longer exists); returns what was removed."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _TEMP_NAME.match(entry.name)
        if match is None or not entry.is_file() or _pid_alive(int(match["pid"])):
            continue
        _remove_quietly(entry)
        removed.append(entry)
    return removed


def write_json(path: str | Path, data: Any) -> None:
    """Write `data` as indented JSON atomically (`atomic_write`), so readers never see half a
    file and a failed write names the path and the reason."""
    text = json.dumps(data, indent=2).encode()
    atomic_write(path, lambda f: f.write(text))
