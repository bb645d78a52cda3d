"""Fault suite, settings side: a numeric setting out of range (negative iterations, NaN
learning rate, zero channels, a threshold outside [0, 1]) stops with one ConfigError naming the
key and the allowed range when the config is resolved, before anything is built or trained; a
model file whose weights do not fit its config says so in one short paragraph. Run alone with
`pytest -m faults`.
"""

from __future__ import annotations

import math
import re
import time

import pytest
import torch

from blendmask.checkpoint_io import load_model_file, save_model_file
from blendmask.cli.main import main
from blendmask.config import ConfigError, check_probability, from_dict, set_value
from blendmask.factory import build
from blendmask.presets import get_preset, load_config

pytestmark = pytest.mark.faults

# (--set assignment, the allowed range the message must state)
BAD_VALUES = [
    ("solver.max_iter=-1", "an integer >= 1"),
    ("solver.max_iter=0", "an integer >= 1"),
    ("solver.base_lr=nan", "a number > 0"),
    ("solver.base_lr=.inf", "a number > 0"),
    ("solver.base_lr=0", "a number > 0"),
    ("solver.base_lr=-0.01", "a number > 0"),
    ("solver.momentum=1.5", r"a number in \[0, 1\]"),
    ("solver.weight_decay=-1e-4", "a number >= 0"),
    ("solver.gamma=0", r"a number in \(0, 1\]"),
    ("solver.warmup_factor=nan", r"a number in \[0, 1\]"),
    ("solver.warmup_iters=-5", "an integer >= 0"),
    ("solver.ims_per_batch=0", "an integer >= 1"),
    ("solver.log_period=0", "an integer >= 1"),
    ("solver.checkpoint_period=-1", "an integer >= 0"),
    ("solver.seed=-1", "an integer in"),
    ("solver.steps=[100, -1]", "an integer >= 0"),
    ("solver.clip_grad_norm=nan", "a number >= 0"),
    ("model.fpn.out_channels=0", r"an integer in \[1, 4096\]"),
    ("model.blender.attn_size=0", r"an integer in \[1, 64\]"),
    ("model.blender.bottom_resolution=-4", r"an integer in \[1, 1024\]"),
    ("model.blender.pooler_scale=0", "a number > 0"),
    ("model.basis_module.num_bases=0", r"an integer in \[1, 4096\]"),
    ("model.basis_module.loss_weight=-1", "a number >= 0"),
    ("model.fcos.num_classes=0", r"an integer in \[1, 100000\]"),
    ("model.fcos.prior_prob=0", r"a number in \(0, 1\)"),
    ("model.fcos.prior_prob=1", r"a number in \(0, 1\)"),
    ("model.fcos.inference_th_test=nan", r"a number in \[0, 1\]"),
    ("model.fcos.inference_th_test=1.5", r"a number in \[0, 1\]"),
    ("model.fcos.nms_th=-0.1", r"a number in \[0, 1\]"),
    ("model.fcos.post_nms_topk_test=0", "an integer >= 1"),
    ("model.fcos.pos_radius=0", "a number > 0"),
    ("model.fcos.fpn_strides=[8, 16, 0, 64, 128]", "an integer >= 1"),
    ("model.backbone.freeze_at=7", r"an integer in \[-1, 5\]"),
    ("model.input_scale=0", "a number > 0"),
    ("model.pixel_std=[1, 0, 1]", "a number > 0"),
    ("model.pixel_mean=[1, .nan, 1]", r"a number \(any finite value\)"),
    ("data.min_size_train=[0]", r"an integer in \[1, 8192\]"),
    ("data.max_size_test=0", r"an integer in \[1, 8192\]"),
    ("data.num_workers=-1", "an integer >= 0"),
    # Sizes that would only fail at run time, out of memory (exit 1, no key named).
    ("data.min_size_test=100000", r"an integer in \[1, 8192\]"),
    ("data.crop_size=100000", r"an integer in \[0, 8192\]"),
    ("model.fpn.out_channels=100000000", r"an integer in \[1, 4096\]"),
    ("model.basis_module.convs_dim=100000000", r"an integer in \[1, 4096\]"),
    ("model.fcos.num_cls_convs=100000", r"an integer in \[0, 64\]"),
    ("model.fcos.num_classes=10000000000", r"an integer in \[1, 100000\]"),
]


@pytest.mark.parametrize("assignment, allowed", BAD_VALUES, ids=[a for a, _ in BAD_VALUES])
def test_bad_numeric_setting_names_key_and_range(assignment, allowed):
    key = assignment.split("=")[0]
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}(\[\d+\])?: .*{allowed}"):
        load_config("tiny", overrides=[assignment])


def test_sizes_of_interest_must_increase():
    with pytest.raises(ConfigError, match="sizes_of_interest: expected increasing"):
        load_config("R_50_1x", overrides=["model.fcos.sizes_of_interest=[64, 512, 256, 1024]"])


def test_bad_value_in_a_yaml_file_names_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("preset: tiny\nsolver:\n  base_lr: .nan\n")
    with pytest.raises(ConfigError, match="solver.base_lr: got nan"):
        load_config(None, path)


def test_python_set_value_of_wrong_type_is_caught():
    cfg = get_preset("tiny")
    cfg.solver.max_iter = 2.5  # type: ignore[assignment]  # bypassing --set's conversion
    with pytest.raises(ConfigError, match="solver.max_iter: expected an integer"):
        cfg.validate()


