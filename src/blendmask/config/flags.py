"""Command requests: a command's flags written once, as the fields of a frozen dataclass.

Each field of a request (`prediction.request.PredictRequest`, `training.request.TrainRequest`,
`evaluation.request.EvalRequest`) is one flag of its command: the field gives the name
(the Python API's keyword argument), the type and the default; `flag(...)` puts in its metadata
how the command line spells, parses and explains it (`Flag`). The CLI builds its parser from the
fields (`cli.arguments.add_request_arguments`) and the request from what it parsed; the Python
API builds the same request from keyword arguments (`make_request`). A new flag is one field
plus the code that reads it.

Also here: the argparse value types of the flags (`positive_int`, `probability`, ...), below
every command so that a request of any layer can name them.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field
from typing import Any, TypeVar

from blendmask.config import ConfigError, check_probability

DEVICES = ("cpu", "cuda", "auto")
DEVICE_HELP = "cpu, cuda, or auto: cuda when available (default: %(default)s)"
FLAG = "flag"  # the key of a request field's metadata that holds its `Flag`
R = TypeVar("R")
FIELD_DEFAULT: Any = object()  # `Flag.cli_default` when the command line's is the field's


@dataclass(frozen=True)
class Flag:
    """How the command line gives one request field.

    `names`: the option strings (default: `--` and the field name with dashes); `positional`:
    an argument without a dash instead. `aliases`: old spellings, still parsed, left out of
    --help. `parse`: the argparse type; `action`: argparse's ("store_true", "store_false" for a
    `--no-X` flag whose field is True by default, "append", `argparse.BooleanOptionalAction`).
    `group`: a mutually exclusive group, required when one of its flags is `required`.
    `cli_default`: the command line's default where it is not the Python API's."""

    help: str
    names: tuple[str, ...] = ()
    positional: bool = False
    aliases: tuple[str, ...] = ()
    parse: Callable[[str], Any] | None = None
    action: Any = None
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    nargs: str | None = None
    required: bool = False
    group: str | None = None
    cli_default: Any = FIELD_DEFAULT


def flag(default: Any = MISSING, **options: Any) -> Any:
    """A request field with its `Flag` (`options`); without `default` the field is required."""
    return field(default=default, metadata={FLAG: Flag(**options)})


def flag_of(item: dataclasses.Field) -> Flag | None:
    return item.metadata.get(FLAG)


def make_request(cls: type[R], request: R | None, kwargs: dict[str, Any]) -> R:
    """The request a command function runs: `request` with the keyword arguments `kwargs`
    replaced, or `cls(**kwargs)` when there is none (the Python API's keyword form)."""
    if request is None:
        return cls(**kwargs)
    return dataclasses.replace(request, **kwargs) if kwargs else request  # type: ignore[type-var]


def freeze_sequences(request: Any, *names: str) -> None:
    """In `__post_init__` of a frozen request: its list fields `names` as tuples, so that the
    request cannot change once made (a caller's list is not shared either)."""
    for name in names:
        value = getattr(request, name)
        if value is not None and not isinstance(value, (str, tuple)):
            object.__setattr__(request, name, tuple(value))


# ---------------------------------------------------------------------------------------------
# argparse value types


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (float() alone takes "nan" and "inf", and nan <= 0
    is False: `--minutes nan` would pass as a time budget that never ends)."""
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite positive number, got {text}")
    return value


def probability(text: str) -> float:
    """argparse type for thresholds: a finite number in [0, 1] (float() alone takes "nan")."""
    try:
        return check_probability("value", float(text))
    except (ValueError, ConfigError) as exc:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text}") from exc


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def class_list(text: str) -> list[int | str]:
    """argparse type of --classes: comma-separated class names or 0-based labels."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected class names or 0-based labels, got {text!r}")
    return [int(item) if item.isdigit() else item for item in items]
