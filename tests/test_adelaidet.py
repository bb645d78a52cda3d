"""AdelaiDet checkpoint import: file formats, the rename table, strictness, and numerical fidelity.

Synthetic checkpoints are built under AdelaiDet's names from `tests/data/keys/*.json` (the key
lists read from the built reference models) or, where no list exists, from the key patterns of
docs/reference.md §5.2, written out below and checked against the lists. The expected place of
every key in our model is written independently of the module's regex table
(`helpers.adelaidet.our_name`), and the network is compared with a functional re-implementation
of AdelaiDet's forward pass that reads the checkpoint under its own names (`ReferenceForward`).
"""

from __future__ import annotations

import argparse
import copy
import pickle
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from helpers.adelaidet import (
    DETECTRON2_PIXEL_MEAN,
    Entry,
    ReferenceForward,
    key_list,
    our_name,
    save,
)
from helpers.reference import synthetic_state
from torch import Tensor

from blendmask.checkpoint_io import read_model_file
from blendmask.cli import main as cli_main
from blendmask.convert import convert_adelaidet, convert_adelaidet_model
from blendmask.factory import build_network
from blendmask.interop.adelaidet import (
    ADELAIDET_RENAMES,
    COCO_CATEGORIES,
    adelaidet_config,
    adelaidet_to_blendmask_key,
    blendmask_to_adelaidet_key,
    checkpoint_architecture,
    read_adelaidet_checkpoint,
)
from blendmask.predictor import Predictor
from blendmask.presets import get_preset

# ---------------------------------------------------------------------------------------------
# Reference key lists: docs/reference.md §5.2 patterns, written out


def pattern_entries(
    *,
    depth: int = 50,
    body_counters: bool = False,
    deform_interval: int = 0,
    top_levels: int = 2,
    cls_convs: int = 4,
    box_convs: int = 4,
    share_convs: int = 0,
    head_bn: bool = False,
    basis_convs: int = 3,
    num_classes: int = 80,
) -> list[Entry]:
    """AdelaiDet state-dict entries [key, shape, dtype] of a BlendMask variant (docs/reference.md §5.2)."""
    out: list[Entry] = []

    def add(key: str, shape: list[int], dtype: str = "float32") -> None:
        out.append((key, shape, dtype))

    def norm(prefix: str, c: int, counter: bool) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            add(f"{prefix}.{name}", [c])
        if counter:
            add(f"{prefix}.num_batches_tracked", [], "int64")

    for level, cin in zip((3, 4, 5), (512, 1024, 2048)):
        add(f"backbone.fpn_lateral{level}.weight", [256, cin, 1, 1])
        add(f"backbone.fpn_lateral{level}.bias", [256])
        add(f"backbone.fpn_output{level}.weight", [256, 256, 3, 3])
        add(f"backbone.fpn_output{level}.bias", [256])
    for p in ("p6", "p7")[:top_levels]:
        add(f"backbone.top_block.{p}.weight", [256, 256, 3, 3])
        add(f"backbone.top_block.{p}.bias", [256])

    add("backbone.bottom_up.stem.conv1.weight", [64, 3, 7, 7])
    norm("backbone.bottom_up.stem.conv1.norm", 64, body_counters)
    blocks = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    widths = ((64, 64, 256), (256, 128, 512), (512, 256, 1024), (1024, 512, 2048))
    for stage, n, (cin0, cb, cout) in zip((2, 3, 4, 5), blocks, widths):
        for b in range(n):
            p = f"backbone.bottom_up.res{stage}.{b}"
            if b == 0:
                add(f"{p}.shortcut.weight", [cout, cin0, 1, 1])
                norm(f"{p}.shortcut.norm", cout, body_counters)
            add(f"{p}.conv1.weight", [cb, cin0 if b == 0 else cout, 1, 1])
            norm(f"{p}.conv1.norm", cb, body_counters)
            if deform_interval and stage >= 3 and b % deform_interval == 0:
                add(f"{p}.conv2_offset.weight", [27, cb, 3, 3])
                add(f"{p}.conv2_offset.bias", [27])
            add(f"{p}.conv2.weight", [cb, cb, 3, 3])
            norm(f"{p}.conv2.norm", cb, body_counters)
            add(f"{p}.conv3.weight", [cout, cb, 1, 1])
            norm(f"{p}.conv3.norm", cout, body_counters)

    head = "proposal_generator.fcos_head"
    num_levels = 3 + top_levels
    for tower, n in (("cls_tower", cls_convs), ("bbox_tower", box_convs), ("share_tower", share_convs)):  # fmt: skip
        for i in range(n):
            add(f"{head}.{tower}.{3 * i}.weight", [256, 256, 3, 3])
            add(f"{head}.{tower}.{3 * i}.bias", [256])
            if head_bn:
                for level in range(num_levels):
                    norm(f"{head}.{tower}.{3 * i + 1}.{level}", 256, True)
            else:
                add(f"{head}.{tower}.{3 * i + 1}.weight", [256])
                add(f"{head}.{tower}.{3 * i + 1}.bias", [256])
    for name, c in (("cls_logits", num_classes), ("bbox_pred", 4), ("ctrness", 1)):
        add(f"{head}.{name}.weight", [c, 256, 3, 3])
        add(f"{head}.{name}.bias", [c])

    for i in range(3):
        add(f"basis_module.refine.{i}.0.weight", [128, 256, 3, 3])
        norm(f"basis_module.refine.{i}.1", 128, True)
    for i in list(range(basis_convs)) + [basis_convs + 1]:
        add(f"basis_module.tower.{i}.0.weight", [128, 128, 3, 3])
        norm(f"basis_module.tower.{i}.1", 128, True)
    add(f"basis_module.tower.{basis_convs + 2}.weight", [4, 128, 1, 1])
    add(f"basis_module.tower.{basis_convs + 2}.bias", [4])
    add("basis_module.seg_head.0.weight", [128, 256, 3, 3])
    norm("basis_module.seg_head.1", 128, True)
    add("basis_module.seg_head.3.weight", [128, 128, 3, 3])
    norm("basis_module.seg_head.4", 128, True)
    add("basis_module.seg_head.6.weight", [num_classes + 1, 128, 1, 1])
    add("basis_module.seg_head.6.bias", [num_classes + 1])
    add("top_layer.weight", [784, 256, 3, 3])
    add("top_layer.bias", [784])
    return out


