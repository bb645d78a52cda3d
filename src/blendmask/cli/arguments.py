"""Argument types shared by the subcommands, and parsers built from command requests."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

from blendmask.config.flags import (
    DEVICE_HELP,
    DEVICES,
    FIELD_DEFAULT,
    class_list,
    flag_of,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
)

__all__ = [
    "DEVICES",
    "DEVICE_HELP",
    "add_hidden_alias",
    "add_request_arguments",
    "class_list",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "probability",
    "request_from_args",
]

R = TypeVar("R")


def add_hidden_alias(
    parser: argparse.ArgumentParser, alias: str, dest: str, parse: Callable[[str], Any]
) -> None:
    """Accept `alias` as an old spelling of the option stored in `dest` (parsed by `parse`),
    left out of --help so that each option has one name there. Its default is SUPPRESS: the
    canonical option's default is the one that applies."""
    parser.add_argument(
        alias, dest=dest, type=parse, default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )


def add_request_arguments(parser: argparse.ArgumentParser, request_class: type) -> None:
    """One argument of `parser` per field of the request dataclass that has a `config.flags.Flag`
    (in field order), stored under the field's name (see `config.flags`)."""
    groups: dict[str, Any] = {}
    specs = [(item, flag_of(item)) for item in dataclasses.fields(request_class)]
    required_groups = {spec.group for _, spec in specs if spec is not None and spec.required}
    for item, spec in specs:
        if spec is None:
            continue
        default = item.default if spec.cli_default is FIELD_DEFAULT else spec.cli_default
        if default is dataclasses.MISSING:
            default = None
        options: dict[str, Any] = {"help": spec.help, "default": default}
        if spec.action == "append":  # argparse appends to a copy of the default: a list
            options["default"] = list(default)
        for key, value in (
            ("type", spec.parse),
            ("action", spec.action),
            ("choices", spec.choices),
            ("metavar", spec.metavar),
            ("nargs", spec.nargs),
        ):
            if value is not None:
                options[key] = value
        if spec.positional:
            parser.add_argument(item.name, **options)
            continue
        names = spec.names or (f"--{item.name.replace('_', '-')}",)
        target: Any = parser
        if spec.group is not None:
            if spec.group not in groups:
                required = spec.group in required_groups
                groups[spec.group] = parser.add_mutually_exclusive_group(required=required)
            target = groups[spec.group]
        elif spec.required:
            options["required"] = True
        target.add_argument(*names, dest=item.name, **options)
        for alias in spec.aliases:
            add_hidden_alias(parser, alias, item.name, spec.parse or str)


def request_from_args(request_class: type[R], args: argparse.Namespace, **more: Any) -> R:
    """The request of the parsed flags `args` (each flagged field from its namesake) and the
    fields without a flag from `more`."""
    values = {
        item.name: getattr(args, item.name)
        for item in dataclasses.fields(request_class)  # type: ignore[arg-type]
        if flag_of(item) is not None
    }
    return request_class(**values, **more)
