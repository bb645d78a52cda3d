"""COCO panoptic reading (data/panoptic_format.py, data/panoptic.py) and `shapes --panoptic`.

The training view is checked pixel by pixel on a hand-made image, against the instances json
of the synthetic data, and every bad input must give one line naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from blendmask.data.coco import CocoDataset
from blendmask.data.panoptic import CocoPanopticDataset
from blendmask.data.panoptic_format import id_to_rgb, rgb_to_id
from blendmask.data.shapes import write_shapes_dataset

H, W = 8, 10


def write_fixture(root: Path, *, ids: np.ndarray | None = None, **changes) -> dict[str, Path]:
    """One 8 x 10 image: stuff 'road' (id 92) on top, thing 'car' (id 3) bottom left, a crowd
    'person' (id 1) bottom right, a void column; `changes` edit the json's top-level keys."""
    if ids is None:
        ids = np.zeros((H, W), dtype=np.int64)
        ids[:4, :9] = 300  # road; column 9 is void
        ids[4:, 1:4] = 7  # car
        ids[4:, 5:9] = 256 * 2 + 1  # crowd person (an id using the G channel)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "pan").mkdir(exist_ok=True)
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(root / "images" / "a.jpg.png")
    Image.fromarray(id_to_rgb(ids)).save(root / "pan" / "a.png")
    data = {
        "images": [{"id": 5, "file_name": "a.jpg.png", "height": H, "width": W}],
        "annotations": [
            {
                "image_id": 5,
                "file_name": "a.png",
                "segments_info": [
                    {"id": 300, "category_id": 92, "iscrowd": 0, "area": 36},
                    {"id": 7, "category_id": 3, "iscrowd": 0, "area": 12},
                    {"id": 513, "category_id": 1, "iscrowd": 1, "area": 16},
                ],
            }
        ],
        "categories": [
            {"id": 92, "name": "road", "isthing": 0},
            {"id": 3, "name": "car", "isthing": 1},
            {"id": 1, "name": "person", "isthing": 1},
            {"id": 120, "name": "sky", "isthing": 0},
        ],
    }
    data.update(changes)
    json_path = root / "panoptic.json"
    json_path.write_text(json.dumps(data))
    return {"json": json_path, "pan": root / "pan", "images": root / "images"}


def dataset(paths: dict[str, Path], **kwargs) -> CocoPanopticDataset:
    return CocoPanopticDataset(paths["json"], paths["pan"], paths["images"], **kwargs)


def test_rgb_id_round_trip():
    """Wrong if the PNG encoding is not id = R + 256 G + 256^2 B (COCO's rgb2id)."""
    rgb = np.array([[[1, 2, 3], [255, 255, 255]]], dtype=np.uint8)
    assert rgb_to_id(rgb).tolist() == [[1 + 512 + 3 * 65536, 256**3 - 1]]
    ids = np.array([[0, 7, 513, 256**3 - 1]])
    assert (rgb_to_id(id_to_rgb(ids)) == ids).all()


def test_training_view_by_hand(tmp_path):
    """Wrong if crowd segments reach the instance branch, if things are not one semantic
    class, if stuff is not numbered 1..S by category id, or if void / crowd are not 255."""
    ds = dataset(write_fixture(tmp_path))
    assert ds.category_names == ["person", "car"]  # things sorted by id: person 1, car 3
    assert ds.stuff_names == ["road", "sky"] and ds.stuff_category_ids == [92, 120]
    image, target = ds[0]
    assert image.shape == (3, H, W) and target["image_id"] == 5
    assert target["labels"].tolist() == [1]  # the car; the crowd person is dropped
    assert target["boxes"].tolist() == [[1.0, 4.0, 4.0, 8.0]]
    expected_mask = np.zeros((H, W), dtype=np.uint8)
    expected_mask[4:, 1:4] = 1
    assert (target["masks"][0].numpy() == expected_mask).all()
    expected = np.full((H, W), 255)
    expected[:4, :9] = 1  # road: the first stuff class
    expected[4:, 1:4] = 0  # thing
    assert target["sem_seg"].dtype == torch.int64
    assert (target["sem_seg"].numpy() == expected).all()


