"""The one reader of the files blendmask writes with torch.save: `model.pt` and `last.pt`.

Such a file may come from anywhere (`--weights photo.jpg`, a truncated download, another tool's
checkpoint, a crafted pickle), so `read_checkpoint`:

1. recognises what is no torch.save file at all (empty, an image, text) before torch does;
2. loads with `torch.load(weights_only=True)`: no code in the file runs; a refusal is said in
   one line (torch's own message is a paragraph suggesting `weights_only=False`);
3. checks the type of every top-level field against the file kind's `Schema` (declared next
   to the writer: `checkpoint_io.MODEL_SCHEMA`, `training.checkpoint.TRAINING_SCHEMA`), then
   the field's own `check` (the tensors of a state dict, the parts of the RNG state, ...);
4. validates the stored config (`config.validate`, whose range checks bound every size).

Every refusal is a ValueError of one line naming the file and the field, with values shown
cut short (`config.checks.shown`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from blendmask.config import Config, from_dict
from blendmask.config.checks import shown

# The first bytes of files that users pass by mistake, to say what they are.
_OTHER_FORMATS = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"BM": "a BMP image",
    b"II*\x00": "a TIFF image",
    b"MM\x00*": "a TIFF image",
}
# torch.save writes a zip archive (PyTorch >= 1.6) or a pickle (protocol 2, the legacy format).
_TORCH_HEADERS = (b"PK\x03\x04", b"\x80")
# A state dict key longer than this is no parameter name (and would flood a message).
MAX_KEY_LENGTH = 1000

# What a value must be: a type or tuple of types (bool is never an int or a float here); a dict
# {key: Spec} for a dict with those keys (a key ending in "?" may be absent; other keys may be
# there too); a one-item list [Spec] for a list whose every item is that.
Spec = Any


@dataclass(frozen=True)
class Field:
    """A top-level field: what it must be, whether the file must have it, and a check of its
    content returning a problem (None: fine)."""

    spec: Spec
    required: bool = True
    check: Callable[[Any], str | None] | None = None


@dataclass(frozen=True)
class Schema:
    """What a kind of file holds: `kind` names it in messages ("model file"), `newest` is the
    highest `format_version` this code reads (an optional int field), `hint` may explain a dict
    that is not one."""

    kind: str
    newest: int
    fields: dict[str, Field]
    hint: Callable[[dict[Any, Any]], str] = field(default=lambda payload: "")


def describe(value: Any) -> str:
    """A value's type for messages: "a list", "an int", "a Tensor"."""
    return _a(type(value))


def _a(tp: type) -> str:
    name = tp.__name__
    return f"an {name}" if name[:1].lower() in "aeiou" else f"a {name}"


def mismatch(value: Any, spec: Spec, where: str) -> str | None:
    """Where and how `value` differs from `spec` ("rng.numpy.pos: expected int, got a str"),
    or None."""
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            return f"{where}: expected a dict, got {describe(value)}"
        for key, item_spec in spec.items():
            name = key.rstrip("?")
            if name not in value:
                if key.endswith("?"):
                    continue
                return f"{where}: no {name!r}"
            problem = mismatch(value[name], item_spec, f"{where}.{name}")
            if problem:
                return problem
        return None
    if isinstance(spec, list):
        if not isinstance(value, list):
            return f"{where}: expected a list, got {describe(value)}"
        for i, item in enumerate(value):
            problem = mismatch(item, spec[0], f"{where}[{i}]")
            if problem:
                return problem
        return None
    types = spec if isinstance(spec, tuple) else (spec,)
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        wanted = " or ".join(_a(t) for t in types)
        return f"{where}: expected {wanted}, got {describe(value)}"
    return None


def read_checkpoint(path: str | Path, schema: Schema) -> dict[str, Any]:
    """The payload of a file of `schema`'s kind, checked; FileNotFoundError / ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {schema.kind} not found")
    payload = _load(path, schema.kind)
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: not a {schema.kind} (it holds {describe(payload)})")
    # The version first: a newer format may have other fields.
    version = payload.get("format_version", 0)
    problem = mismatch(version, int, "format_version")
    if problem is None and version < 0:
        problem = f"format_version: expected >= 0, got {version}"
    if problem is None and version > schema.newest:
        problem = (
            f"format_version: format {version} is newer than this blendmask reads (up to "
            f"{schema.newest}): upgrade blendmask"
        )
    if problem:
        raise ValueError(f"{path}: field {problem}")
    missing = [name for name, f in schema.fields.items() if f.required and name not in payload]
    if missing:
        raise ValueError(
            f"{path}: not a {schema.kind} (no field {', '.join(missing)}; expected fields "
            f"{', '.join(schema.fields)}){schema.hint(payload)}"
        )
    for name, f in schema.fields.items():
        if name in payload:
            problem = mismatch(payload[name], f.spec, name)
            if problem is None and f.check is not None:
                problem = f.check(payload[name])
                problem = problem and f"{name}: {problem}"
            if problem:
                raise ValueError(f"{path}: field {problem}")
    return payload


def stored_config(path: str | Path, payload: dict[str, Any]) -> Config:
    """The validated Config of a payload's `config` field (a dict, as `read_checkpoint` made
    sure); ValueError naming the file and the key."""
    try:
        return from_dict(payload["config"]).validate()
    except (ValueError, OverflowError) as exc:  # ConfigError, or a value str() refuses
        raise ValueError(f"{path}: stored config is invalid: {exc}") from None


def _load(path: Path, kind: str) -> Any:
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        raise ValueError(f"{path}: an empty file, not a {kind}")
    for magic, what in _OTHER_FORMATS.items():
        if head.startswith(magic):
            raise ValueError(f"{path}: {what}, not a {kind}")
    if not head.startswith(_TORCH_HEADERS):
        raise ValueError(f"{path}: not a {kind} (no torch.save file: it starts with {head!r})")
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4": the error says more
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not our file"
        raise ValueError(f"{path}: not a readable {kind} ({_load_problem(exc)})") from None


def _load_problem(exc: BaseException) -> str:
    """torch.load's reason in a few words: its messages run to paragraphs of advice."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        reason = text.split("WeightsUnpickler error:", 1)[1].strip().split("\n")[0]
        if reason.startswith("Unsupported global"):
            name = reason.split("GLOBAL ", 1)[-1].split(" ")[0]
            return f"it holds a {name}, which only code could rebuild: refused, not run"
        return f"damaged or no torch.save file: {_clip(reason.rstrip('.'))}"
    line = (text.strip().splitlines() or [type(exc).__name__])[0]
    if line.startswith("[enforce fail"):  # "[enforce fail at inline_container.cc:180] . why"
        line = line.split("] ", 1)[-1].lstrip(". ")
    return f"damaged or no torch.save file: {_clip(line.split('. ')[0])}"


def _clip(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def state_dict_problem(state: dict[Any, Any]) -> str | None:
    """What is wrong with a state dict (names -> finite tensors), or None."""
    if not state:
        return "no tensors"
    for key, value in state.items():
        if not isinstance(key, str) or len(key) > MAX_KEY_LENGTH:
            return f"expected tensor names, got the key {shown(key)}"
        if not isinstance(value, torch.Tensor):
            return f"{shown(key)}: expected a tensor, got {describe(value)}"
        if value.is_floating_point() and not bool(value.isfinite().all()):
            return f"{key}: NaN or infinite values (a diverged or damaged model)"
    return None


def non_negative(value: int) -> str | None:
    return None if value >= 0 else f"expected >= 0, got {value}"
