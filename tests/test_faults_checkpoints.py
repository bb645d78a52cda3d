"""Fault suite, checkpoints: a `model.pt` or `last.pt` that is not what blendmask wrote.

Every entry point (predict, eval, export, explain, `Predictor.from_checkpoint`, train's resume)
reads these files through `checkpoint_reader.read_checkpoint`, so a file of the wrong kind (an
image, text, nothing), a field of the wrong type (a crafted file), NaN weights, or category
names and ids that do not match the classes stop with one line naming the file and the field
(exit 2), never with a traceback from inside torch or a silently wrong prediction.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from blendmask.checkpoint_io import read_model_file, save_model_file
from blendmask.cli.main import main
from blendmask.factory import build
from blendmask.predictor import Predictor
from blendmask.presets import get_preset
from blendmask.training.checkpoint import read_training_state

pytestmark = pytest.mark.faults

FAST_TRAIN = ["--preset", "tiny", "--device", "cpu", "--set", "data.min_size_train=[64]",
              "--set", "data.max_size_train=96", "--set", "data.num_workers=0"]  # fmt: skip


def error_line(err: str) -> str:
    """The one `blendmask X: error:` line of stderr (and no traceback)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and ": error: " in lines[0], err
    return lines[0]


@pytest.fixture(scope="module")
def model_payload() -> dict[str, Any]:
    """The content of a random-init tiny model.pt with 4 named classes."""
    torch.manual_seed(0)
    cfg = get_preset("tiny")
    cfg.model.fcos.num_classes = 4
    cfg.data.category_names = ["a", "b", "c", "d"]
    cfg.data.category_ids = [1, 2, 3, 4]
    model, _, _ = build(cfg.validate(), load_pretrained=False)
    return {"format_version": 1, "config": cfg.to_dict(), "model": model.state_dict()}


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(payload: dict[str, Any]) -> None:
        node = payload
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


def _nan_weight(payload: dict[str, Any]) -> None:
    payload["model"]["head.cls_logits.weight"][0, 0, 0, 0] = float("nan")


# (id, edit of the payload, what the one error line must say after the file name)
MODEL_EDITS = [
    ("config-list", _set(["config"], [1, 2]), "field config: expected a dict, got a list"),
    ("config-int", _set(["config"], 3), "field config: expected a dict, got an int"),
    ("model-list", _set(["model"], [1, 2]), "field model: expected a dict, got a list"),
    ("model-empty", _set(["model"], {}), "field model: no tensors"),
    ("model-not-tensor", _set(["model", "x"], 3), "field model: 'x': expected a tensor"),
    ("version-str", _set(["format_version"], "1"), "field format_version: expected an int"),
    ("version-newer", _set(["format_version"], 7), "format 7 is newer than this blendmask"),
    ("nan-weights", _nan_weight, "field model: head.cls_logits.weight: NaN or infinite"),
    ("names-short", _set(["config", "data", "category_names"], ["a"]),
     "data.category_names: 1 values for 4 classes"),
    ("ids-repeated", _set(["config", "data", "category_ids"], [1, 1, 1, 1]),
     "data.category_ids[1]: id 1 repeated"),
    ("section-a-list", _set(["config", "solver"], [1]), "solver: is a section"),
    ("huge-string", _set(["config", "model", "backbone", "name"], "x" * 10**7),
     "model.backbone.name: got 'xxxxxxxxxxxx"),
]  # fmt: skip