def test_thing_labels_follow_the_instance_dataset(tmp_path):
    """Wrong if the panoptic dataset numbers thing classes differently from CocoDataset on the
    matching instances json (a panoptic model would then mislabel the instance branch)."""
    paths = write_shapes_dataset(tmp_path, 3, 0, seed=1, image_size=64, panoptic=True)
    pan = CocoPanopticDataset(
        paths["train_panoptic_json"], paths["train_panoptic_images"], paths["train_images"]
    )
    ins = CocoDataset(paths["train_json"], paths["train_images"])
    assert pan.category_names == ins.category_names
    assert pan.contiguous_to_category_id == ins.contiguous_to_category_id
    assert pan.stuff_names == ["sky", "wall", "grass"]
    for i in range(len(ins)):
        (image_p, tp), (image_i, ti) = pan[i], ins[i]
        assert torch.equal(image_p, image_i)
        # Same instances (panoptic order: by segment id = painting order, as the json's).
        assert tp["labels"].tolist() == ti["labels"].tolist()
        assert torch.equal(tp["masks"], ti["masks"])
        assert torch.allclose(tp["boxes"], ti["boxes"])
        sem = tp["sem_seg"]
        assert ((sem == 0) == ti["masks"].any(0)).all()  # thing pixels are exactly the masks
        assert int(sem.max()) <= 3 and int(sem.min()) >= 0  # no void in the synthetic data


def test_skip_empty_uses_non_crowd_things(tmp_path):
    """Wrong if an image whose only thing is a crowd counts as having instances."""
    ids = np.zeros((H, W), dtype=np.int64)
    ids[:, :5] = 300
    ids[:, 5:] = 513
    segs = [
        {"id": 300, "category_id": 92, "iscrowd": 0},
        {"id": 513, "category_id": 1, "iscrowd": 1},
    ]
    ann = [{"image_id": 5, "file_name": "a.png", "segments_info": segs}]
    paths = write_fixture(tmp_path, ids=ids, annotations=ann)
    assert len(dataset(paths)) == 1 and len(dataset(paths, skip_empty=True)) == 0


def _segments(*extra):
    base = [
        {"id": 300, "category_id": 92},
        {"id": 7, "category_id": 3},
        {"id": 513, "category_id": 1, "iscrowd": 1},
    ]
    return [
        {"image_id": 5, "file_name": "a.png", "segments_info": base[: 3 - len(extra)] + list(extra)}
    ]


def _break(kind: str, root: Path) -> tuple[dict[str, Path], str]:
    """Write a fixture broken in one way; returns the paths and the file the error must name."""
    paths = write_fixture(root)
    if kind == "png missing":
        (paths["pan"] / "a.png").unlink()
        return paths, "a.png"
    if kind == "id in PNG not in segments_info":
        return write_fixture(root, annotations=_segments({"id": 9, "category_id": 1})), "a.png"
    if kind == "unknown category":
        return write_fixture(root, annotations=_segments({"id": 513, "category_id": 77})), (
            "panoptic.json"
        )
    if kind == "wrong PNG size":
        Image.fromarray(np.zeros((H + 1, W, 3), np.uint8)).save(paths["pan"] / "a.png")
        return paths, "a.png"
    if kind == "unreadable json":
        paths["json"].write_text('{"images": [')
        return paths, "panoptic.json"
    if kind == "isthing missing":
        cats = [{"id": 92, "name": "road"}, {"id": 3, "name": "car", "isthing": 1}]
        return write_fixture(root, categories=cats), "panoptic.json"
    if kind == "duplicate segment id":
        return write_fixture(root, annotations=_segments({"id": 7, "category_id": 1})), (
            "panoptic.json"
        )
    if kind == "PNG not RGB":
        Image.fromarray(np.zeros((H, W), np.uint8)).save(paths["pan"] / "a.png")
        return paths, "a.png"
    if kind == "corrupt PNG":
        (paths["pan"] / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        return paths, "a.png"
    if kind == "image without annotation":
        return write_fixture(root, annotations=[]), "panoptic.json"
    if kind == "annotation of a missing image":
        ann = _segments()
        ann[0]["image_id"] = 6
        return write_fixture(root, annotations=ann), "panoptic.json"
    raise AssertionError(kind)


BAD_INPUTS = [
    "png missing",
    "id in PNG not in segments_info",
    "unknown category",
    "wrong PNG size",
    "unreadable json",
    "isthing missing",
    "duplicate segment id",
    "PNG not RGB",
    "corrupt PNG",
    "image without annotation",
    "annotation of a missing image",
]


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_bad_input_is_one_line_naming_the_file(tmp_path, kind):
    """Wrong if a bad panoptic json / PNG passes, crashes with another exception, or gives a
    message without the file's name or over several lines."""
    paths, name = _break(kind, tmp_path)
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        ds = dataset(paths)
        ds[0]  # PNG problems are found when the PNG is read
    message = str(info.value)
    assert name in message and "\n" not in message, message
