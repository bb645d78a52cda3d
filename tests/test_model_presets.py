"""The whole model (network + criterion + post-processor) of every preset's network, at test size.

If these fail, a preset cannot train (a parameter without gradient means a branch is disconnected)
or cannot run on an image without objects.

Presets whose model configs are equal (R_50_1x and R_50_3x differ only in the schedule) build
the same network and are tested once. The others keep everything that makes their network
theirs: body depth and DCN blocks, norms, FPN levels, tower conv counts, bottom module and its
conv count, attention size M and bottom resolution R. Only widths shrink (FPN / tower 32, bottom
module 16) and the class count (3); `test_shrunk_networks_differ` checks that this leaves the
tested networks pairwise different.
"""

from __future__ import annotations

import pytest
import torch

from blendmask.config import Config
from blendmask.factory import build, build_network
from blendmask.presets import NUM_SHAPE_CLASSES, PRESETS, get_preset, load_config


def network_representatives() -> list[str]:
    """One preset per distinct model config, first in table order."""
    seen: dict[str, str] = {}
    for name in PRESETS:
        seen.setdefault(repr(get_preset(name).model), name)
    return list(seen.values())


REPRESENTATIVES = network_representatives()


def shrunk(name: str) -> Config:
    """The preset's network at CPU-test width: only widths, the class count and the ImageNet
    file change (see the module docstring)."""
    cfg = get_preset(name)
    m = cfg.model
    m.backbone.weights = ""  # speed: the Lite0 file, when installed, adds nothing to these checks
    m.fcos.num_classes = 3
    m.fpn.out_channels = 32
    m.basis_module.convs_dim = 16
    return cfg.validate()


def test_representatives_cover_every_network():
    assert set(REPRESENTATIVES) == set(PRESETS) - {"R_50_3x", "Panoptic_R_50_3x"}
    for one, three in [("R_50_1x", "R_50_3x"), ("Panoptic_R_50_1x", "Panoptic_R_50_3x")]:
        r50_1x, r50_3x = get_preset(one), get_preset(three)
        assert r50_1x.model == r50_3x.model and r50_1x.solver != r50_3x.solver


@pytest.mark.slow
def test_shrunk_networks_differ():
    """Each tested network has parameters (names or shapes) no other tested network has."""
    signatures = {}
    for name in REPRESENTATIVES:
        net = build_network(shrunk(name), load_pretrained=False)
        signatures[name] = frozenset((k, tuple(v.shape)) for k, v in net.state_dict().items())
    names = list(signatures)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert signatures[a] != signatures[b], (a, b)


def test_shapes_preset_has_one_class_per_shape():
    from blendmask.data.shapes import SHAPE_CLASSES

    assert NUM_SHAPE_CLASSES == len(SHAPE_CLASSES)
    assert get_preset("shapes_lite0").model.fcos.num_classes == len(SHAPE_CLASSES)


def make_batch(num_images: int = 2, size: tuple[int, int] = (96, 128), empty: bool = False):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(num_images, 3, *size, generator=g)
    targets = []
    for i in range(num_images):
        if empty:
            targets.append(
                {
                    "boxes": torch.zeros(0, 4),
                    "labels": torch.zeros(0, dtype=torch.int64),
                    "masks": torch.zeros(0, *size, dtype=torch.uint8),
                    "sem_seg": torch.ones(size, dtype=torch.int64),
                }
            )
            continue
        boxes = torch.tensor([[10.0, 12.0, 60.0, 70.0], [40.0 + i, 30.0, 120.0, 90.0]])
        masks = torch.zeros(2, *size, dtype=torch.uint8)
        for j, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            masks[j, y0:y1, x0:x1] = 1
        # Panoptic presets also read a semantic map (0 thing, 1 stuff, 255 ignore); the others
        # ignore it.
        sem_seg = torch.ones(size, dtype=torch.int64)
        sem_seg[masks.bool().any(0)] = 0
        sem_seg[:4] = 255
        targets.append(
            {"boxes": boxes, "labels": torch.tensor([0, 2]), "masks": masks, "sem_seg": sem_seg}
        )
    return images, targets


@pytest.mark.slow
@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_forward_backward_every_parameter_gets_gradient(name: str) -> None:
    torch.manual_seed(0)
    cfg = shrunk(name)
    model, criterion, post = build(cfg)
    model.train()
    images, targets = make_batch()
    losses = criterion(model(images), targets)
    expected = {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_mask"}
    assert expected <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    missing = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)
    ]
    assert not missing, f"{name}: parameters without gradient: {missing[:8]}"


