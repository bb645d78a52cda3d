"""Config system: presets, YAML overrides, --set conversion, clear errors."""

from __future__ import annotations

import pytest

import blendmask
from blendmask.config import ConfigError, apply_overrides
from blendmask.presets import PRESETS, get_preset, load_config


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
    # BASIS_MODULE.NORM of AdelaiDet's defaults (docs/reference.md §2.1), not overridden by any
    # BlendMask config file.
    assert m.basis_module.norm == "SyncBN"


REFERENCE_PRESETS = [
    "R_50_1x", "R_50_3x", "R_101_3x", "R_101_dcni3_5x", "550_R_50_3x", "RT_R_50_4x",
    "RT_R_50_4x_bn_head",
]  # fmt: skip


@pytest.mark.parametrize("name", REFERENCE_PRESETS)
def test_reference_presets_differ_from_adelaidet_only_where_documented(name: str) -> None:
    """The presets module docstring lists what differs from the AdelaiDet configs: no ImageNet
    file, AMP on, 2 loader workers. Fails when a preset changes one of these silently."""
    cfg = get_preset(name)
    assert cfg.model.backbone.weights == ""
    assert cfg.solver.amp is True and cfg.data.num_workers == 2
    assert cfg.model.basis_module.norm == "SyncBN"
    # MSRA input conventions (detectron2 defaults for R-50.pkl / R-101.pkl).
    m = cfg.model
    assert (m.input_format, m.input_scale, m.backbone.stride_in_1x1) == ("BGR", 255.0, True)


def test_load_config_is_exported_and_takes_the_yaml_preset(tmp_path) -> None:
    assert blendmask.load_config is load_config and blendmask.get_preset is get_preset
    path = tmp_path / "c.yaml"
    path.write_text("preset: RT_R_50_4x\nsolver:\n  max_iter: 7\n")
    assert load_config(None, path).preset == "RT_R_50_4x"
    explicit = load_config("550_R_50_3x", path)  # an explicit preset wins over the file's
    assert explicit.preset == "550_R_50_3x" and explicit.solver.max_iter == 7
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(None, tmp_path / "nope.yaml")


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


def test_every_numeric_setting_has_an_allowed_range() -> None:
    """A new int / float field needs a rule in config.checks.NUMERIC_RANGES (otherwise only
    finiteness is checked): add one saying what the setting may be."""
    from blendmask.config import Config
    from blendmask.config.checks import NUMERIC_RANGES, numeric_fields

    fields = set(numeric_fields(Config()))
    assert fields == set(NUMERIC_RANGES), (
        f"without a range: {sorted(fields - set(NUMERIC_RANGES))}; "
        f"stale ranges: {sorted(set(NUMERIC_RANGES) - fields)}"
    )


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_is_inside_the_ranges(name: str) -> None:
    from blendmask.config.checks import NUMERIC_RANGES, numeric_fields

    for key, (value, _) in numeric_fields(get_preset(name)).items():
        values = value if isinstance(value, list) else [value]
        assert all(NUMERIC_RANGES[key].contains(v) for v in values), (key, value)