FAMILIES: dict[str, dict] = {
    "r50": {},
    "550_r50": dict(top_levels=1, cls_convs=0, box_convs=0, share_convs=3, basis_convs=2),
    "rt_r50": dict(body_counters=True, top_levels=0, cls_convs=0, box_convs=0, share_convs=3,
                   basis_convs=2),
    "rt_r50_bn_head": dict(body_counters=True, top_levels=0, cls_convs=0, box_convs=0,
                           share_convs=3, head_bn=True, basis_convs=2),
    "r101": dict(depth=101),
    "r101_dcni3": dict(depth=101, deform_interval=3),
    "r50_dcni3": dict(deform_interval=3),
}  # fmt: skip
PRESET_OF = {
    "r50": "R_50_1x",
    "550_r50": "550_R_50_3x",
    "rt_r50": "RT_R_50_4x",
    "rt_r50_bn_head": "RT_R_50_4x_bn_head",
    "r101": "R_101_3x",
    "r101_dcni3": "R_101_dcni3_5x",
}
# R_101_dcni3's architecture at ResNet-50 depth (res3 {0, 3}, res4 {0, 3}, res5 {0}): fast.
R50_DCNI3 = ("R_101_dcni3_5x", ["model.backbone.name=resnet50"])


def entries(name: str) -> list[Entry]:
    """The reference list when shipped, else the docs/reference.md §5.2 patterns (checked equal below)."""
    return key_list(name) or pattern_entries(**FAMILIES[name])


@pytest.mark.parametrize("name", ["r50", "550_r50", "rt_r50", "rt_r50_bn_head"])
def test_key_patterns_reproduce_the_reference_key_lists(name):
    listed = key_list(name)
    if listed is None:
        pytest.skip(f"tests/data/keys/{name}.json not available")
    assert {k: (s, t) for k, s, t in pattern_entries(**FAMILIES[name])} == {
        k: (s, t) for k, s, t in listed
    }