@pytest.mark.parametrize("name", ["tiny", "550_R_50_3x", "RT_R_50_4x"])
def test_empty_image_finite_losses_and_empty_detections(name: str) -> None:
    cfg = shrunk(name)
    model, criterion, post = build(cfg)
    images, targets = make_batch(empty=True)
    out = model(images)
    losses = criterion(out, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    total = sum(losses.values())
    total.backward()  # zero positives still give a graph
    model.eval()
    # A threshold above any score: nothing passes, shapes must still be right.
    post.score_thresh = 2.0
    with torch.no_grad():
        dets = post(model(images), [(96, 128), (96, 128)], [(50, 70), (96, 128)])
    assert [tuple(d.masks.shape) for d in dets] == [(0, 50, 70), (0, 96, 128)]
    for d in dets:
        assert d.boxes.shape == (0, 4) and d.boxes.dtype == torch.float32
        assert d.scores.shape == (0,) and d.labels.dtype == torch.int64
        assert d.masks.dtype == torch.bool


def test_one_sgd_step_lowers_the_loss() -> None:
    torch.manual_seed(0)
    cfg = shrunk("tiny")
    model, criterion, _ = build(cfg)
    model.train()
    images, targets = make_batch()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.0)
    before = sum(criterion(model(images), targets).values())
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = sum(criterion(model(images), targets).values())
    assert after < before, (float(before), float(after))


def test_detections_at_each_original_size() -> None:
    cfg = shrunk("tiny")
    cfg.model.fcos.inference_th_test = 0.0
    model, _, post = build(cfg)
    model.eval()
    images, _ = make_batch()
    with torch.no_grad():
        dets = post(
            model(images, [(96, 128), (64, 100)]), [(96, 128), (64, 100)], [(192, 256), (32, 50)]
        )
    assert dets[0].masks.shape[1:] == (192, 256) and dets[1].masks.shape[1:] == (32, 50)
    assert len(dets[0]) > 0
    assert (dets[1].boxes[:, 2] <= 50).all() and (dets[1].boxes[:, 3] <= 32).all()


@pytest.mark.parametrize(
    "old, new", [("shapes_R_18", "shapes_lite0"), ("nuclei_R_18", "nuclei_lite0")]
)
def test_old_preset_names_warn_and_give_the_new_preset(old, new, tmp_path):
    """The old names (they said ResNet-18 of an EfficientNet-Lite0 body) still resolve, to the
    same config, with a DeprecationWarning naming the new name; a YAML file naming the old preset
    loads too. Neither old name is listed as a preset of its own."""
    with pytest.warns(DeprecationWarning, match=f"'{old}' is now called '{new}'"):
        cfg = get_preset(old)
    assert cfg == get_preset(new) and cfg.preset == new
    assert cfg.model.backbone.name == "efficientnet_lite0"
    (tmp_path / "old.yaml").write_text(f"preset: {old}\n")
    with pytest.warns(DeprecationWarning):
        assert load_config(yaml_path=tmp_path / "old.yaml") == cfg
    assert old not in PRESETS and new in PRESETS


def test_old_preset_name_is_one_warning_line_on_the_command_line(capsys):
    from blendmask.cli.main import main

    with pytest.warns(DeprecationWarning):
        assert main(["config", "--preset", "shapes_R_18"]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "preset 'shapes_R_18' is now called 'shapes_lite0' (the old name will be removed)"
    ]
    assert "preset: shapes_lite0" in captured.out
    assert main(["presets"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line[:1].strip()]
    assert {"shapes_lite0", "nuclei_lite0"} <= set(names) and "shapes_R_18" not in names


def test_a_model_file_saved_under_an_old_preset_name_loads(tmp_path):
    """A model file stores its config, preset name included: one written under `shapes_R_18`
    loads, with no warning (the stored settings are used, the name only reported)."""
    import warnings

    from blendmask.checkpoint_io import load_model_file, save_model_file

    cfg = get_preset("tiny")
    cfg.preset = "shapes_R_18"
    model, _, _ = build(cfg, load_pretrained=False)
    save_model_file(tmp_path / "model.pt", cfg, model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        loaded, network, _, _ = load_model_file(tmp_path / "model.pt")
    assert loaded.preset == "shapes_R_18" and loaded.model == cfg.model
