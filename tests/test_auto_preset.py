"""`--preset auto`: the config derived from the training json by the rules of docs/training.md.
Fails when the same json gives another plan, when a dataset of small objects does not get a
larger test scale than one of medium objects, when `--set` no longer overrides the preset, or
when the rules on the nuclei data drift from the hand-tuned nuclei_lite0."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.paths import NUCLEI_DIR

from blendmask.checkpoint_io import MODEL_SCHEMA, save_model_file
from blendmask.checkpoint_reader import read_checkpoint
from blendmask.factory import build
from blendmask.metrics.dataset_stats import _cached
from blendmask.presets import get_preset
from blendmask.training.auto_preset import auto_config
from blendmask.training.train_config import resolve_train_config


def _boxes_json(path, *, side: int, image: int, count: int = 4, images: int = 6):
    """`images` images of `image` px, each with `count` square boxes of `side` px (no masks)."""
    imgs = [
        {"id": i, "file_name": f"{i}.png", "width": image, "height": image} for i in range(images)
    ]
    anns = [
        {"id": i * count + k, "image_id": i, "category_id": 1, "iscrowd": 0,
         "bbox": [k * side, k * side, side, side]}
        for i in range(images) for k in range(count)
    ]  # fmt: skip
    path.write_text(
        json.dumps({"images": imgs, "annotations": anns, "categories": [{"id": 1, "name": "x"}]})
    )
    return path


def test_same_json_same_plan(tmp_path):
    path = _boxes_json(tmp_path / "a.json", side=12, image=512)
    cfg1, plan1 = auto_config(path)
    _cached.cache_clear()  # analysed again from the file
    cfg2, plan2 = auto_config(path)
    assert plan1 == plan2 and cfg1.to_dict() == cfg2.to_dict()
    assert json.loads(json.dumps(plan1)) == plan1  # storable as it is


def test_small_objects_get_a_larger_scale(tmp_path):
    small, _ = auto_config(_boxes_json(tmp_path / "s.json", side=12, image=512))
    medium, _ = auto_config(_boxes_json(tmp_path / "m.json", side=48, image=256))
    assert small.data.test_scale == 4.0  # 48 / 12
    assert medium.data.test_scale == 1.0
    assert small.data.crop_size > 0 and medium.data.crop_size == 0  # 2048 px scaled images
    # crops draw the images by area; whole images are drawn once each
    assert small.data.crop_by_area and not medium.data.crop_by_area


def test_many_instances_keep_more_detections(tmp_path):
    cfg, plan = auto_config(_boxes_json(tmp_path / "d.json", side=4, image=1024, count=200))
    assert cfg.model.fcos.post_nms_topk_test == 250  # 1.2 x 200, in 50s
    assert plan["settings"]["model.fcos.post_nms_topk_test"]["value"] == 250


def test_crowded_images_spread_their_objects_over_more_levels(tmp_path):
    sparse, _ = auto_config(_boxes_json(tmp_path / "a.json", side=48, image=256, count=4))
    crowded, plan = auto_config(_boxes_json(tmp_path / "b.json", side=8, image=256, count=30))
    assert sparse.model.fcos.sizes_of_interest == [48, 96]
    assert crowded.model.fcos.sizes_of_interest == [32, 64]
    assert (
        "30.0 instances an image >= 20" in plan["settings"]["model.fcos.sizes_of_interest"]["rule"]
    )


def test_set_overrides_auto_and_train_json_is_needed(tmp_path):
    path = _boxes_json(tmp_path / "a.json", side=12, image=512)
    cfg = resolve_train_config(
        out=tmp_path / "run",
        preset="auto",
        overrides=["data.test_scale=2", "solver.base_lr=0.003"],
        train_json=str(path),
        train_images=str(tmp_path),
    )
    assert cfg.preset == "auto" and cfg.data.test_scale == 2.0 and cfg.solver.base_lr == 0.003
    from_set = resolve_train_config(
        out=tmp_path / "run", preset="auto", overrides=[f"data.train_json={path}"]
    )
    assert from_set.data.test_scale == 4.0
    with pytest.raises(ValueError, match="--train-json"):
        resolve_train_config(out=tmp_path / "run", preset="auto")


def test_model_file_keeps_the_plan(tmp_path):
    cfg = get_preset("tiny")
    model, _, _ = build(cfg)
    plan = {"json": "x.json", "settings": {"data.test_scale": {"value": 3.0, "rule": "r"}}}
    save_model_file(tmp_path / "model.pt", cfg, model, plan=plan)
    payload = torch.load(tmp_path / "model.pt", weights_only=True)
    assert payload["plan"] == plan

    assert read_checkpoint(tmp_path / "model.pt", MODEL_SCHEMA)["plan"] == plan


@pytest.mark.skipif(not NUCLEI_DIR.is_dir(), reason="nuclei data not available")
def test_nuclei_rules_land_on_the_hand_tuned_preset():
    cfg, _ = auto_config(NUCLEI_DIR / "annotations" / "instances_train.json")
    hand = get_preset("nuclei_lite0")
    for key in ("test_scale", "crop_size", "scale_jitter", "vflip_train", "rot90_train"):
        assert getattr(cfg.data, key) == getattr(hand.data, key), key
    assert cfg.model.fcos.fpn_strides == hand.model.fcos.fpn_strides
    assert (cfg.solver.ims_per_batch, cfg.solver.base_lr) == (4, 0.01)
    assert cfg.model.fcos.sizes_of_interest == hand.model.fcos.sizes_of_interest  # crowded
    # the one intended difference: images of 199 nuclei keep more than 100 detections
    assert cfg.model.fcos.post_nms_topk_test == 450


@pytest.mark.slow
def test_auto_training_writes_model_pt_once_with_its_plan(tmp_path, shapes_dataset, monkeypatch):
    from blendmask import checkpoint_io
    from blendmask.training.train import train_command

    writes = []
    real = checkpoint_io.atomic_write
    monkeypatch.setattr(
        checkpoint_io,
        "atomic_write",
        lambda path, *a, **k: writes.append(path) or real(path, *a, **k),
    )
    train_command(
        out=tmp_path / "run",
        preset="auto",
        train_json=str(shapes_dataset["train_json"]),
        train_images=str(shapes_dataset["train_images"]),
        overrides=["solver.max_iter=2", "solver.precision=fp32", "solver.ims_per_batch=2"],
    )
    assert [p for p in writes if p.name == "model.pt"] == [tmp_path / "run" / "model.pt"]
    plan = read_checkpoint(tmp_path / "run" / "model.pt", MODEL_SCHEMA)["plan"]
    assert plan == auto_config(shapes_dataset["train_json"])[1]
    assert plan["settings"]["data.test_scale"]["value"] > 0


def test_auto_turns_on_rescoring_and_flip_only_with_flipped_training(tmp_path):
    cfg, plan = auto_config(_boxes_json(tmp_path / "a.json", side=24, image=256))
    assert cfg.model.blender.mask_score_power == 2.0
    assert cfg.data.hflip_train and cfg.data.test_flip
    # 6 images: trained upside down too, but 4 views did not pay in a time budget
    assert cfg.data.vflip_train and not cfg.data.test_vflip
    keys = {"model.blender.mask_score_power", "data.test_flip", "data.test_vflip"}
    assert keys <= set(plan["settings"])