def test_pattern_counts_match_the_reference_table():
    # docs/reference.md §5.2 table: R_101_3x 634, R_101_dcni3_5x 656 entries.
    assert len(pattern_entries(**FAMILIES["r101"])) == 634
    assert len(pattern_entries(**FAMILIES["r101_dcni3"])) == 656


# ---------------------------------------------------------------------------------------------
# Where each reference key must land: written out token by token, independent of the table


def test_rename_table_spot_checks():
    # Fails if a rule maps onto the wrong module; pairs written from docs/reference.md §5.2/5.4.
    pairs = {
        "backbone.bottom_up.stem.conv1.weight": "body.conv1.weight",
        "backbone.bottom_up.stem.conv1.norm.running_var": "body.bn1.running_var",
        "backbone.bottom_up.res2.0.shortcut.weight": "body.layer1.0.downsample.0.weight",
        "backbone.bottom_up.res2.0.shortcut.norm.bias": "body.layer1.0.downsample.1.bias",
        "backbone.bottom_up.res3.2.conv2.norm.weight": "body.layer2.2.bn2.weight",
        "backbone.bottom_up.res4.22.conv3.weight": "body.layer3.22.conv3.weight",
        "backbone.bottom_up.res5.0.conv2_offset.bias": "body.layer4.0.conv2_offset.bias",
        "backbone.bottom_up.res5.1.conv1.norm.num_batches_tracked":
            "body.layer4.1.bn1.num_batches_tracked",
        "backbone.fpn_lateral5.weight": "fpn.fpn_lateral5.weight",
        "backbone.fpn_output3.bias": "fpn.fpn_output3.bias",
        "backbone.top_block.p7.weight": "fpn.top_block.p7.weight",
        "proposal_generator.fcos_head.bbox_tower.10.weight": "head.bbox_tower.10.weight",
        "proposal_generator.fcos_head.share_tower.4.2.running_mean":
            "head.share_tower.4.2.running_mean",
        "proposal_generator.fcos_head.centerness.weight": "head.ctrness.weight",
        "proposal_generator.fcos_head.ctrness.bias": "head.ctrness.bias",
        "basis_module.tower.5.weight": "basis_module.tower.5.weight",
        "basis_module.seg_head.6.bias": "basis_module.seg_head.6.bias",
        "top_layer.weight": "top_layer.weight",
    }  # fmt: skip
    for theirs, ours in pairs.items():
        assert adelaidet_to_blendmask_key(theirs) == ours, theirs
        assert our_name(theirs) == ours, theirs
    assert len(ADELAIDET_RENAMES) >= 10  # explicit rules, not a single catch-all


# ---------------------------------------------------------------------------------------------
# Our state dicts are a pure rename of the reference's


@pytest.mark.slow
@pytest.mark.parametrize("name", ["r50", "550_r50", "rt_r50", "rt_r50_bn_head", "r101_dcni3"])
def test_preset_state_dict_maps_one_to_one_onto_reference_keys(name):
    reference = {k: (s, t) for k, s, t in entries(name)}
    model = build_network(get_preset(PRESET_OF[name]), load_pretrained=False)
    ours = {
        k: (list(v.shape), str(v.dtype).removeprefix("torch."))
        for k, v in model.state_dict().items()
        if k not in ("pixel_mean", "pixel_std")
    }
    expected_count = {"r50": 379, "550_r50": 351, "rt_r50": 402, "rt_r50_bn_head": 441}
    if name in expected_count:
        assert len(reference) == expected_count[name]
    mapped = {adelaidet_to_blendmask_key(k): v for k, v in reference.items()}
    assert len(mapped) == len(reference)  # the table is injective on these keys
    assert mapped == ours  # same keys, shapes and dtypes (num_batches_tracked int64)
    assert {our_name(k) for k in reference} == set(ours)
    assert all(blendmask_to_adelaidet_key(adelaidet_to_blendmask_key(k)) == k for k in reference)


# ---------------------------------------------------------------------------------------------
# Synthetic checkpoints


