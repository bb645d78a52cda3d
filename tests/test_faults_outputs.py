"""Hostile output folders and inputs of `blendmask predict` / `train`: nothing written through
a planted link, no output overwritten or written outside its folder, resume by the file and
the model's content, no hang on a FIFO, nothing left behind by a refused command.

- a link at OUT/.lock or OUT/predictions.jsonl (torn last line) is refused in one line and its
  target is untouched; a FIFO where an output goes is refused, not waited on;
- `a/img.png`, `b/img.png`, `0001_img.png` give three overlays and three id maps; `...png`
  writes its instance masks inside OUT/masks;
- resume keys on the resolved path (`grow` typed in its parent folder = `/abs/.../grow`);
- panoptic predict resumes: 3 images then 1 of them keeps 3 annotations;
- a FIFO in a list of paths is listed as unreadable (not a regular file) instead of hanging;
- a model file replaced at the same path is refused on resume;
- an --out inside the input folder is left out of the search;
- a refused model / dataset leaves no output folder, and .lock is gone after a run;
- a full disk while appending records names the file.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from blendmask.atomic import WriteError
from blendmask.checkpoint_io import save_model_file
from blendmask.cli import main
from blendmask.data.sources import output_names
from blendmask.factory import build
from blendmask.prediction.panoptic_predict import predict_panoptic_images
from blendmask.prediction.predict import predict_images
from blendmask.prediction.predict_stream import JsonLinesWriter, read_records
from blendmask.presets import get_preset
from blendmask.runtime.output_lock import OutputLock

pytestmark = pytest.mark.faults

NAMES = ["circle", "rectangle", "triangle", "star"]


def _tiny_cfg(panoptic: bool = False):
    cfg = get_preset("tiny")
    cfg.model.fcos.num_classes = 4
    cfg.model.fcos.inference_th_test = 0.0
    cfg.data.category_names = list(NAMES)
    cfg.data.category_ids = [1, 2, 3, 4]
    cfg.data.min_size_test, cfg.data.max_size_test = 64, 96
    if panoptic:
        p = cfg.model.panoptic
        p.enabled, p.num_stuff_classes, p.conv_dims, p.stuff_area_limit = True, 2, 32, 64
        cfg.data.stuff_names, cfg.data.stuff_ids = ["sky", "grass"], [5, 6]
    return cfg.validate()


def _model(path: Path, seed: int, panoptic: bool = False) -> Path:
    torch.manual_seed(seed)
    cfg = _tiny_cfg(panoptic)
    model, _, _ = build(cfg, load_pretrained=False)
    save_model_file(path, cfg, model)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"a": _model(root / "a.pt", 0), "b": _model(root / "b.pt", 1)}


def _image(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="PNG")  # `...png` has no suffix to go by
    return path


def _predict(model: Path, inputs: list, out: Path, *extra: str) -> list[str]:
    return ["predict", "--weights", str(model), *map(str, inputs), "--out", str(out)] + [
        "--device",
        "cpu",
        "--workers",
        "0",
        *extra,
    ]


def _one_line_exit_2(capsys, argv: list[str], *words: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for word in words:
        assert word in err, err
    return err


def test_link_at_lock_is_refused_and_its_target_untouched(models, tmp_path, capsys):
    """Wrong if OUT/.lock is opened through a planted link (the victim truncated, a pid
    written into it)."""
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".lock").symlink_to(victim)
    image = _image(tmp_path / "img.png")
    _one_line_exit_2(capsys, _predict(models["a"], [image], out), ".lock", "symbolic link")
    assert victim.read_text() == "keep me\n"


def test_link_at_predictions_jsonl_is_refused_and_its_target_untouched(models, tmp_path, capsys):
    """Wrong if the torn-line repair or the append go through a link at the records file."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"line one\npartial")
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.jsonl").symlink_to(victim)
    image = _image(tmp_path / "img.png")
    argv = _predict(models["a"], [image], out)
    _one_line_exit_2(capsys, argv, "predictions.jsonl", "symbolic link")
    assert victim.read_bytes() == b"line one\npartial"


def _released(path: Path) -> None:
    """Unblock a thread stuck opening the FIFO `path` (an open with no writer waits forever)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        os.close(fd)
    except OSError:
        pass


def _finishes(target, timeout: float, fifo: Path) -> dict:
    """Run `target()` in a thread; {"result" | "error"}, or {} when it is still blocked after
    `timeout` s (it is then released through `fifo`)."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = target()
        except Exception as exc:  # noqa: BLE001 - reported to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        _released(fifo)
        thread.join(30)
        return {}
    return outcome


def test_fifo_at_records_file_is_refused_not_waited_on(tmp_path):
    """Wrong if appending to OUT/predictions.jsonl opens a FIFO there for writing (blocks until
    a reader comes: forever)."""
    fifo = tmp_path / "predictions.jsonl"
    os.mkfifo(fifo)
    writer = JsonLinesWriter(fifo)
    outcome = _finishes(lambda: writer.write([{"file_name": "x"}]), 20, fifo)
    assert outcome, "blocked on the FIFO"
    assert isinstance(outcome.get("error"), WriteError), outcome
    assert "not a regular file" in str(outcome["error"])


