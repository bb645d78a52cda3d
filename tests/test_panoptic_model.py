"""Panoptic BlendMask, model side: the semantic FPN head and P2 against a functional
re-implementation of the reference on an AdelaiDet checkpoint's own names, strict conversion of
panoptic checkpoints, the semantic loss, and the panoptic merge rule by rule (docs/reference.md
§6).

The merge tests are small hand-drawn maps whose expected segments are written out by hand: a
failure means a rule of detectron2's `combine_semantic_and_instance_outputs` is broken (the
score cut at 0.45, the 0.4 overlap rule, the 4096-pixel stuff area, the "thing" class never
becoming stuff, or the score order).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers.adelaidet import DETECTRON2_PIXEL_MEAN, ReferenceForward, key_list, our_name, save
from helpers.reference import synthetic_state
from torch import Tensor

from blendmask.convert import convert_adelaidet, convert_adelaidet_model
from blendmask.factory import build, build_network
from blendmask.interop.adelaidet import (
    COCO_STUFF_CATEGORIES,
    adelaidet_to_blendmask_key,
    blendmask_to_adelaidet_key,
)
from blendmask.modeling.panoptic import (
    f1_score_threshold,
    merge_panoptic,
    semantic_at_original_size,
)
from blendmask.predictor import Predictor
from blendmask.presets import get_preset

# ---------------------------------------------------------------------------------------------
# Checkpoint: every key of the reference's panoptic R_50 lands, and the head equals the reference


@pytest.fixture(scope="module")
def panoptic_state() -> dict[str, Tensor]:
    listed = key_list("panoptic_r50")
    if listed is None:
        pytest.skip("tests/data/keys/panoptic_r50.json not available")
    return synthetic_state(listed, seed=3)


def test_panoptic_preset_state_dict_is_a_rename_of_the_reference_keys(panoptic_state):
    model = build_network(get_preset("Panoptic_R_50_1x"), load_pretrained=False)
    ours = {
        k: tuple(v.shape)
        for k, v in model.state_dict().items()
        if k not in ("pixel_mean", "pixel_std")
    }
    theirs = {adelaidet_to_blendmask_key(k): tuple(v.shape) for k, v in panoptic_state.items()}
    assert len(panoptic_state) == 406 and theirs == ours
    assert {our_name(k) for k in panoptic_state} == set(ours)
    assert all(
        blendmask_to_adelaidet_key(adelaidet_to_blendmask_key(k)) == k for k in panoptic_state
    )


def _reference_c2_to_c5(sd: dict[str, Tensor], x: Tensor) -> list[Tensor]:
    """C2-C5 of the reference ResNet: `ReferenceForward.resnet` gives C3-C5; run on the stem and
    res2 only (res3-res5 keys removed, so those stages are empty), its first output is C2."""
    stem_res2 = {k: v for k, v in sd.items() if not k.startswith(("backbone.bottom_up.res3",
                 "backbone.bottom_up.res4", "backbone.bottom_up.res5"))}  # fmt: skip
    return [ReferenceForward(stem_res2).resnet(x)[0], *ReferenceForward(sd).resnet(x)]


def _reference_p2_to_p5(sd: dict[str, Tensor], c: list[Tensor]) -> list[Tensor]:
    """detectron2's FPN on res2-res5: 1x1 laterals, nearest x2 top-down sums, 3x3 outputs."""
    prev = F.conv2d(c[3], sd["backbone.fpn_lateral5.weight"], sd["backbone.fpn_lateral5.bias"])
    outs = [F.conv2d(prev, sd["backbone.fpn_output5.weight"], sd["backbone.fpn_output5.bias"], padding=1)]  # fmt: skip
    for level in (4, 3, 2):
        lateral = F.conv2d(c[level - 2], sd[f"backbone.fpn_lateral{level}.weight"],
                           sd[f"backbone.fpn_lateral{level}.bias"])  # fmt: skip
        prev = lateral + F.interpolate(prev, scale_factor=2.0, mode="nearest")
        outs.insert(0, F.conv2d(prev, sd[f"backbone.fpn_output{level}.weight"],
                                sd[f"backbone.fpn_output{level}.bias"], padding=1))  # fmt: skip
    return outs


