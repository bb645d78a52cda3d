"""Config system: presets, YAML overrides, --set conversion, clear errors."""

from __future__ import annotations

import pytest

from blendmask.config import ConfigError, apply_overrides, load_config
from blendmask.presets import PRESETS, get_preset


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_validates(name: str) -> None:
    cfg = get_preset(name)
    assert cfg.preset == name
    assert len(cfg.model.fcos.fpn_strides) == 3 + cfg.model.fpn.top_levels


def test_reference_defaults_of_r50() -> None:
    m = get_preset("R_50_1x").model
    assert (m.blender.bottom_resolution, m.basis_module.num_bases, m.blender.attn_size) == (
        56,
        4,
        14,
    )
    assert m.pixel_mean == [103.53, 116.28, 123.675] and m.input_format == "BGR"
    assert m.backbone.stride_in_1x1 and m.backbone.freeze_at == 2
    assert m.fcos.fpn_strides == [8, 16, 32, 64, 128] and not m.fcos.use_scale


def test_set_converts_types() -> None:
    cfg = get_preset("R_50_1x")
    apply_overrides(
        cfg,
        [
            "model.blender.attn_size=7",
            "solver.base_lr=0.02",
            "model.fcos.center_sample=false",
            "data.min_size_train=[600, 700]",
            "model.backbone.name=resnet101",
        ],
    )
    assert cfg.model.blender.attn_size == 7
    assert cfg.solver.base_lr == pytest.approx(0.02)
    assert cfg.model.fcos.center_sample is False
    assert cfg.data.min_size_train == [600, 700]
    assert cfg.model.backbone.name == "resnet101"


def test_unknown_key_suggests() -> None:
    cfg = get_preset("R_50_1x")
    with pytest.raises(ConfigError, match="did you mean 'attn_size'"):
        apply_overrides(cfg, ["model.blender.atn_size=7"])


def test_wrong_type_names_key() -> None:
    cfg = get_preset("R_50_1x")
    with pytest.raises(ConfigError, match="model.blender.attn_size"):
        apply_overrides(cfg, ["model.blender.attn_size=big"])


def test_bad_choice_lists_allowed_values() -> None:
    with pytest.raises(ConfigError, match="allowed values: bilinear, nearest"):
        load_config("R_50_1x", overrides=["model.blender.top_interp=bicubic"])


def test_yaml_file_overrides_its_preset(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("preset: 550_R_50_3x\nmodel:\n  fcos:\n    num_classes: 3\n")
    cfg = load_config(None, path, ["solver.max_iter=10"])
    assert cfg.preset == "550_R_50_3x"
    assert cfg.model.fcos.num_classes == 3 and cfg.model.fpn.top_levels == 1
    assert cfg.solver.max_iter == 10


def test_yaml_unknown_key_names_file(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("preset: tiny\nmodel:\n  fcoss:\n    num_classes: 3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*fcoss.*did you mean 'fcos'"):
        load_config(None, path)


def test_inconsistent_levels_rejected() -> None:
    with pytest.raises(ConfigError, match="fpn_strides"):
        load_config("R_50_1x", overrides=["model.fpn.top_levels=1"])


def test_unknown_preset() -> None:
    with pytest.raises(ConfigError, match="did you mean 'R_50_1x'"):
        get_preset("R_50_1X")


def test_round_trip_through_dict() -> None:
    from blendmask.config import from_dict

    cfg = get_preset("RT_R_50_4x")
    assert from_dict(cfg.to_dict()) == cfg
