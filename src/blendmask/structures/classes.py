"""Class tables: a 0-based label's name, and the labels a user names (class names or labels).

Shared by `Detections` (its names, `filter`), the overlays (`blendmask.visualization`) and the
commands' `--classes`; a module of its own so that drawing needs nothing else of `structures`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def resolve_classes(classes: Sequence[int | str], class_names: Sequence[str] | None) -> list[int]:
    """0-based labels of `classes`, each a class name (of `class_names`) or a 0-based label.

    ValueError naming the first class that is neither (a label must be in [0, C) when the C
    class names are known, >= 0 otherwise)."""
    names = list(class_names or [])
    labels = []
    for item in classes:
        if isinstance(item, str):
            if item not in names:
                known = ", ".join(names) if names else "none stored with this model"
                raise ValueError(f"unknown class {item!r} (class names: {known})")
            labels.append(names.index(item))
        elif isinstance(item, bool) or not isinstance(item, (int, np.integer)):
            raise ValueError(f"class {item!r}: expected a class name or a 0-based label")
        elif item < 0 or (names and item >= len(names)):
            bound = f"[0, {len(names)})" if names else ">= 0"
            raise ValueError(f"class label {item} out of range (0-based labels are {bound})")
        else:
            labels.append(int(item))
    return labels


def class_name(label: int, class_names: Sequence[str] | None) -> str:
    """The name of a 0-based label ("class <label>" where `class_names` has none)."""
    if class_names and 0 <= label < len(class_names):
        return class_names[label]
    return f"class {label}"