def assert_lands(model: torch.nn.Module, state: dict[str, Tensor]) -> None:
    """Every checkpoint tensor equals the model tensor at its independently computed name."""
    ours = model.state_dict()
    for key, value in state.items():
        name = our_name(key)
        assert name in ours, key
        assert torch.equal(ours[name], value.to(ours[name].dtype)), key


@pytest.fixture(scope="module")
def r50_state() -> OrderedDict[str, Tensor]:
    return synthetic_state(entries("r50"), seed=1)


@pytest.mark.slow
def test_r50_checkpoint_lands_value_for_value_runs_and_equals_adelaidet(tmp_path, r50_state):
    path = save(r50_state, tmp_path / "R_50_1x.pth", legacy=True)  # 2020: legacy format
    cfg, state, report = convert_adelaidet(path, "R_50_1x")
    model = build_network(cfg, load_pretrained=False)
    model.load_state_dict(state)
    assert_lands(model, r50_state)
    assert report.complete and len(report.loaded) == 379
    # MSRA conventions and the class count come with the conversion.
    m = cfg.model
    assert (m.input_format, m.input_scale, m.pixel_mean, m.pixel_std) == (
        "BGR", 255.0, DETECTRON2_PIXEL_MEAN, [1.0, 1.0, 1.0]
    )  # fmt: skip
    assert m.backbone.stride_in_1x1 and m.backbone.weights == "" and m.fcos.num_classes == 80
    assert torch.equal(state["pixel_mean"].flatten(), torch.tensor(DETECTRON2_PIXEL_MEAN))
    assert cfg.data.category_ids == [cid for _, cid in COCO_CATEGORIES]
    assert_matches_reference(model.eval(), r50_state)


def test_coco_categories_match_torchvision():
    from torchvision.models import _meta

    expected = [(n, i) for i, n in enumerate(_meta._COCO_CATEGORIES) if n not in ("N/A", "__background__")]  # fmt: skip
    assert COCO_CATEGORIES == expected and len(COCO_CATEGORIES) == 80


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing", "extra", "shape"])
def test_strict_errors_name_the_bad_key(tmp_path, r50_state, case):
    state = OrderedDict(r50_state)
    key = BAD_KEYS[case]
    if case == "missing":
        del state[key]
    elif case == "extra":
        state[key] = torch.zeros(3, 3)
    else:
        state[key] = torch.zeros(5, 128, 1, 1)
    path = save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as info:
        convert_adelaidet(path, "R_50_1x")
    message = str(info.value)
    assert str(path) in message.splitlines()[0] and "--allow-partial" in message
    assert key in message
    if case == "shape":
        assert "[5, 128, 1, 1]" in message and "[4, 128, 1, 1]" in message


BAD_KEYS = {
    "missing": "backbone.bottom_up.res4.2.conv2.norm.running_var",
    "extra": "proposal_generator.fcos_head.extra_conv.weight",
    "shape": "basis_module.tower.5.weight",
}


@pytest.mark.slow
def test_allow_partial_loads_what_fits_and_lists_the_rest(tmp_path, r50_state):
    state = OrderedDict(r50_state)
    del state[BAD_KEYS["missing"]]
    state[BAD_KEYS["extra"]] = torch.zeros(3, 3)
    state[BAD_KEYS["shape"]] = torch.zeros(5, 128, 1, 1)
    path = save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as info:  # all three in one message
        convert_adelaidet(path, "R_50_1x")
    assert all(key in str(info.value) for key in BAD_KEYS.values())
    cfg, loaded, report = convert_adelaidet(path, "R_50_1x", allow_partial=True)
    assert report.missing == [our_name(BAD_KEYS["missing"])]
    assert report.unexpected == [BAD_KEYS["extra"]]
    assert [m[0] for m in report.mismatched] == [BAD_KEYS["shape"]]
    assert len(report.loaded) == 379 - 2
    assert all(key in report.summary() for key in BAD_KEYS.values())
    for theirs in state:
        ours = our_name(theirs)
        if theirs not in BAD_KEYS.values():
            assert torch.equal(loaded[ours], state[theirs]), theirs
    # What was skipped keeps the fresh initialisation (right shape, not the file's values).
    assert loaded["basis_module.tower.5.weight"].shape == (4, 128, 1, 1)


