"""YAML as config files and `--set` values are read: strict, bounded, and with one-line errors.

PyYAML's `safe_load` runs no code, but it takes some documents that cost far more than their
size or silently mean something else:

- an alias bomb (`&a [1, 1, ...]`, `&b [*a, *a, ...]`, ...) is a few hundred bytes that expand
  to 9**9 items once a message formats the value or a check walks it: aliases (`*name`, and so
  the merge key `<<: *name`) are refused; a config has no use for them;
- a duplicate key (two `solver:` blocks) silently keeps the last one: refused, with both lines;
- nesting thousands deep (`[[[[...]]]]`) overflows the composer's recursion: refused past
  `MAX_DEPTH` levels (a config needs five: section, subsection, key, list, item);
- a file of many megabytes: refused past `MAX_CONFIG_BYTES` (configs are a few KB).

Errors are ConfigError (a ValueError) of one line, `source:line:column: problem`, instead of
PyYAML's multi-line excerpt with a caret. `convert_value` turns a YAML or `--set` value into a
config field's type.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

from blendmask.config.checks import ConfigError, shown

MAX_DEPTH = 20
MAX_CONFIG_BYTES = 1 << 20


class StrictLoader(yaml.SafeLoader):
    """SafeLoader without aliases or duplicate keys, and with a bounded nesting depth."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise ComposerError(None, None, "aliases (*name) are not allowed in a config", mark)
        if self._depth >= MAX_DEPTH:
            mark = self.peek_event().start_mark
            raise ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep", mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                line = first_line.setdefault(key, key_node.start_mark.line)
            except TypeError:  # an unhashable key: the base class says so with its mark
                continue
            if line != key_node.start_mark.line:
                raise ConstructorError(
                    None, None, f"duplicate key {shown(key)} (first at line {line + 1})",
                    key_node.start_mark,
                )  # fmt: skip
        return super().construct_mapping(node, deep=deep)


def yaml_error_line(exc: yaml.YAMLError) -> str:
    """`line:column: problem` of a PyYAML error (its first line when it has no position)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        problem = exc.problem or exc.context or "not valid YAML"
        opened = exc.context_mark if exc.problem and exc.context else None
        if opened is not None:  # e.g. "(while parsing a flow sequence at 3:12)"
            problem += f" ({exc.context} at {opened.line + 1}:{opened.column + 1})"
        return f"{mark.line + 1}:{mark.column + 1}: {problem}"
    return (str(exc).strip().splitlines() or ["not valid YAML"])[0]


def load_yaml(text: str, source: str | Path) -> Any:
    """The value of the YAML document `text`; ConfigError `source:line:col: problem`."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}:{yaml_error_line(exc)}") from None
    except (ValueError, OverflowError) as exc:  # an integer literal of over 4300 digits
        raise ConfigError(f"{source}: {shown(str(exc))}") from None


def load_yaml_file(path: str | Path) -> Any:
    """The value of a YAML config file, after the checks of `load_yaml` and its size."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{path}: {size} bytes is no config file (at most {MAX_CONFIG_BYTES} bytes)"
        )
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file ({exc.reason} at byte {exc.start})") from None
    return load_yaml(text, path)


def convert_value(key: str, value: Any, tp: Any) -> Any:
    """Convert `value` (from YAML or a `--set` string) to the annotated config field type `tp`
    (bool, int, float, str or a list of those), or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):
            value = load_yaml(value, key) if value.strip() else []
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            value = [value]
        return [convert_value(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "off", "0"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{key}: expected true/false, got {shown(value)}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {shown(value)}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {shown(value)}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {shown(value)}")
        try:  # an int over 1e308 overflows
            if isinstance(value, (int, float, str)):
                return float(value)
        except (ValueError, OverflowError):
            pass
        raise ConfigError(f"{key}: expected a number, got {shown(value)}")
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {shown(value)}")
        try:
            return "" if value is None else str(value)
        except ValueError:  # an int of over 4300 digits
            raise ConfigError(f"{key}: expected a string, got {shown(value)}") from None
    raise ConfigError(f"{key}: unsupported field type {tp!r}")