@pytest.mark.parametrize(
    "edit, expected", [e[1:] for e in MODEL_EDITS], ids=[e[0] for e in MODEL_EDITS]
)
def test_crafted_model_file_is_one_line_naming_file_and_field(
    model_payload, tmp_path, edit, expected, capsys
):
    payload = copy.deepcopy(model_payload)
    edit(payload)
    path = tmp_path / "model.pt"
    torch.save(payload, path)
    with pytest.raises(ValueError, match=f"^{path}: .*") as info:
        read_model_file(path)
    assert expected in str(info.value) and len(str(info.value)) < 400
    image = tmp_path / "image.png"
    image.write_bytes(b"\x89PNG not read: the model file fails first")
    argv = ["predict", "--weights", str(path), str(image), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert error_line(capsys.readouterr().err).endswith(str(info.value))


NOT_MODEL_FILES = [
    ("photo.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "a JPEG image, not a blendmask model file"),
    ("photo.png", b"\x89PNG\r\n\x1a\n\x00\x00", "a PNG image, not a blendmask model file"),
    ("empty.pt", b"", "an empty file, not a blendmask model file"),
    ("config.yaml", b"preset: tiny\n", "no torch.save file: it starts with b'preset: '"),
    # torch.load's refusal of unknown pickle opcodes is a paragraph suggesting weights_only=False
    ("pickle.pt", b"\x80\x04\x95junk", "not a readable blendmask model file (damaged or no"),
    ("zip.pt", b"PK\x03\x04" + b"\x00" * 40, "not a readable blendmask model file (damaged or no"),
]


@pytest.mark.parametrize(
    "name, content, expected", NOT_MODEL_FILES, ids=[n[0] for n in NOT_MODEL_FILES]
)
def test_a_file_that_is_no_model_file_says_so_in_one_line(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        read_model_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and expected in message, message
    assert "\n" not in message and "weights_only" not in message and len(message) < 300


def test_a_pickle_needing_code_is_refused_without_advice_to_run_it(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"config": {}, "model": {"w": torch.zeros(1)}, "extra": range(3)}, path)
    with pytest.raises(ValueError) as info:
        read_model_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not a readable blendmask model file (it holds a ")
    assert "range" in message and "weights_only" not in message and "\n" not in message


@pytest.mark.parametrize("command", ["eval", "export", "explain"])
def test_every_command_reads_the_model_file_through_the_checks(tmp_path, command, capsys):
    path = tmp_path / "model.pt"
    torch.save({"format_version": 1, "config": [1], "model": {}}, path)
    image = tmp_path / "image.png"
    image.write_bytes(b"\x89PNG")
    argv = {
        "eval": ["eval", "--weights", str(path), "--json", str(tmp_path / "x.json"),
                 "--images", str(tmp_path), "--out", str(tmp_path / "out")],
        "export": ["export", "--weights", str(path), "--out", str(tmp_path / "m.onnx")],
        "explain": ["explain", "--weights", str(path), "--out", str(tmp_path / "out"), str(image)],
    }[command]  # fmt: skip
    assert main(argv) == 2
    line = error_line(capsys.readouterr().err)
    assert line == f"blendmask {command}: error: {path}: field config: expected a dict, got a list"


def test_predictor_from_checkpoint_of_a_list_config(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"format_version": 1, "config": ["not", "a", "config"], "model": {}}, path)
    with pytest.raises(ValueError, match=f"^{path}: field config: expected a dict, got a list$"):
        Predictor.from_checkpoint(path, device="cpu")


def test_save_then_read_round_trips(model_payload, tmp_path):
    """The checks accept what blendmask writes (the schema is not stricter than the writer)."""
    cfg = get_preset("tiny")
    model, _, _ = build(cfg, load_pretrained=False)
    save_model_file(tmp_path / "model.pt", cfg, model)
    read_cfg, state = read_model_file(tmp_path / "model.pt")
    assert read_cfg == cfg and state.keys() == model.state_dict().keys()


# -- last.pt ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, shapes_dataset) -> Path:
    """A finished 1-iteration run: its last.pt, to be edited and resumed."""
    out = tmp_path_factory.mktemp("run") / "one"
    argv = ["train", "--out", str(out), "--train-json", str(shapes_dataset["train_json"]),
            "--train-images", str(shapes_dataset["train_images"]), "--max-iter", "1", *FAST_TRAIN]  # fmt: skip
    assert main(argv) == 0
    return out


def _numpy_keys_short(payload: dict[str, Any]) -> None:
    payload["rng"]["numpy"]["keys"] = payload["rng"]["numpy"]["keys"][:5]


LAST_EDITS = [
    ("rng-str", _set(["rng"], "x"), "field rng: expected a dict, got a str"),
    ("rng-numpy-pos", _set(["rng", "numpy", "pos"], "x"), "field rng.numpy.pos: expected an int"),
    ("rng-numpy-keys", _numpy_keys_short, "field 'rng' does not fit this run"),
    ("optimizer-empty", _set(["optimizer"], {}), "field optimizer: no 'state'"),
    ("optimizer-groups", _set(["optimizer", "param_groups"], []),
     "field 'optimizer' does not fit this run"),
    ("scheduler-str", _set(["scheduler"], "x"), "field scheduler: expected a dict, got a str"),
    ("model-empty", _set(["model"], {}), "field model: no tensors"),
    ("iteration-negative", _set(["iteration"], -3), "field iteration: expected >= 0, got -3"),
    ("iteration-bool", _set(["iteration"], True), "field iteration: expected an int, got a bool"),
    ("config-list", _set(["config"], [1]), "field config: expected a dict, got a list"),
    ("schedule-steps", _set(["extra", "schedule", "steps"], "x"),
     "field extra.schedule.steps: expected a list"),
]  # fmt: skip


@pytest.mark.parametrize(
    "edit, expected", [e[1:] for e in LAST_EDITS], ids=[e[0] for e in LAST_EDITS]
)
def test_resuming_a_crafted_last_pt_is_one_line_naming_file_and_field(
    finished_run, shapes_dataset, tmp_path, edit, expected, capsys
):
    out = tmp_path / "run"
    out.mkdir()
    payload = torch.load(finished_run / "last.pt", weights_only=True)
    edit(payload)
    torch.save(payload, out / "last.pt")
    argv = ["train", "--out", str(out), "--train-json", str(shapes_dataset["train_json"]),
            "--train-images", str(shapes_dataset["train_images"]), "--max-iter", "2",
            "--resume-with-new-settings", *FAST_TRAIN]  # fmt: skip
    assert main(argv) == 2
    line = error_line(capsys.readouterr().err)
    assert line.startswith(f"blendmask train: error: {out / 'last.pt'}: ") and expected in line


def test_read_training_state_accepts_what_training_wrote(finished_run):
    assert read_training_state(finished_run / "last.pt")["iteration"] == 1
