"""One way to put a state dict into a module and say what did not fit.

Every weight loader (ImageNet ResNet files, the EfficientNet-Lite0 file, AdelaiDet checkpoints,
`model.pt` files) compares the file's tensors with the module's, key by key and shape by shape,
before loading, so that a wrong file fails with one message naming the file and the keys
instead of PyTorch's wall of text, and so that a partial load says exactly what it skipped.

It lives in modeling/ (below interop/ and the model-file code) because every loader, including
`modeling/efficientnet.py`, can import it from there without an import going up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from torch import Tensor, nn

# Keys shown per list in a summary; the rest are counted.
SUMMARY_KEYS = 5


@dataclass(frozen=True)
class ShapeMismatch:
    """A key present in both with different shapes (file shape, module shape)."""

    key: str
    file_shape: tuple[int, ...]
    model_shape: tuple[int, ...]


@dataclass
class StateDictReport:
    """How a state dict fits a module.

    Fields:
        source: what the tensors came from (a file path), for messages.
        loaded: module keys given a tensor of the right shape (module order).
        missing: module keys the state dict lacks (module order).
        unexpected: state-dict keys the module has no place for (state-dict order).
        mismatched: keys in both whose shapes differ (module order).
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[ShapeMismatch] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every module tensor was given and nothing was left over."""
        return not (self.missing or self.unexpected or self.mismatched)

    @property
    def num_problems(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.mismatched)

    def counts(self) -> str:
        """E.g. "2 missing, 1 unexpected, 1 shape-mismatched" (empty when complete)."""
        parts = [
            f"{n} {what}"
            for n, what in (
                (len(self.missing), "missing"),
                (len(self.unexpected), "unexpected"),
                (len(self.mismatched), "shape-mismatched"),
            )
            if n
        ]
        return ", ".join(parts)

    def problem_lines(
        self, *, limit: int | None = SUMMARY_KEYS, name: Callable[[str], str] | None = None
    ) -> list[str]:
        """One line per non-empty list: its count and its first `limit` keys (None: all).

        `name` shows a key another way (e.g. with the name it has in a foreign checkpoint)."""
        show = name or (lambda k: k)
        lists = (
            ("missing", [show(k) for k in self.missing]),
            ("unexpected", [show(k) for k in self.unexpected]),
            (
                "shape-mismatched",
                [
                    f"{show(m.key)}: file {list(m.file_shape)} vs model {list(m.model_shape)}"
                    for m in self.mismatched
                ],
            ),
        )
        return [f"{what} ({len(items)}): {_first(items, limit)}" for what, items in lists if items]

    def summary(
        self, *, limit: int | None = SUMMARY_KEYS, name: Callable[[str], str] | None = None
    ) -> str:
        """One paragraph: the source and, per non-empty list, a count and the first keys."""
        if self.complete:
            return f"{self.source}: all {len(self.loaded)} tensors fit"
        return f"{self.source}: " + "; ".join(self.problem_lines(limit=limit, name=name))


def _first(items: list[str], limit: int | None) -> str:
    if limit is None or len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f", ... and {len(items) - limit} more"


def compare_state_dict(
    expected: Mapping[str, Tensor], state: Mapping[str, Tensor], *, source: str
) -> StateDictReport:
    """Compare `state` with the module state `expected` (keys and shapes, not values)."""
    report = StateDictReport(source=source)
    for key, target in expected.items():
        if key not in state:
            report.missing.append(key)
        elif tuple(state[key].shape) != tuple(target.shape):
            report.mismatched.append(
                ShapeMismatch(key, tuple(state[key].shape), tuple(target.shape))
            )
        else:
            report.loaded.append(key)
    report.unexpected = [k for k in state if k not in expected]
    return report


def load_state_dict_checked(
    module: nn.Module,
    state: Mapping[str, Tensor],
    *,
    source: str,
    strict: bool = True,
    what: str = "the weights do not fit the model",
) -> StateDictReport:
    """Load `state` into `module` after comparing keys and shapes.

    Args:
        module: the module to fill.
        state: tensors under the module's names.
        source: the file they came from, named first in messages.
        strict: raise when anything is missing, unexpected or mis-shaped; otherwise load what
            fits (with the module's dtype) and leave the rest of the module as it is.
        what: the words after the source in the error ("<source>: <what>: 2 missing (...)").

    Returns:
        The report (complete when strict).

    Raises:
        ValueError: strict and the state does not fit; one paragraph with counts and the first
            keys of each list.
    """
    expected = module.state_dict()
    report = compare_state_dict(expected, state, source=source)
    if strict and not report.complete:
        raise ValueError(f"{source}: {what}: " + "; ".join(report.problem_lines()))
    full = dict(expected)
    for key in report.loaded:
        full[key] = state[key].to(dtype=expected[key].dtype)
    # Every key is in `full`: the strict load cannot fail, and a partial load keeps the rest.
    module.load_state_dict(full, strict=True)
    return report
