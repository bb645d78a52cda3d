"""One blendmask process at a time per output folder.

Two `predict` (or `eval`) runs into the same --out would each write results.json and the
overlays, and the second rename would silently replace the first run's results. `OutputLock`
holds an exclusive `flock` on OUT/.lock for the whole run; a second process is refused at its
start with the pid of the one writing. The kernel drops the lock when its process ends, however
it ends (crash, SIGKILL), so a stale .lock file never blocks anyone. A run that ends (cleanly
or with an error) deletes the file while still holding the lock; a process that locked the
file just before it was deleted sees that the path no longer names its file and tries again,
so two processes never hold two different .lock files of one folder. The file is opened without
following a link (`atomic.open_output`): a link planted at OUT/.lock is refused.

A forked child (a DataLoader worker) does not keep the lock: flock belongs to the open file,
which a fork shares, so a worker outliving its killed parent by the seconds its watchdog takes
would refuse the process that torchrun restarts in its place ("another blendmask process is
writing OUT"). Children close their copy right after the fork.

Where `fcntl` does not exist (Windows) there is no lock; writes are still atomic.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from types import TracebackType

from blendmask.atomic import open_output

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"
# The lock files this process holds open, closed in forked children (see the docstring).
_HELD: set[int] = set()


def _close_held_in_child() -> None:
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_in_child)


class OutputLock:
    """`with OutputLock(out):` holds OUT/.lock (creating OUT); ValueError when another process
    holds it: "another blendmask process is writing OUT (pid N)".

    Not re-entrant: a second `OutputLock` on the same folder in the same process is refused
    too (flock locks belong to the open file, not to the process).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> OutputLock:
        self.folder.mkdir(parents=True, exist_ok=True)  # the user's --out: may be a link
        if fcntl is None:
            return self
        for _ in range(100):  # another process deleting the file in between: rare, and brief
            fd = open_output(self.path, os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                raise ValueError(
                    f"another blendmask process is writing {self.folder} (pid {holder}); wait "
                    "for it to finish or choose another --out"
                ) from None
            except BaseException:
                os.close(fd)
                raise
            if _names(self.path, fd):
                break
            os.close(fd)  # its holder deleted it after we opened it: lock the new one
        else:
            raise ValueError(f"cannot lock {self.path}: it keeps being replaced")
        # Who holds the lock, for the message another process prints.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        _HELD.add(fd)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._fd is not None and fcntl is not None:
            # Deleted before unlocking (see the module docstring); gone already is fine.
            if _names(self.path, self._fd):
                with contextlib.suppress(OSError):
                    self.path.unlink()
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            _HELD.discard(self._fd)
            os.close(self._fd)
            self._fd = None


def _names(path: Path, fd: int) -> bool:
    """Whether `path` is still the file open as `fd` (not deleted or replaced since)."""
    try:
        on_disk = os.lstat(path)
    except OSError:
        return False
    mine = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino)


def _read_pid(fd: int) -> str:
    """The pid the holder wrote into the lock file, or "unknown" (it may not have yet)."""
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"