@pytest.mark.slow
def test_wrong_preset_names_the_fitting_preset(tmp_path):
    path = save(synthetic_state(entries("550_r50")), tmp_path / "550.pth")
    with pytest.raises(ValueError) as info:
        convert_adelaidet(path, "R_50_1x")
    message = str(info.value)
    assert "550_R_50_3x" in message  # the hint
    assert "backbone.top_block.p7.weight" in message  # missing, under the reference name
    assert "proposal_generator.fcos_head.share_tower.0.weight" in message  # unexpected
    # Long lists are counted, with the first keys named. The counts, from the key lists: our
    # keys the file lacks (BN batch counters are filled, not missing), the file's keys we lack.
    ours = build_network(get_preset("R_50_1x"), load_pretrained=False).state_dict()
    theirs = {our_name(k) for k, _, _ in entries("550_r50")}
    missing = [
        k
        for k in ours
        if k not in theirs
        and k not in ("pixel_mean", "pixel_std")
        and not k.endswith("num_batches_tracked")
    ]
    unexpected = [k for k in theirs if k not in ours]
    assert f"{len(missing)} missing, {len(unexpected)} unexpected keys" in message.splitlines()[0]
    assert f"... and {len(missing) - 5} more" in message


def test_adelaidet_config_returns_a_new_config(r50_state):
    base = get_preset("R_50_1x")
    base.model.input_format, base.model.backbone.stride_in_1x1 = "RGB", False
    base.model.backbone.weights = "resnet50.pth"
    before = copy.deepcopy(base)
    cfg = adelaidet_config(base, r50_state, source="R_50_1x.pth")
    assert base == before  # the caller's config is not changed
    m = cfg.model
    assert (m.input_format, m.backbone.stride_in_1x1, m.backbone.weights) == ("BGR", True, "")
    assert m.fcos.num_classes == 80 and cfg.data.category_ids[:3] == [1, 2, 3]


@pytest.mark.slow
def test_num_classes_from_the_file_and_fine_tuning_override(tmp_path):
    state = synthetic_state(pattern_entries(**FAMILIES["rt_r50"], num_classes=3))
    path = save(state, tmp_path / "three.pth")
    cfg, _, report = convert_adelaidet(path, "RT_R_50_4x")
    assert cfg.model.fcos.num_classes == 3 and report.complete
    assert cfg.data.category_ids == []  # not COCO: predictions keep 1..C
    with pytest.raises(ValueError, match="cls_logits.*3 classes.*5"):
        convert_adelaidet(path, "RT_R_50_4x", num_classes=5)
    cfg, weights, report = convert_adelaidet(path, "RT_R_50_4x", num_classes=5, allow_partial=True)
    assert cfg.model.fcos.num_classes == 5
    skipped = {theirs for theirs, *_ in report.mismatched}
    assert skipped == {
        "proposal_generator.fcos_head.cls_logits.weight",
        "proposal_generator.fcos_head.cls_logits.bias",
        "basis_module.seg_head.6.weight",
        "basis_module.seg_head.6.bias",
    }
    assert not report.missing and not report.unexpected
    assert weights["head.cls_logits.weight"].shape[0] == 5
    assert torch.equal(weights["top_layer.bias"], state["top_layer.bias"])


@pytest.mark.slow
def test_panoptic_checkpoint_needs_allow_partial_and_keeps_the_instance_branch(tmp_path):
    listed = key_list("panoptic_r50")
    if listed is None:
        pytest.skip("tests/data/keys/panoptic_r50.json not available")
    state = synthetic_state(listed)
    path = save(state, tmp_path / "panoptic.pth")
    with pytest.raises(ValueError, match="panoptic"):
        convert_adelaidet(path, "R_50_1x")
    _, _, report = convert_adelaidet(path, "R_50_1x", allow_partial=True)
    assert not report.missing and not report.mismatched
    assert all(k.startswith(("panoptic_module.", "backbone.fpn_")) for k in report.unexpected)
    assert len(report.unexpected) == 406 - 379


# ---------------------------------------------------------------------------------------------
# File formats