def reference_semantic_head(sd: dict[str, Tensor], p: list[Tensor]) -> Tensor:
    """detectron2's semantic FPN head on [P2..P5] from `panoptic_module.*` (docs/reference.md §6):
    level l has max(1, l - 2) blocks conv3x3 (no bias) -> GroupNorm(32) -> ReLU, each followed by
    a bilinear x2 (align_corners=False) except on P2; sum; 1x1 predictor; bilinear x4."""
    total = None
    for level, x in zip((2, 3, 4, 5), p):
        for k in range(max(1, level - 2)):
            name = f"panoptic_module.p{level}.{2 * k}"  # index 2k: upsamples sit in between
            x = F.conv2d(x, sd[f"{name}.weight"], None, padding=1)
            x = F.relu(F.group_norm(x, 32, sd[f"{name}.norm.weight"], sd[f"{name}.norm.bias"]))
            if level != 2:
                x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        total = x if total is None else total + x
    w, b = sd["panoptic_module.predictor.weight"], sd["panoptic_module.predictor.bias"]
    return F.interpolate(F.conv2d(total, w, b), scale_factor=4.0, mode="bilinear", align_corners=False)  # fmt: skip


@torch.no_grad()
def test_panoptic_checkpoint_converts_strictly_and_semantic_head_equals_the_reference(
    tmp_path, panoptic_state
):
    """Must-show 1: strict, complete conversion (every key value for value) and our P2 +
    semantic head equal the reference maths written out above on the file's own names."""
    path = save(panoptic_state, tmp_path / "Panoptic_R_50_1x.pth", legacy=True)
    cfg, model, report = convert_adelaidet_model(path, "Panoptic_R_50_1x")
    assert report.complete and len(report.loaded) == 406
    ours = model.state_dict()
    for key, value in panoptic_state.items():
        assert torch.equal(ours[our_name(key)], value), key
    p = cfg.model.panoptic
    assert p.enabled and p.num_stuff_classes == 53 and p.loss_weight == 0.5
    assert (p.instance_score_threshold, p.overlap_threshold, p.stuff_area_limit) == (
        0.45,
        0.4,
        4096,
    )
    assert cfg.data.stuff_ids == [cid for _, cid in COCO_STUFF_CATEGORIES]

    images = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    x = images.flip(1) * 255.0 - torch.tensor(DETECTRON2_PIXEL_MEAN).view(1, 3, 1, 1)
    sd = {k: v.float() for k, v in panoptic_state.items()}
    p2_to_p5 = _reference_p2_to_p5(sd, _reference_c2_to_c5(sd, x))
    want = reference_semantic_head(sd, p2_to_p5)
    got = model(images).panoptic_logits
    assert got.shape == (1, 54, 64, 96) == want.shape
    scale = float(want.abs().max().clamp(min=1.0))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * scale)
    # The head alone on the same P2-P5: no tolerance lost to the body.
    torch.testing.assert_close(model.panoptic_module(p2_to_p5), want, rtol=1e-5, atol=1e-5 * scale)


def test_panoptic_and_instance_checkpoints_refuse_the_other_preset(tmp_path, panoptic_state):
    path = save(panoptic_state, tmp_path / "pan.pth")
    with pytest.raises(ValueError, match="Panoptic_R_50_1x") as info:
        convert_adelaidet(path, "R_50_1x")
    assert str(path) in str(info.value).splitlines()[0]
    instance = {k: v for k, v in panoptic_state.items()
                if not k.startswith(("panoptic_module.", "backbone.fpn_lateral2", "backbone.fpn_output2"))}  # fmt: skip
    path = save(instance, tmp_path / "inst.pth")
    with pytest.raises(ValueError, match="27 missing keys") as info:
        convert_adelaidet(path, "Panoptic_R_50_1x")
    assert "presets that fit the checkpoint: R_50_1x" in str(info.value)
    assert "panoptic_module.p2.0.weight" in str(info.value)


# ---------------------------------------------------------------------------------------------
# Network and loss


def _tiny_panoptic(num_stuff: int = 3):
    cfg = get_preset("tiny")
    cfg.model.panoptic.enabled = True
    cfg.model.panoptic.num_stuff_classes = num_stuff
    cfg.model.panoptic.conv_dims = 32
    return cfg.validate()