def test_stored_config_out_of_range_is_rejected(tmp_path):
    cfg = get_preset("tiny")
    model, _, _ = build(cfg, load_pretrained=False)
    save_model_file(tmp_path / "model.pt", cfg, model)
    payload = torch.load(tmp_path / "model.pt", weights_only=True)
    payload["config"]["model"]["blender"]["attn_size"] = 0
    torch.save(payload, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="stored config is invalid: model.blender.attn_size"):
        load_model_file(tmp_path / "model.pt")


def test_train_with_negative_max_iter_exits_2_before_writing(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(["train", "--preset", "tiny", "--set", "solver.max_iter=-1", "--out", str(out)]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "solver.max_iter" in err and ">= 1" in err
    assert not out.exists()


@pytest.mark.parametrize("value", [math.nan, math.inf, -0.1, 1.5, "0.5", True, None])
def test_check_probability_rejects(value):
    with pytest.raises(ConfigError, match="--score-threshold: .*in \\[0, 1\\]"):
        check_probability("--score-threshold", value)


@pytest.mark.parametrize("value", [0, 0.0, 0.3, 1])
def test_check_probability_accepts(value):
    assert check_probability("--score-threshold", value) == float(value)


@pytest.mark.slow
def test_weights_that_do_not_fit_their_config_give_a_short_message_with_fitting_presets(tmp_path):
    tiny = get_preset("tiny")
    model, _, _ = build(tiny, load_pretrained=False)
    # The weights of `tiny` under the config of another preset (the other network).
    other = from_dict(get_preset("nuclei_lite0").to_dict())
    save_model_file(tmp_path / "model.pt", other, model)
    with pytest.raises(ValueError) as info:
        load_model_file(tmp_path / "model.pt")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'model.pt'}: the weights do not fit")
    assert re.search(r"missing \(\d+\): .*\.\.\. and \d+ more", message)
    assert "presets whose network fits these weights" in message and "tiny" in message
    # A paragraph, not a key per line: at most ~10 lines of a 100-column terminal.
    assert len(message.splitlines()) == 1 and len(message) < 1000


# -- hostile YAML (config files and --set values) --------------------------------------------


def alias_bomb(levels: int = 9) -> str:
    """`[[&l0 [1 x 9], &l1 [*l0 x 9], ...]]`: ~300 bytes that expand to 9**levels items."""
    parts = ["&l0 [" + ", ".join(["1"] * 9) + "]"]
    parts += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "[[" + ", ".join(parts) + "]]"


def config_error_line(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_yaml_alias_bomb_is_refused_at_once(tmp_path, capsys):
    """It hung `config` and `train` (the error message formatted 9**9 items with !r)."""
    path = tmp_path / "bomb.yaml"
    path.write_text(f"preset: tiny\ndata:\n  min_size_train: {alias_bomb()}\n")
    start = time.perf_counter()
    line = config_error_line(capsys, ["config", "--config", str(path)])
    assert line.startswith(f"blendmask config: error: {path}:3:") and "aliases" in line, line
    line = config_error_line(capsys, ["config", "--preset", "tiny", "--set",
                                      f"data.min_size_train={alias_bomb()}"])  # fmt: skip
    assert "data.min_size_train:1:" in line and "aliases" in line, line
    assert time.perf_counter() - start < 10


def test_a_shared_9_to_the_9_value_is_shown_short_in_the_error():
    """Bounded formatting: a value built in Python (no YAML) that is a list of 9**9 items."""
    value: list = [1] * 9
    for _ in range(8):
        value = [value] * 9
    cfg = get_preset("tiny")
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        set_value(cfg, "data.min_size_train", [value])
    assert len(str(info.value)) < 200 and time.perf_counter() - start < 1
    assert str(info.value).startswith("data.min_size_train[0]: expected an integer, got [[[")


def test_duplicate_yaml_key_is_refused_with_both_lines(tmp_path, capsys):
    """The second `solver:` block silently replaced the first (base_lr 0.5 was lost)."""
    path = tmp_path / "dup.yaml"
    path.write_text("preset: tiny\nsolver:\n  base_lr: 0.5\nsolver:\n  max_iter: 3\n")
    line = config_error_line(capsys, ["config", "--config", str(path)])
    assert line == f"blendmask config: error: {path}:4:1: duplicate key 'solver' (first at line 2)"


def test_deeply_nested_yaml_is_one_line_exit_2(tmp_path, capsys):
    """5000 levels overflowed PyYAML's recursion: exit 1 and no file named."""
    path = tmp_path / "deep.yaml"
    path.write_text("preset: tiny\ndata: " + "[" * 5000 + "]" * 5000 + "\n")
    line = config_error_line(capsys, ["config", "--config", str(path)])
    assert line.startswith(f"blendmask config: error: {path}:2:") and "nested more than" in line


def test_yaml_syntax_error_is_one_line_with_line_and_column(tmp_path, capsys):
    """PyYAML's message is an excerpt of the file with a caret, over six lines."""
    path = tmp_path / "bad.yaml"
    path.write_text("preset: tiny\nsolver:\n  base_lr: [1,\n  max_iter: 3\n")
    line = config_error_line(capsys, ["config", "--config", str(path)])
    assert line.startswith(f"blendmask config: error: {path}:5:1: expected ',' or ']'"), line
    assert "flow sequence at 3:12" in line


def test_huge_integer_in_yaml_is_a_config_error(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("preset: tiny\nsolver:\n  seed: " + "9" * 5000 + "\n")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: "):
        load_config(None, path)


def test_yaml_anchors_without_aliases_still_load(tmp_path):
    path = tmp_path / "anchor.yaml"
    path.write_text("preset: tiny\nsolver: &s\n  max_iter: 3\n")
    assert load_config(None, path).solver.max_iter == 3