def _tiny_state() -> OrderedDict[str, Tensor]:
    return OrderedDict(
        [
            ("backbone.fpn_lateral3.weight", torch.randn(2, 2, 1, 1)),
            ("proposal_generator.fcos_head.centerness.bias", torch.randn(1)),
        ]
    )


def test_reader_accepts_bare_wrapped_legacy_ddp_and_pkl(tmp_path):
    state = _tiny_state()
    want = {
        "backbone.fpn_lateral3.weight": state["backbone.fpn_lateral3.weight"],
        "proposal_generator.fcos_head.ctrness.bias": state[
            "proposal_generator.fcos_head.centerness.bias"
        ],
    }
    ddp = OrderedDict((f"module.{k}", v) for k, v in state.items())
    numpy_state = {k: v.numpy() for k, v in state.items()}
    files = [
        save(state, tmp_path / "bare.pth"),
        save(state, tmp_path / "legacy.pth", legacy=True),
        save(ddp, tmp_path / "ddp.pth", iteration=7, scheduler={"last_epoch": 7}),
        save(numpy_state, tmp_path / "numpy.pth", legacy=True, __author__="x"),
    ]
    pkl = tmp_path / "model_final.pkl"
    with pkl.open("wb") as f:
        pickle.dump({"model": numpy_state, "__author__": "Detectron2 Model Zoo"}, f, protocol=2)
    files.append(pkl)
    for path in files:
        got = read_adelaidet_checkpoint(path)
        assert list(got) == list(want), path.name
        for k in want:
            assert torch.equal(got[k], want[k]), (path.name, k)


def test_reader_refuses_code_unless_trusted(tmp_path, caplog):
    path = save(_tiny_state(), tmp_path / "with_args.pth", args=argparse.Namespace(lr=0.1))
    with pytest.raises(ValueError) as info:
        read_adelaidet_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "--trust-pickle" in message and "Namespace" in message
    got = read_adelaidet_checkpoint(path, trust_pickle=True)
    assert "proposal_generator.fcos_head.ctrness.bias" in got
    warning = caplog.text  # a logged warning (stderr from the CLI)
    assert str(path) in warning and "executes pickle code" in warning


def test_reader_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_adelaidet_checkpoint(tmp_path / "nope.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="garbage.pth"):
        read_adelaidet_checkpoint(garbage)
    torchvision_like = save(
        {"conv1.weight": torch.zeros(1), "layer1.0.conv1.weight": torch.zeros(1)},
        tmp_path / "resnet50.pth",
    )
    with pytest.raises(ValueError, match="resnet50.pth.*torchvision ImageNet ResNet"):
        read_adelaidet_checkpoint(torchvision_like)
    ours = {"format_version": 1, "config": {}, "model": {"body.conv1.weight": torch.zeros(1)}}
    with pytest.raises(ValueError, match="model.pt.*already a blendmask model file"):
        read_adelaidet_checkpoint(save(ours, tmp_path / "model.pt"))
    with pytest.raises(ValueError, match="model.*got list"):
        read_adelaidet_checkpoint(save([1, 2], tmp_path / "list.pth"))  # type: ignore[arg-type]


def test_checkpoint_architecture_reads_the_family():
    r101 = checkpoint_architecture({k: torch.empty(s) for k, s, _ in entries("r101_dcni3")})
    assert r101.depth == 101 and len(r101.deformable_blocks) == 11
    assert r101.deformable_blocks[:3] == ("res3.0", "res3.3", "res4.0")
    rt = checkpoint_architecture({k: torch.empty(s) for k, s, _ in entries("rt_r50_bn_head")})
    assert (rt.backbone_norm, rt.head_norm, rt.top_levels, rt.num_share_convs) == ("BN", "BN", 0, 3)
    assert rt.basis_num_convs == 2


# ---------------------------------------------------------------------------------------------
# Command line: convert, then predict with the written model file


@pytest.mark.slow
def test_cli_convert_then_predict(tmp_path, capsys):
    state = synthetic_state(entries("rt_r50"), seed=4)
    ckpt = save(state, tmp_path / "RT_R_50_4x.pth")
    out = tmp_path / "rt.pt"
    small = ["--set", "data.min_size_test=64", "--set", "data.max_size_test=64"]
    rc = cli_main(
        ["convert", "--adelaidet", str(ckpt), "--preset", "RT_R_50_4x", "--out", str(out), *small]
    )
    assert rc == 0 and out.is_file()
    assert "402 tensors loaded" in capsys.readouterr().out
    cfg, weights = read_model_file(out)
    assert cfg.model.input_format == "BGR" and cfg.data.min_size_test == 64
    assert torch.equal(weights["body.layer3.5.bn3.running_var"], state[
        "backbone.bottom_up.res4.5.conv3.norm.running_var"
    ])  # fmt: skip
    dets = Predictor.from_checkpoint(out, device="cpu")([torch.rand(3, 48, 64)])
    assert dets[0].masks.shape[1:] == (48, 64)
    # Bad input: exit code 2 and one first line naming the file.
    rc = cli_main(["convert", "--adelaidet", str(ckpt), "--preset", "R_50_1x", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and str(ckpt) in err.splitlines()[0]


# ---------------------------------------------------------------------------------------------
# Numerical fidelity: AdelaiDet's forward pass written out on the checkpoint's own names


FIDELITY_IMAGES = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))


def _flat(per_level: list[Tensor]) -> Tensor:
    # (N, Ch, Hl, Wl) -> (N, Hl*Wl, Ch), levels concatenated
    return torch.cat([t.permute(0, 2, 3, 1).reshape(t.shape[0], -1, t.shape[1]) for t in per_level], 1)  # fmt: skip


def _close(got: Tensor, want: Tensor, name: str) -> None:
    scale = float(want.abs().max().clamp(min=1.0))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * scale, msg=name)