@torch.no_grad()
def test_p2_does_not_feed_the_instance_branch():
    """Same weights with and without the panoptic branch: identical instance outputs (a change
    would mean P2 leaks into the FCOS head or the bases)."""
    torch.manual_seed(0)
    panoptic = build_network(_tiny_panoptic(), load_pretrained=False).eval()
    plain = build_network(get_preset("tiny"), load_pretrained=False).eval()
    plain.load_state_dict(
        {k: v for k, v in panoptic.state_dict().items() if k in plain.state_dict()}
    )
    images = torch.rand(2, 3, 64, 96)
    a, b = panoptic(images), plain(images)
    assert b.panoptic_logits is None and a.panoptic_logits.shape == (2, 4, 64, 96)
    for name in ("cls_logits", "bbox_reg", "ctrness", "attentions", "bases", "sem_logits"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_semantic_loss_equals_the_naive_cross_entropy_and_ignores_padding():
    torch.manual_seed(0)
    cfg = _tiny_panoptic()
    model, criterion, _ = build(cfg, load_pretrained=False)
    images = torch.rand(2, 3, 64, 96)
    outputs = model(images)
    sizes = [(64, 96), (50, 70)]  # the second image is padded
    targets = []
    for i, (h, w) in enumerate(sizes):
        sem = torch.randint(0, 4, (h, w), generator=torch.Generator().manual_seed(i))
        sem[:5] = 255
        targets.append({"boxes": torch.tensor([[4.0, 4.0, 40.0, 40.0]]), "labels": torch.tensor([1]),
                        "masks": torch.ones(1, h, w, dtype=torch.uint8), "sem_seg": sem})  # fmt: skip
    loss = criterion(outputs, targets)["loss_sem_seg"]
    # Naive: mean of -log softmax at the labelled pixels of both images, times 0.5.
    terms = []
    for logits, t, (h, w) in zip(outputs.panoptic_logits, targets, sizes):
        logp = logits[:, :h, :w].log_softmax(0)
        for y, x in (t["sem_seg"] != 255).nonzero().tolist():
            terms.append(-logp[t["sem_seg"][y, x], y, x])
    torch.testing.assert_close(loss, 0.5 * torch.stack(terms).mean(), rtol=1e-5, atol=1e-6)
    # Logits in the padding do not count.
    changed = outputs._replace(panoptic_logits=outputs.panoptic_logits.clone())
    changed.panoptic_logits[1, :, 50:, :] += 100.0
    changed.panoptic_logits[1, :, :, 70:] -= 100.0
    torch.testing.assert_close(criterion(changed, targets)["loss_sem_seg"], loss)
    del targets[0]["sem_seg"]
    with pytest.raises(ValueError, match="sem_seg"):
        criterion(outputs, targets)


def test_semantic_at_original_size_crops_then_resizes():
    logits = torch.zeros(2, 8, 12)
    logits[1, :6, :9] = torch.arange(54.0).view(6, 9)
    logits[1, 6:, :] = 1e6  # padding: must not leak into the image
    out = semantic_at_original_size(logits, (6, 9), (12, 18))
    want = F.interpolate(
        logits[None, :, :6, :9], size=(12, 18), mode="bilinear", align_corners=False
    )
    torch.testing.assert_close(out, want[0])
    assert out.max() < 60


# ---------------------------------------------------------------------------------------------
# Merging: each rule on a hand-drawn map (must-show 2)


def _box_mask(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> Tensor:
    m = torch.zeros(h, w, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def _merge(masks, scores, labels, semantic, **kw):
    return merge_panoptic(
        masks=torch.stack(masks) if masks else torch.zeros(0, *semantic.shape, dtype=torch.bool),
        # float64: 0.45 exactly (in float32 it is 0.4499999881, below the cut, in the reference too)
        scores=torch.tensor(scores, dtype=torch.float64),
        labels=torch.tensor(labels, dtype=torch.int64),
        semantic=semantic,
        **kw,
    )


def test_merge_keeps_instances_from_score_0_45():
    sem = torch.zeros(10, 30, dtype=torch.int64)
    masks = [_box_mask(10, 30, 0, 10, 0, 10), _box_mask(10, 30, 0, 10, 10, 20),
             _box_mask(10, 30, 0, 10, 20, 30)]  # fmt: skip
    seg_map, segs = _merge(masks, [0.46, 0.45, 0.4499], [0, 1, 2], sem)
    # 0.46 and exactly 0.45 kept; 0.4499 not.
    assert [(s["id"], s["category"], s["area"]) for s in segs] == [(1, 0, 100), (2, 1, 100)]
    assert (seg_map[:, :10] == 1).all() and (seg_map[:, 10:20] == 2).all()
    assert (seg_map[:, 20:] == 0).all()  # void: the semantic map says "thing" there
    assert segs[0]["score"] == pytest.approx(0.46) and segs[0]["isthing"]


def test_merge_drops_an_instance_more_than_0_4_covered():
    sem = torch.zeros(10, 10, dtype=torch.int64)
    first = _box_mask(10, 10, 0, 10, 0, 4)  # columns 0-3 (40 px)
    exactly = _box_mask(10, 10, 0, 10, 0, 10)  # 100 px, 40 of them taken: 0.4, kept
    over = _box_mask(10, 10, 0, 5, 3, 5)  # 10 px, all taken by now: dropped
    seg_map, segs = _merge([first, exactly, over], [0.9, 0.8, 0.7], [0, 1, 2], sem)
    assert [(s["id"], s["category"], s["area"]) for s in segs] == [(1, 0, 40), (2, 1, 60)]
    assert (seg_map[:, :4] == 1).all() and (seg_map[:, 4:] == 2).all()  # only its free pixels
    # 41 of 100 taken: dropped.
    first = _box_mask(10, 10, 0, 10, 0, 4)
    first[0, 4] = True
    _, segs = _merge([first, exactly], [0.9, 0.8], [0, 1], sem)
    assert [s["id"] for s in segs] == [1]


def test_merge_stuff_needs_4096_free_pixels_and_never_uses_the_thing_class():
    sem = torch.zeros(64, 192, dtype=torch.int64)  # class 0 ("thing") in columns 128-191
    sem[:, :64] = 1  # 4096 px: kept (the limit is inclusive)
    sem[:, 64:128] = 2  # 4096 px, but an instance takes one pixel: 4095 free, dropped
    inst = _box_mask(64, 192, 0, 1, 127, 129)  # 1 px of class 2, 1 px of class 0
    seg_map, segs = _merge([inst], [0.9], [3], sem)
    assert segs == [
        {"id": 1, "isthing": True, "category": 3, "score": pytest.approx(0.9), "area": 2},
        {"id": 2, "isthing": False, "category": 1, "area": 4096},
    ]
    assert (seg_map[:, :64] == 2).all()
    assert int((seg_map == 0).sum()) == 64 * 192 - 4096 - 2  # class 2 and class 0: void
    # Lower the limit: class 2 becomes stuff, the "thing" class 0 still never does.
    _, segs = _merge([inst], [0.9], [3], sem, stuff_area_limit=1)
    assert [(s["isthing"], s["category"], s["area"]) for s in segs] == [
        (True, 3, 2), (False, 1, 4096), (False, 2, 4095)
    ]  # fmt: skip
    _, segs = _merge([], [], [], torch.zeros(64, 64, dtype=torch.int64), stuff_area_limit=0)
    assert segs == []


def test_merge_orders_instances_by_score_not_by_input_order():
    sem = torch.zeros(10, 10, dtype=torch.int64)
    low = _box_mask(10, 10, 0, 10, 0, 6)
    high = _box_mask(10, 10, 0, 10, 4, 10)  # overlaps `low` in columns 4-5
    empty = torch.zeros(10, 10, dtype=torch.bool)
    seg_map, segs = _merge([low, empty, high], [0.6, 0.95, 0.9], [5, 6, 7], sem)
    # The empty mask (highest score) is skipped; `high` is placed first with all its pixels,
    # `low` (20 of 60 px taken, 0.33) keeps its 40 free ones.
    assert [(s["id"], s["category"], s["area"]) for s in segs] == [(1, 7, 60), (2, 5, 40)]
    assert (seg_map[:, 4:] == 1).all() and (seg_map[:, :4] == 2).all()


# ---------------------------------------------------------------------------------------------
# Inference


def test_predict_panoptic_segments_agree_with_the_map():
    torch.manual_seed(0)
    cfg = _tiny_panoptic()
    cfg.model.panoptic.stuff_area_limit = 16
    cfg.data.stuff_names = ["sky", "grass", "wall"]
    predictor = Predictor.from_config(cfg, device="cpu", score_threshold=0.0)
    results = predictor.predict_panoptic([torch.rand(3, 50, 70), torch.rand(3, 64, 40)])
    for result, size in zip(results, [(50, 70), (64, 40)]):
        assert result.segment_map.shape == size == result.semantic.shape
        assert result.segment_map.dtype == torch.int32
        for seg in result.segments:
            assert seg["area"] == int((result.segment_map == seg["id"]).sum()) > 0
            if not seg["isthing"]:
                assert 1 <= seg["category"] <= 3
                assert result.category_name(seg) in cfg.data.stuff_names
        ids = {s["id"] for s in result.segments} | {0}
        assert set(result.segment_map.unique().tolist()) <= ids
    with pytest.raises(ValueError, match="semantic head"):
        Predictor.from_config(get_preset("tiny"), device="cpu").predict_panoptic(
            torch.rand(3, 32, 32)
        )


@pytest.mark.slow
def test_cli_convert_panoptic_then_predict_panoptic(tmp_path, capsys, panoptic_state):
    """`blendmask convert --preset Panoptic_R_50_1x` without --allow-partial writes a model file
    that loads back as a panoptic model (COCO stuff names) and predicts panoptic maps."""
    from blendmask.cli import main as cli_main

    ckpt = save(panoptic_state, tmp_path / "Panoptic_R_50_1x.pth")
    out = tmp_path / "pan.pt"
    small = ["--set", "data.min_size_test=64", "--set", "data.max_size_test=64"]
    argv = ["convert", "--adelaidet", str(ckpt), "--preset", "Panoptic_R_50_1x", "--out", str(out)]
    assert cli_main([*argv, *small]) == 0
    assert "406 tensors loaded" in capsys.readouterr().out
    predictor = Predictor.from_checkpoint(out, device="cpu", score_threshold=0.0)
    assert predictor.cfg.data.stuff_names[-1] == "rug-merged"
    result = predictor.predict_panoptic(torch.rand(3, 48, 64))[0]
    assert result.segment_map.shape == (48, 64) and result.semantic.max() <= 53


def test_shapes_panoptic_preset_names_the_synthetic_stuff_classes():
    from blendmask.data.shapes_stuff import STUFF_CLASSES
    from blendmask.presets import SHAPE_STUFF_NAMES

    cfg = get_preset("shapes_panoptic")
    assert list(SHAPE_STUFF_NAMES) == STUFF_CLASSES == cfg.data.stuff_names
    assert cfg.model.panoptic.enabled and cfg.model.panoptic.num_stuff_classes == len(STUFF_CLASSES)


# ---------------------------------------------------------------------------------------------
# The merge threshold from the training images' F1 (a barely trained model keeps its things)


def test_f1_threshold_lowers_the_cut_for_an_undertrained_model():
    """Right detections all scoring 0.2-0.3 (a few iterations on a busy machine): at 0.45 the
    merge keeps none of them (PQ_th 0); the F1 rule cuts at the lowest right one, above the
    wrong ones at 0.1, and the merge then keeps the things."""
    scores = torch.tensor([0.30, 0.28, 0.25, 0.22, 0.10, 0.08])
    matched = torch.tensor([True, True, True, True, False, False])
    threshold = f1_score_threshold(scores, matched, num_gt=5)
    assert threshold == pytest.approx(0.22)
    sem = torch.zeros(10, 20, dtype=torch.int64)
    masks = [_box_mask(10, 20, 0, 10, 0, 10), _box_mask(10, 20, 0, 10, 10, 20)]
    _, kept = _merge(masks, [0.3, 0.22], [0, 1], sem, score_threshold=threshold)
    assert len(kept) == 2
    assert _merge(masks, [0.3, 0.22], [0, 1], sem)[1] == []  # the reference's 0.45


def test_f1_threshold_keeps_the_reference_cut_for_a_trained_model():
    """Right detections at 0.6-0.9 and wrong ones under 0.45: the reference's 0.45 is (near)
    the best F1, so the merge stays the reference's. A marginally better F1 lower down (one
    more right detection among wrong ones) does not move it either; none matched: 0.45."""
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2])
    assert f1_score_threshold(scores, torch.tensor([1, 1, 1, 1, 0, 0, 0]).bool(), 4) == 0.45
    marginal = torch.tensor([1, 1, 1, 1, 0, 1, 0]).bool()
    assert f1_score_threshold(scores, marginal, 10) == 0.45
    assert f1_score_threshold(scores, torch.zeros(7, dtype=torch.bool), 4) == 0.45
    assert f1_score_threshold(scores[:0], torch.zeros(0, dtype=torch.bool), 0) == 0.45