def test_fifo_in_a_path_list_is_listed_not_waited_on(models, tmp_path):
    """Wrong if an image is opened (its size read) before checking it is a regular file: a
    FIFO named in a list blocks predict forever."""
    fifo = tmp_path / "f.png"
    os.mkfifo(fifo)
    good = _image(tmp_path / "good.png")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{fifo}\n{good}\n")
    out = tmp_path / "out"
    call = lambda: predict_images(weights=models["a"], inputs=[listing], out=out, device="cpu")  # noqa: E731
    outcome = _finishes(call, 120, fifo)
    assert outcome, "predict blocked on the FIFO"
    assert "error" not in outcome, outcome
    assert outcome["result"]["predicted"] == 1 and outcome["result"]["skipped"] == 1
    errors = list(read_records(out / "errors.jsonl"))
    assert "not a regular file (a FIFO)" in errors[0]["error"]


def test_output_names_are_unique_plain_names():
    """Wrong if an input called like another's indexed name, or differing only in case, or
    named `...png`, gets a clashing name or one that leaves its folder."""
    paths = [Path(p) for p in ("a/img.png", "b/img.png", "0001_img.png", "...png", "c/IMG.PNG")]
    names = output_names(paths, ".png")
    assert len({n.casefold() for n in names}) == len(names), names
    for name in names:
        assert "/" not in name and not name.startswith("."), name
    # A list without clashes keeps the plain stems (what users and resumed runs expect).
    assert output_names([Path("x/a.jpg"), Path("y/b.jpg")], ".png") == ["a.png", "b.png"]


def test_colliding_names_keep_every_overlay_and_id_map(models, tmp_path):
    """Wrong if `0001_img.png` next to two `img.png` overwrites one of their overlays or id
    maps (3 records, 2 files)."""
    for sub in ("a/img.png", "b/img.png", "0001_img.png"):
        _image(tmp_path / sub)
    listing = tmp_path / "list.txt"
    listing.write_text("a/img.png\nb/img.png\n0001_img.png\n")
    out = tmp_path / "out"
    predict_images(weights=models["a"], inputs=[listing], out=out, device="cpu", save_masks="idmap")
    records = list(read_records(out / "predictions.jsonl"))
    assert len(records) == 3
    assert len(list((out / "overlays").iterdir())) == 3
    assert len({r["masks"] for r in records}) == 3
    assert len(list((out / "masks").iterdir())) == 3


def test_image_added_to_a_grown_folder_keeps_the_others_overlays(models, tmp_path):
    """Wrong if an image added to the folder that sorts first takes an earlier image's overlay
    name on resume (`output_names` of the new list gives `w/img.png` `0000_img.png`, the name
    `x/img.png` was written under) and overwrites it."""
    for sub in ("x/img.png", "y/img.png"):
        _image(tmp_path / "in" / sub)
    out = tmp_path / "out"
    predict_images(weights=models["a"], inputs=[tmp_path / "in"], out=out, device="cpu")
    before = {p.name: p.read_bytes() for p in (out / "overlays").iterdir()}
    assert len(before) == 2
    _image(tmp_path / "in" / "w" / "img.png", seed=7)
    predict_images(weights=models["a"], inputs=[tmp_path / "in"], out=out, device="cpu")
    after = {p.name: p.read_bytes() for p in (out / "overlays").iterdir()}
    assert len(after) == 3
    assert all(after[name] == data for name, data in before.items())
    records = list(read_records(out / "predictions.jsonl"))
    assert len({r["output_name"] for r in records}) == 3


def test_dots_name_writes_its_masks_inside_masks_folder(models, tmp_path):
    """Wrong if `...png` (stem `..`) with --save-masks instances writes OUT/masks/../k.png."""
    image = _image(tmp_path / "in" / "...png")
    out = tmp_path / "out"
    predict_images(
        weights=models["a"],
        inputs=[image],
        out=out,
        device="cpu",
        score_threshold=0.0,
        save_masks="instances",
    )
    (record,) = read_records(out / "predictions.jsonl")
    assert record["masks"], "the random model gives detections at threshold 0"
    masks = out / "masks"
    for rel in record["masks"]:
        path = (out / rel).resolve()
        assert masks.resolve() in path.parents and path.is_file(), rel
    assert not list(out.glob("*.png")), "mask files written outside OUT/masks"


def test_resume_keys_on_the_resolved_path(models, tmp_path, monkeypatch):
    """Wrong if `grow` typed in its parent folder and `/abs/.../grow` are two sets of images
    (4 records for 2 images)."""
    for name in ("x.png", "y.png"):
        _image(tmp_path / "d" / "grow" / name)
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path / "d")
    predict_images(weights=models["a"], inputs=["grow"], out=out, device="cpu")
    monkeypatch.chdir(tmp_path)
    summary = predict_images(
        weights=models["a"], inputs=[tmp_path / "d" / "grow"], out=out, device="cpu"
    )
    assert summary["resumed"] == 2 and summary["predicted"] == 0
    assert len(list(read_records(out / "predictions.jsonl"))) == 2


