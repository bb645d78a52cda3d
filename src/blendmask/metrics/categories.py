"""Which ground-truth category each of a model's labels is, when the model is scored on a json.

A model file keeps the categories it was trained on (`cfg.data.category_ids` /
`category_names`, contiguous label -> COCO id / name). A validation json may number them
differently (ids swapped, renumbered) or lack some: mapping labels to the json's categories by
position then silently scores class A's masks against class B's ground truth. `match_categories`
maps by name and id, and refuses with a message naming the mismatch when it cannot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def match_categories(
    model_ids: Sequence[int],
    model_names: Sequence[str],
    json_categories: Mapping[int, str],
    *,
    num_classes: int,
    source: str | Path = "the ground-truth json",
) -> list[int]:
    """The json category id of each of the model's `num_classes` contiguous labels.

    Rules, in order:
    1. the model stores no categories (an old file, a model built from a config): labels are
       the json's categories sorted by id, as training assigns them; the counts must agree;
    2. every label's (id, name) is the json's (names compared when both have one): by id;
    3. every label's name is one json category's name (ids swapped or renumbered): by name;
    4. otherwise ValueError naming `source` and the labels that match nothing.
    A json with more categories than the model is fine (those score AP 0: nothing predicts
    them); a label without a json category is not (its detections would have nowhere to go).

    Args:
        model_ids: COCO id of each label as trained (empty: unknown).
        model_names: name of each label as trained (empty: unknown).
        json_categories: {category id: name} of the ground truth.
        num_classes: the model's number of labels.
        source: the json, for messages.
    """
    json_ids = sorted(json_categories)
    if not model_ids and not model_names:
        if len(json_ids) != num_classes:
            raise ValueError(
                f"{source}: has {len(json_ids)} categories but the model predicts {num_classes} "
                "classes and stores no category ids or names to match them by"
            )
        return json_ids
    for what, values in (("ids", model_ids), ("names", model_names)):
        if values and len(values) != num_classes:
            raise ValueError(
                f"the model stores {len(values)} category {what} for {num_classes} classes"
            )
    pairs = _pairs(model_ids, model_names)
    if model_ids and all(_same_category(i, n, json_categories) for i, n in pairs):
        return [int(i) for i in model_ids]
    by_name = _ids_by_name(json_categories)
    matched = [by_name.get(n) for n in model_names]
    if model_names and all(m is not None for m in matched):
        return [int(m) for m in matched if m is not None]
    unmatched = [
        f"{label} ({_describe(i, n)})"
        for label, (i, n) in enumerate(pairs)
        if not _same_category(i, n, json_categories) and by_name.get(n) is None
    ]
    json_list = ", ".join(f"{i} {json_categories[i]!r}" for i in json_ids[:20])
    if len(json_ids) > 20:
        json_list += f", ... ({len(json_ids)} in all)"
    problem = (
        f"label(s) {', '.join(unmatched)} have no category there"
        if unmatched
        else "some labels match it only by id and others only by name"
    )
    raise ValueError(
        f"{source}: the model's categories cannot be matched to the json's by id or by name: "
        f"{problem}; the json has {json_list or 'no categories'}"
    )


def _pairs(ids: Sequence[int], names: Sequence[str]) -> list[tuple[int | None, str | None]]:
    """(id or None, name or None) of each label."""
    count = max(len(ids), len(names))
    return [(ids[k] if ids else None, names[k] if names else None) for k in range(count)]


def _same_category(
    category_id: int | None, name: str | None, json_categories: Mapping[int, str]
) -> bool:
    """The json has `category_id`, and with the same name when both sides name it."""
    if category_id is None or int(category_id) not in json_categories:
        return False
    json_name = json_categories[int(category_id)]
    return name is None or not json_name or json_name == name


def _ids_by_name(json_categories: Mapping[int, str]) -> dict[str, int | None]:
    """name -> json id; None for a name two categories share (ambiguous, matches nothing)."""
    by_name: dict[str, int | None] = {}
    for category_id, name in json_categories.items():
        by_name[name] = None if name in by_name else int(category_id)
    return by_name


def _describe(category_id: int | None, name: str | None) -> str:
    parts = [] if category_id is None else [f"id {category_id}"]
    return " ".join(parts + ([] if name is None else [repr(name)]))