@torch.no_grad()
def assert_matches_reference(model: torch.nn.Module, state: dict[str, Tensor]):
    """Per-level cls / box / centerness / top-layer maps and the bases equal AdelaiDet's."""
    ours = model(FIDELITY_IMAGES)
    assert all(torch.isfinite(t).all() for t in ours[:5])
    ref = ReferenceForward(state)(FIDELITY_IMAGES)
    _close(ours.cls_logits, _flat(ref["cls"]), "cls_logits")
    _close(ours.bbox_reg, _flat(ref["reg"]), "bbox_reg")
    _close(ours.ctrness, _flat(ref["ctr"]).squeeze(2), "ctrness")
    _close(ours.attentions, _flat(ref["top"]), "attentions")
    _close(ours.bases, ref["bases"], "bases")
    assert ours.num_points_per_level == tuple(t.shape[-2] * t.shape[-1] for t in ref["cls"])
    return ours


def _checkpoint(name: str, folder: Path) -> tuple[dict, Path]:
    """The synthetic checkpoint of a family, saved in one of the accepted forms."""
    state = synthetic_state(entries(name) if name in PRESET_OF else pattern_entries(**FAMILIES[name]), seed=5)  # fmt: skip
    if name == "550_r50":  # detectron2 training checkpoint of a DistributedDataParallel model
        ddp = OrderedDict((f"module.{k}", v) for k, v in state.items())
        return state, save(ddp, folder / "550.pth", iteration=270_000, optimizer={})
    return state, save(state, folder / f"{name}.pth", legacy=name == "rt_r50")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["550_r50", "rt_r50", "rt_r50_bn_head", "r50_dcni3"])
def test_checkpoint_lands_and_network_equals_adelaidet_forward(tmp_path, name):
    state, path = _checkpoint(name, tmp_path)
    preset, overrides = R50_DCNI3 if name == "r50_dcni3" else (PRESET_OF[name], [])
    _, model, report = convert_adelaidet_model(path, preset, overrides=overrides)
    assert report.complete
    assert_lands(model, state)
    assert_matches_reference(model, state)
    if name == "r50_dcni3":
        assert sum("conv2_offset.weight" in k for k in state) == 5  # res3 {0,3} res4 {0,3} res5 {0}
        with pytest.raises(ValueError, match="conv2_offset"):  # DCN weights into a plain R_50
            convert_adelaidet(path, "R_50_1x")