def test_replaced_model_file_is_refused_on_resume(models, tmp_path):
    """Wrong if resuming compares the model's path only: another model copied over the same
    path would add its records to the first one's."""
    model = tmp_path / "model.pt"
    shutil.copy(models["a"], model)
    _image(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    predict_images(weights=model, inputs=[tmp_path / "in"], out=out, device="cpu")
    shutil.copy(models["b"], model)
    _image(tmp_path / "in" / "b.png", seed=1)
    with pytest.raises(ValueError, match="model_sha256"):
        predict_images(weights=model, inputs=[tmp_path / "in"], out=out, device="cpu")
    assert len(list(read_records(out / "predictions.jsonl"))) == 1


def test_out_inside_the_input_folder_is_not_searched(models, tmp_path):
    """Wrong if a second run into `in/out` predicts the first run's overlays as images."""
    _image(tmp_path / "in" / "a.png")
    out = tmp_path / "in" / "out"
    for _ in range(2):
        summary = predict_images(weights=models["a"], inputs=[tmp_path / "in"], out=out)
        assert summary["images"] == 1
    assert len(list(read_records(out / "predictions.jsonl"))) == 1


def test_refused_model_leaves_nothing_and_a_run_leaves_no_lock(models, tmp_path, capsys):
    """Wrong if a command refused at its checks leaves OUT (with .lock and
    predict_settings.json), or if .lock outlives a run."""
    image = _image(tmp_path / "img.png")
    refused = tmp_path / "refused"
    _one_line_exit_2(capsys, _predict(models["a"], [image], refused, "--classes", "zebra"), "zebra")
    assert not refused.exists()
    done = tmp_path / "done"
    assert main(_predict(models["a"], [image], done)) == 0
    assert (done / "predictions.jsonl").is_file() and not (done / ".lock").exists()
    # An error inside the locked part (a link planted at the settings file) also unlocks.
    (done / "predict_settings.json").unlink()
    (done / "predict_settings.json").symlink_to(tmp_path / "elsewhere")
    _one_line_exit_2(capsys, _predict(models["a"], [image], done), "predict_settings.json")
    assert not (done / ".lock").exists()


def test_train_refused_at_its_checks_leaves_no_folder(tmp_path, capsys):
    """Wrong if `train` makes --out (empty) before finding that its dataset is missing."""
    out = tmp_path / "runs" / "one"
    argv = ["train", "--preset", "tiny", "--train-json", str(tmp_path / "missing.json")]
    argv += ["--train-images", str(tmp_path), "--out", str(out), "--device", "cpu"]
    _one_line_exit_2(capsys, argv, "missing.json")
    assert not (tmp_path / "runs").exists()


def test_lock_is_removed_and_a_stale_file_does_not_block(tmp_path):
    """Wrong if .lock stays after the holder leaves, or if a new holder cannot lock after a
    previous one removed the file."""
    with OutputLock(tmp_path):
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    assert not (tmp_path / ".lock").exists()
    (tmp_path / ".lock").write_text("12345\n")  # left by a killed run: not locked
    with OutputLock(tmp_path):
        with pytest.raises(ValueError, match="another blendmask process"):
            OutputLock(tmp_path).__enter__()
    assert not (tmp_path / ".lock").exists()


def test_disk_full_while_appending_records_names_the_file(models, tmp_path, monkeypatch, capsys):
    """Wrong if ENOSPC while appending to predictions.jsonl is reported without the file
    ("[Errno 28] No space left on device")."""
    image = _image(tmp_path / "img.png")
    out = tmp_path / "out"

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    argv = _predict(models["a"], [image], out, "--no-overlays")
    err = _one_line_exit_2(capsys, argv, "predictions.jsonl", "no space left on device")
    assert err.startswith("blendmask predict: error: cannot write ")


@pytest.fixture(scope="module")
def panoptic_model(tmp_path_factory) -> Path:
    return _model(tmp_path_factory.mktemp("panoptic") / "model.pt", 0, panoptic=True)


def test_panoptic_predict_resumes(panoptic_model, tmp_path):
    """Wrong if a second panoptic run into the same --out rewrites panoptic.json with its own
    images only (the first run's PNGs left without annotations)."""
    images = [_image(tmp_path / "in" / f"{k}.png", seed=k) for k in range(3)]
    out = tmp_path / "out"
    first = predict_panoptic_images(weights=panoptic_model, inputs=[tmp_path / "in"], out=out)
    assert first["predicted"] == 3
    again = predict_panoptic_images(weights=panoptic_model, inputs=[images[0]], out=out)
    assert again["predicted"] == 0 and again["resumed"] == 1
    results = json.loads((out / "panoptic.json").read_text())
    names = sorted(a["file_name"] for a in results["annotations"])
    assert names == ["0.png", "1.png", "2.png"]
    assert sorted(p.name for p in (out / "panoptic").iterdir()) == names
    assert not (out / ".lock").exists()
