"""One blendmask process at a time per output folder.

Two `predict` (or `eval`) runs into the same --out would each write results.json and the
overlays, and the second rename would silently replace the first run's results. `OutputLock`
holds an exclusive `flock` on OUT/.lock for the whole run; a second process is refused at its
start with the pid of the one writing. The kernel drops the lock when its process ends, however
it ends (crash, SIGKILL), so a stale .lock file never blocks anyone; the file is left in place
(removing it would let a third process lock a new file while the second holds the old one).

Where `fcntl` does not exist (Windows) there is no lock; writes are still atomic.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"


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
        self.folder.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise ValueError(
                f"another blendmask process is writing {self.folder} (pid {holder}); wait for "
                "it to finish or choose another --out"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        # Who holds the lock, for the message another process prints.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._fd is not None and fcntl is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _read_pid(fd: int) -> str:
    """The pid the holder wrote into the lock file, or "unknown" (it may not have yet)."""
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"
