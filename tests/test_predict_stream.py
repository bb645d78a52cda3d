"""Streaming `blendmask predict`: sources, bad images, masks, resume after SIGKILL, torchrun.

- a folder of corrupt, 0-byte, not-an-image, 16-bit, grayscale, RGBA and EXIF-rotated files:
  the good ones are predicted and decoded as `load_image` promises (checked against numpy
  conversions written here: the rotated one upright, 16-bit scaled by 257), the bad ones are in
  errors.jsonl, exit 0;
- sources: recursive folders, --glob, a list file with relative paths;
- --save-masks: each instance PNG and the id map equal the record's RLE masks (decoded by
  pycocotools, painted lowest score first); --coco results.json is the records flattened;
- a run killed with SIGKILL midway (and a torn last line) then rerun: every image exactly once,
  every record's overlay complete;
- torchrun with 2 CPU processes over a half-done --out: every image exactly once, parts merged;
- the JSON lines helpers: torn-line repair across read blocks, merging parts without repeats.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util

from blendmask.checkpoint_io import save_model_file
from blendmask.cli import main
from blendmask.factory import build
from blendmask.prediction.predict import predict_images
from blendmask.prediction.predict_stream import (
    JsonLinesWriter,
    cut_torn_line,
    merge_parts,
    read_records,
)
from blendmask.presets import get_preset

NAMES = ["circle", "rectangle", "triangle", "star"]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A random tiny model.pt (4 classes) that yields detections on any image, at 64 px."""
    torch.manual_seed(0)
    cfg = get_preset("tiny")
    cfg.model.fcos.num_classes = 4
    cfg.model.fcos.inference_th_test = 0.0
    cfg.data.category_names = list(NAMES)
    cfg.data.category_ids = [1, 2, 3, 4]
    cfg.data.min_size_test, cfg.data.max_size_test = 64, 96
    cfg = cfg.validate()
    model, _, _ = build(cfg, load_pretrained=False)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model_file(path, cfg, model)
    return path


@pytest.fixture(scope="module")
def predictor(model_file):
    """The model loaded once, for the tests of what predict writes rather than of its flags
    (each `main` call loads the model again)."""
    from blendmask.predictor import Predictor

    return Predictor.from_checkpoint(model_file, device="cpu", score_threshold=None)


def predict(model_file: Path, sources: list, out: Path, *extra: str) -> int:
    args = ["predict", "--weights", str(model_file), *map(str, sources), "--out", str(out)]
    return main([*args, "--device", "cpu", "--workers", "0", *extra])


def records(out: Path, name: str = "predictions.jsonl") -> list[dict]:
    return [json.loads(line) for line in (out / name).read_text().splitlines()]


def noise(h: int, w: int, seed: int, channels: int = 3) -> np.ndarray:
    shape = (h, w, channels) if channels > 1 else (h, w)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# Bad and unusual images


