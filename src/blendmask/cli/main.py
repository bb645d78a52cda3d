"""The `blendmask` command: argument parsing and dispatch only; the work lives in the package.

Each subcommand is one module of this package with `add_arguments(parser)` and `run(args)`;
the first line of its docstring is its help text.

Messages of the library (`logging.getLogger("blendmask")`) are printed while a command runs:
INFO lines on stdout, warnings on stderr, the text alone, as the commands printed them before
they logged (`command_logging`). A program importing blendmask configures logging itself.

Exit codes: 0 success, 2 bad usage, bad input or a file system problem the user can fix (no
space, permissions, a path that is no folder), 1 anything else; 130 interrupted. Errors are one
line naming the file and the problem, not a traceback; `BLENDMASK_DEBUG=1` re-raises them for
the traceback. Programming errors (TypeError, ...) keep their traceback.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType

from blendmask import __version__
from blendmask.cli import (
    analyze,
    config,
    convert,
    demo,
    evaluate,
    explain,
    export,
    predict,
    presets,
    serve,
    shapes,
    train,
)
from blendmask.config import ConfigError

# name -> module, in the order `blendmask --help` lists them.
SUBCOMMANDS: dict[str, ModuleType] = {
    "demo": demo,
    "shapes": shapes,
    "train": train,
    "analyze": analyze,
    "eval": evaluate,
    "predict": predict,
    "explain": explain,
    "export": export,
    "serve": serve,
    "convert": convert,
    "presets": presets,
    "config": config,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blendmask",
        description="BlendMask instance segmentation: train, evaluate, predict, export.",
    )
    parser.add_argument("--version", action="version", version=f"blendmask {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in SUBCOMMANDS.items():
        doc = (module.__doc__ or "").strip().splitlines()
        p = sub.add_parser(name, help=doc[0] if doc else None)
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return parser


DEBUG_ENV = "BLENDMASK_DEBUG"
# OSErrors the user can fix (a path, permissions, disk space) exit 2 like bad input.
USER_ERRNOS = frozenset(
    {
        errno.ENOENT,
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENOSPC,
        errno.EDQUOT,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.EEXIST,
        errno.ENAMETOOLONG,
        errno.ELOOP,  # a link where an output goes (`atomic.refuse_link`)
    }
)
# Characters of an error message printed: enough for a paragraph naming files and keys.
MAX_MESSAGE = 2000
# torch re-raises an error of a DataLoader worker with the worker's whole traceback as message.
_WORKER_ERROR = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback")


class ConsoleHandler(logging.Handler):
    """INFO and below to stdout, WARNING and above to stderr, the message alone. The streams are
    looked up for each record, so redirecting `sys.stdout` (pytest's capsys, contextlib's
    redirect_stdout) redirects the messages too."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - logging's own convention: report, never raise
            self.handleError(record)


@contextmanager
def command_logging(level: int = logging.INFO) -> Iterator[None]:
    """Print the `blendmask` loggers' records at `level` and above while a command runs, then
    put the logger back as it was (`main` may be called many times in one process)."""
    logger = logging.getLogger("blendmask")
    handler = ConsoleHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with command_logging():
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, ConfigError, OSError, RuntimeError, ArithmeticError, MemoryError) as exc:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        code = exit_code(exc)
        hint = f" (set {DEBUG_ENV}=1 for the traceback)" if code == 1 else ""
        print(f"blendmask {args.command}: error: {one_line(exc)}{hint}", file=sys.stderr)
        return code


def exit_code(exc: BaseException) -> int:
    """2 for bad input and fixable file system problems, 1 for the rest."""
    if isinstance(exc, (ValueError, ConfigError)):
        return 2
    if isinstance(exc, OSError):
        # Raised by name (FileNotFoundError("...")) they carry no errno; their type says it.
        user_types = (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError)
        return 2 if exc.errno in USER_ERRNOS or isinstance(exc, user_types) else 1
    return 1


def one_line(exc: BaseException) -> str:
    """The message of `exc` as the user should read it: a DataLoader worker's error as the
    original message (without the worker's traceback), an OSError as `path: reason`, and a
    RuntimeError's first line."""
    message = str(exc)
    if _WORKER_ERROR.match(message):
        message = _worker_message(message, type(exc).__name__)
    elif isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        # str() would read "[Errno 13] Permission denied: 'out/x'"; a WriteError is one line.
        if type(exc).__str__ is OSError.__str__:
            message = f"{exc.filename}: {exc.strerror.lower()}"
    lines = [line for line in message.splitlines() if line.strip()]
    if isinstance(exc, (RuntimeError, OSError)) and lines:
        return _clip(lines[0])
    # Bad-input messages name the file and the problem on their first line; a message that runs
    # on (a library's own) is still printed as one line, and never as megabytes.
    return _clip(" ".join(line.strip() for line in lines)) or type(exc).__name__


def _clip(line: str, limit: int = MAX_MESSAGE) -> str:
    return (
        line if len(line) <= limit else f"{line[:limit]}... ({len(line) - limit} more characters)"
    )


def _worker_message(message: str, name: str) -> str:
    """The original error's message from torch's "Caught X in DataLoader worker process N.
    Original Traceback ...": the lines after the last traceback line, less "X: "."""
    lines = message.rstrip("\n").splitlines()
    last_frame = max((i for i, line in enumerate(lines) if line.startswith(" ")), default=0)
    original = "\n".join(lines[last_frame + 1 :]).strip()
    return re.sub(rf"^(?:[\w.]+\.)?{re.escape(name)}: ", "", original) or message


if __name__ == "__main__":
    sys.exit(main())