def awkward_folder(folder: Path) -> tuple[dict[str, np.ndarray], set[str]]:
    """Good files with the RGB image each must decode to (numpy, not PIL's conversions), and
    the names of the bad files."""
    folder.mkdir()
    expected = {}
    rgb = noise(40, 56, 1)
    Image.fromarray(rgb).save(folder / "plain.png")
    expected["plain.png"] = rgb
    gray16 = np.random.default_rng(2).integers(0, 65536, (36, 44), dtype=np.uint16)
    Image.fromarray(gray16).save(folder / "deep16.png")  # mode I;16
    scaled = np.clip(np.rint(gray16.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
    expected["deep16.png"] = np.repeat(scaled[:, :, None], 3, axis=2)
    gray = noise(30, 50, 3, channels=1)
    Image.fromarray(gray).save(folder / "gray.png")
    expected["gray.png"] = np.repeat(gray[:, :, None], 3, axis=2)
    rgba = noise(32, 40, 4, channels=4)
    Image.fromarray(rgba, mode="RGBA").save(folder / "alpha.png")
    expected["alpha.png"] = rgba[:, :, :3]  # alpha dropped, colours kept
    # Stored 40 wide x 24 high; EXIF orientation 6: shown rotated 90 degrees clockwise.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(noise(24, 40, 5)).save(folder / "rotated.jpg", exif=exif.tobytes())
    stored = np.array(Image.open(folder / "rotated.jpg").convert("RGB"))  # JPEG-decoded pixels
    expected["rotated.jpg"] = np.rot90(stored, k=-1)  # clockwise: 40 high x 24 wide
    png = (folder / "plain.png").read_bytes()
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image")
    return expected, {"truncated.png", "empty.png", "notes.jpg"}


def test_bad_images_are_listed_good_ones_predicted_upright(model_file, predictor, tmp_path, capsys):
    folder = tmp_path / "images"
    expected, bad = awkward_folder(folder)
    out = tmp_path / "out"
    # --conf 1: nothing is drawn, so each overlay is the decoded image itself.
    assert predict(model_file, [folder], out, "--conf", "1") == 0
    assert "3 skipped" in capsys.readouterr().out
    errors = records(out, "errors.jsonl")
    assert sorted(Path(e["path"]).name for e in errors) == sorted(bad)
    assert all(e["path"] in e["error"] for e in errors)  # each names its file
    got = {Path(r["file_name"]).name: r for r in records(out)}
    assert set(got) == set(expected)
    for name, image in expected.items():
        assert (got[name]["height"], got[name]["width"]) == image.shape[:2], name
        overlay = np.array(Image.open(out / "overlays" / f"{Path(name).stem}.png"))
        assert np.array_equal(overlay, image), name  # e.g. a sideways or 8-bit-clipped image
    # Threshold 0: every good image has detections, their masks at its upright size.
    out0 = tmp_path / "out0"
    predict_images(weights=None, predictor=predictor, inputs=[folder], out=out0, score_threshold=0)
    for record in records(out0):
        assert record["detections"], record["file_name"]
        size = list(expected[Path(record["file_name"]).name].shape[:2])
        assert all(d["mask"]["size"] == size for d in record["detections"])


def test_only_bad_images_is_an_error(model_file, tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    assert predict(model_file, [folder], tmp_path / "out") == 2
    assert "none of the 1 image(s) could be read" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Sources, masks, --coco


def test_sources_folders_glob_and_list_files(predictor, tmp_path):
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    for k, rel in enumerate(["x.png", "a/y.jpg", "a/b/z.png", "a/b/w.jpg"]):
        Image.fromarray(noise(24, 32, k)).save(root / rel)
    (root / "a" / "readme.md").write_text("skipped: not an image suffix")
    listing = tmp_path / "lists" / "some.txt"
    listing.parent.mkdir()
    listing.write_text("# two images, relative to this file\n../root/x.png\n\n../root/a/b/w.jpg\n")

    def run(out: Path, sources: list, glob: str | None = None) -> list[dict]:
        predict_images(
            weights=None, predictor=predictor, inputs=sources, out=out, glob=glob, overlays=False
        )
        return records(out)

    got = run(tmp_path / "all", [root, listing])  # the list's files are the folder's: once
    names = [Path(r["file_name"]).relative_to(root).as_posix() for r in got]
    assert names == ["a/b/w.jpg", "a/b/z.png", "a/y.jpg", "x.png"]  # recursive, sorted
    assert [r["image_id"] for r in got] == [0, 1, 2, 3]
    got = run(tmp_path / "glob", [root], "*.jpg")
    assert sorted(Path(r["file_name"]).name for r in got) == ["w.jpg", "y.jpg"]
    got = run(tmp_path / "list", [listing])
    assert [Path(r["file_name"]).name for r in got] == ["x.png", "w.jpg"]


def decode(rle: dict) -> np.ndarray:
    return mask_util.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def check_masks(out: Path, mode: str) -> int:
    """Compare the mask files of every record with its RLE masks; returns the number of
    non-empty masks compared."""
    checked = 0
    for record in records(out):
        dets = record["detections"]
        masks = [decode(d["mask"]) for d in dets]
        if mode == "instances":
            assert len(record["masks"]) == len(dets)
            for k, mask in enumerate(masks):
                saved = np.array(Image.open(out / record["masks"][k]))
                assert np.array_equal(saved, mask.astype(np.uint8) * 255)
        else:
            expected = np.zeros((record["height"], record["width"]), np.int64)
            for k in sorted(range(len(dets)), key=lambda k: dets[k]["score"]):
                expected[masks[k]] = k + 1  # the most confident painted last
            assert np.array_equal(np.array(Image.open(out / record["masks"])), expected)
        checked += sum(int(m.any()) for m in masks)
    return checked


def test_saved_masks_and_coco_results_equal_the_records(model_file, predictor, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for k in range(2):
        Image.fromarray(noise(40, 48, 10 + k)).save(folder / f"im{k}.png")
    out = tmp_path / "out"
    args = ("--conf", "0.05", "--max-detections", "7", "--save-masks", "instances", "--coco")
    assert predict(model_file, [folder], out, *args) == 0
    for record in records(out):
        dets = record["detections"]
        assert 0 < len(dets) <= 7 and all(d["score"] >= 0.05 for d in dets)
    assert check_masks(out, "instances") > 0, "no non-empty mask compared"
    # results.json: the records' detections, flattened, with their image ids and files, the
    # boxes xyxy -> xywh
    flat = [
        (r["image_id"], r["file_name"], d["category_id"], d["score"], d["mask"])
        for r in records(out)
        for d in r["detections"]
    ]
    coco = json.loads((out / "results.json").read_text())
    assert [
        (c["image_id"], c["file_name"], c["category_id"], c["score"], c["segmentation"])
        for c in coco
    ] == flat
    boxes = [d["box"] for r in records(out) for d in r["detections"]]
    for c, (x0, y0, x1, y1) in zip(coco, boxes, strict=True):
        assert c["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0], rel=1e-6, abs=1e-4)
    # the id map, with overlapping masks (threshold 0: up to 100 detections per image)
    out = tmp_path / "idmap"
    predict_images(
        weights=None,
        predictor=predictor,
        inputs=[folder],
        out=out,
        score_threshold=0,
        save_masks="idmap",
        overlays=False,
    )
    assert check_masks(out, "idmap") > 0


# ---------------------------------------------------------------------------------------------
# Crash and resume


@pytest.mark.slow
def test_sigkill_midway_then_rerun_gives_every_image_once(model_file, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    count = 24
    for k in range(count):
        Image.fromarray(noise(64, 64, 100 + k)).save(folder / f"im{k:03d}.png")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "blendmask", "predict", "--weights", str(model_file)]
    command += [str(folder), "--out", str(out), "--device", "cpu", "--batch-size", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # Its own session: the kill reaches the DataLoader worker too.
    run = subprocess.Popen([*command, "--workers", "1"], env=env, start_new_session=True)
    lines = out / "predictions.jsonl"
    try:
        deadline = time.monotonic() + 240
        while run.poll() is None and time.monotonic() < deadline:
            if lines.is_file() and lines.read_bytes().count(b"\n") >= 2:
                break
            time.sleep(0.02)
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    assert lines.is_file(), "predict wrote no record within 240 s (a very busy machine?)"
    done = records(out)
    assert 2 <= len(done) < count, "the run was not killed midway"
    for record in done:  # a record on disk means its overlay is complete
        name = Path(record["file_name"]).stem + ".png"
        assert Image.open(out / "overlays" / name).size == (64, 64)
    # What a kill in the middle of a write leaves: a last line without its newline.
    with open(lines, "ab") as f:
        f.write(b'{"file_name": "' + str(folder / "im023.png").encode())
    assert predict(model_file, [folder], out, "--batch-size", "2") == 0
    assert f"{len(done)} already done" in capsys.readouterr().out
    names = [r["file_name"] for r in records(out)]  # every line parses
    assert sorted(names) == sorted(str(p) for p in folder.glob("*.png"))  # each exactly once
    assert not list(out.glob(".*.tmp")) and not list((out / "overlays").glob(".*.tmp"))
    # --no-resume starts over; changed settings over a resumable --out are refused
    assert predict(model_file, [folder], out, "--no-resume", "--no-overlays", "--conf", "0.9") == 0
    assert predict(model_file, [folder], out, "--conf", "0.5") == 2
    assert "other settings" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_processes_share_a_half_done_folder(model_file, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for k in range(9):
        Image.fromarray(noise(32, 40, 200 + k)).save(folder / f"im{k}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "out"
    first = sorted(folder.glob("im*.png"))[:3]
    assert predict(model_file, first, out, "--no-overlays") == 0  # three done already
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", "-m", "blendmask", "predict"]
    command += ["--weights", str(model_file), str(folder), "--out", str(out)]
    command += ["--device", "cpu", "--workers", "0", "--no-overlays"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "3 already done" in done.stdout and "6 predicted" in done.stdout, done.stdout
    names = sorted(r["file_name"] for r in records(out))
    assert names == sorted(str(p) for p in folder.glob("im*.png"))  # each exactly once
    assert [e["path"] for e in records(out, "errors.jsonl")] == [str(folder / "broken.png")]
    assert not list(out.glob("*.part*.jsonl"))  # the ranks' parts were merged


# ---------------------------------------------------------------------------------------------
# JSON lines helpers


def test_torn_line_is_cut_across_read_blocks(tmp_path):
    path = tmp_path / "p.jsonl"
    writer = JsonLinesWriter(path)
    long = {"file_name": "a", "pad": "x" * 100_000}  # longer than one 64 KiB read block
    writer.write([{"file_name": "z"}, long])
    writer.close()
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"file_name": "b", "pad": "' + b"y" * 70_000)
    assert [r["file_name"] for r in read_records(path)] == ["z", "a"]  # the torn one ignored
    cut_torn_line(path)
    assert path.read_bytes() == whole
    path.write_bytes(b'{"torn')
    cut_torn_line(path)
    assert path.read_bytes() == b""
    JsonLinesWriter(path).write([{"file_name": "c"}])
    assert [r["file_name"] for r in read_records(path)] == ["c"]


def test_merge_parts_keeps_each_record_once(tmp_path):
    JsonLinesWriter(tmp_path / "predictions.jsonl").write([{"file_name": "a"}])
    # rank 1's part repeats "a": a merge that was interrupted before deleting its parts
    JsonLinesWriter(tmp_path / "predictions.part0.jsonl").write([{"file_name": "b"}])
    JsonLinesWriter(tmp_path / "predictions.part1.jsonl").write(
        [{"file_name": "a"}, {"file_name": "c"}, {"file_name": "c", "frame": 2}]
    )
    assert merge_parts(tmp_path, "predictions.jsonl") == 4
    got = [(r["file_name"], r.get("frame")) for r in read_records(tmp_path / "predictions.jsonl")]
    assert got == [("a", None), ("b", None), ("c", None), ("c", 2)]
    assert not list(tmp_path.glob("*.part*"))
