"""Faults of eval and predict: nothing lost, nothing hangs, no silent wrong answer.

- eval maps the model's labels to the json's categories by id / name, never by position:
  swapped ids score the same AP; missing or unmatched categories are refused in one line;
- a corrupt image in an eval folder is reported as its own one-line error, also from a
  DataLoader worker;
- predict skips an unreadable image, records it in errors.jsonl and keeps the others' results
  (exit 0); --strict stops at it (exit 2);
- a second process writing the same --out is refused;
- images over MAX_IMAGE_PIXELS are refused from their header, in one line;
- masks stay box-local: memory grows with the image, not with detections x image.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util
from torch import nn

from blendmask.checkpoint_io import save_model_file
from blendmask.cli import main
from blendmask.data.coco import CocoDataset
from blendmask.evaluation.evaluate import evaluate_model, evaluate_model_file
from blendmask.factory import build
from blendmask.metrics.categories import match_categories
from blendmask.metrics.coco import COCOEvaluator, detection_rles
from blendmask.predictor import MAX_IMAGE_PIXELS, check_image_size
from blendmask.presets import get_preset
from blendmask.runtime.output_lock import OutputLock
from blendmask.structures import Detections, paste
from blendmask.structures.paste import paste_masks

pytestmark = pytest.mark.faults

NAMES = ["circle", "rectangle", "triangle", "star"]


def tiny_config():
    cfg = get_preset("tiny")
    cfg.model.fcos.num_classes = 4
    cfg.model.fcos.inference_th_test = 0.0  # a random model still yields detections
    cfg.data.category_names = list(NAMES)
    cfg.data.category_ids = [1, 2, 3, 4]
    return cfg.validate()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A random-init tiny model.pt for the shapes categories (ids 1-4, names NAMES)."""
    torch.manual_seed(0)
    cfg = tiny_config()
    model, _, _ = build(cfg, load_pretrained=False)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model_file(path, cfg, model)
    return path


def edited_json(shapes_dataset, tmp_path: Path, edit) -> Path:
    data = json.loads(Path(shapes_dataset["val_json"]).read_text())
    edit(data)
    path = tmp_path / "val.json"
    path.write_text(json.dumps(data))
    return path


def swap_ids_1_and_2(data: dict) -> None:
    """circle becomes id 2 and rectangle id 1, in the categories and the annotations."""
    swap = {1: 2, 2: 1}
    for c in data["categories"]:
        c["id"] = swap.get(c["id"], c["id"])
    for a in data["annotations"]:
        a["category_id"] = swap.get(a["category_id"], a["category_id"])


def eval_args(model_file: Path, json_path: Path, images: Path, out: Path, workers: int = 0):
    return [
        "eval",
        "--weights",
        str(model_file),
        "--json",
        str(json_path),
        "--images",
        str(images),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--num-workers",
        str(workers),
    ]


def predict_args(model_file: Path, inputs: list[Path], out: Path, *extra: str) -> list[str]:
    return [
        "predict",
        "--weights",
        str(model_file),
        *map(str, inputs),
        "--out",
        str(out),
        "--device",
        "cpu",
        *extra,
    ]


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


# ---------------------------------------------------------------------------------------------
# 1. eval: categories by id / name
# ---------------------------------------------------------------------------------------------


class OraclePostProcessor(nn.Module):
    """Answers every image with its ground truth (model labels = NAMES order), in loader
    order: a perfect model whose AP is 1 when labels go to the right categories."""

    def __init__(self, truth: list[Detections]) -> None:
        super().__init__()
        self.truth = truth
        self.calls = 0

    def forward(self, outputs, image_sizes, orig_sizes):
        out = self.truth[self.calls : self.calls + len(orig_sizes)]
        self.calls += len(orig_sizes)
        assert [d.image_size for d in out] == [tuple(s) for s in orig_sizes]
        return out


def ground_truth(shapes_dataset) -> list[Detections]:
    dataset = CocoDataset(shapes_dataset["val_json"], shapes_dataset["val_images"])
    assert dataset.category_names == NAMES
    truth = []
    for index in range(len(dataset)):
        _, target = dataset[index]
        n = len(target["labels"])
        truth.append(
            Detections(target["boxes"], torch.ones(n), target["labels"], target["masks"].bool())
        )
    return truth


def oracle_metrics(shapes_dataset, json_path: Path) -> dict[str, float]:
    cfg = tiny_config()
    model, _, _ = build(cfg, load_pretrained=False)
    post = OraclePostProcessor(ground_truth(shapes_dataset))
    return evaluate_model(
        cfg,
        model,
        post,
        json_path=json_path,
        images_dir=shapes_dataset["val_images"],
        device=torch.device("cpu"),
    )


@pytest.mark.slow
def test_swapped_category_ids_give_the_same_ap(shapes_dataset, tmp_path):
    plain = oracle_metrics(shapes_dataset, Path(shapes_dataset["val_json"]))
    swapped_json = edited_json(shapes_dataset, tmp_path, swap_ids_1_and_2)
    swapped = oracle_metrics(shapes_dataset, swapped_json)
    assert plain["segm_AP"] == pytest.approx(1.0) and plain["bbox_AP"] == pytest.approx(1.0)
    for key in ("bbox_AP", "segm_AP", "segm_AP50"):
        assert swapped[key] == plain[key], key
    # Non-vacuous: mapping by position (the old behaviour) scores the swapped json lower.
    by_position = COCOEvaluator(str(swapped_json), [1, 2, 3, 4])
    dataset = CocoDataset(swapped_json, shapes_dataset["val_images"])
    by_position.process(dataset.image_ids, ground_truth(shapes_dataset))
    assert by_position.evaluate()["segm_AP"] < plain["segm_AP"] - 0.1


def test_eval_json_with_fewer_categories_is_refused(model_file, shapes_dataset, tmp_path, capsys):
    def drop_star(data):
        data["categories"] = [c for c in data["categories"] if c["name"] != "star"]
        data["annotations"] = [a for a in data["annotations"] if a["category_id"] != 4]

    json_path = edited_json(shapes_dataset, tmp_path, drop_star)
    code = main(eval_args(model_file, json_path, shapes_dataset["val_images"], tmp_path / "ev"))
    assert code == 2
    err = error_line(capsys)
    assert str(json_path) in err and "'star'" in err and "cannot be matched" in err
    assert not (tmp_path / "ev" / "metrics.json").exists()


def test_eval_unmatched_category_names_are_refused(model_file, shapes_dataset, tmp_path, capsys):
    def rename(data):
        for c in data["categories"]:
            c["name"] = f"shape {c['id']}"

    json_path = edited_json(shapes_dataset, tmp_path, rename)
    code = main(eval_args(model_file, json_path, shapes_dataset["val_images"], tmp_path / "ev"))
    assert code == 2
    err = error_line(capsys)
    assert "'circle'" in err and "'shape 1'" in err


def test_match_categories_rules():
    json_categories = {1: "circle", 2: "rectangle", 3: "triangle", 4: "star"}
    # same ids and names; names only; ids only
    assert match_categories([1, 2, 3, 4], NAMES, json_categories, num_classes=4) == [1, 2, 3, 4]
    assert match_categories([], NAMES, json_categories, num_classes=4) == [1, 2, 3, 4]
    assert match_categories([1, 2, 3, 4], [], json_categories, num_classes=4) == [1, 2, 3, 4]
    # renumbered json (e.g. COCO's ids vs 1..C): by name
    renumbered = {10: "star", 20: "circle", 30: "triangle", 40: "rectangle", 50: "other"}
    assert match_categories([1, 2, 3, 4], NAMES, renumbered, num_classes=4) == [20, 40, 30, 10]
    # no stored categories: the json's sorted ids, when the counts agree
    assert match_categories([], [], json_categories, num_classes=4) == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="stores no category ids or names"):
        match_categories([], [], json_categories, num_classes=3)
    # a name two json categories share matches nothing
    with pytest.raises(ValueError, match="cannot be matched"):
        match_categories([7, 8], ["a", "b"], {1: "a", 2: "b", 3: "b"}, num_classes=2)


# ---------------------------------------------------------------------------------------------
# 5. eval: a corrupt image, read in a DataLoader worker, is one line naming it
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_eval_corrupt_image_in_a_worker_is_one_line(model_file, shapes_dataset, tmp_path, capsys):
    images = tmp_path / "images"
    shutil.copytree(shapes_dataset["val_images"], images)
    bad = sorted(images.glob("*.png"))[1]
    bad.write_bytes(bad.read_bytes()[:60])  # truncated PNG
    code = main(eval_args(model_file, Path(shapes_dataset["val_json"]), images, tmp_path / "ev", 1))
    assert code == 2
    err = error_line(capsys)
    assert str(bad) in err and "DataLoader worker" not in err
    # The Python API raises the worker's own exception, not torch's wrapper around it.
    with pytest.raises(ValueError) as caught:
        evaluate_model_file(
            weights=model_file,
            json_path=shapes_dataset["val_json"],
            images=images,
            out=tmp_path / "ev2",
            device="cpu",
            num_workers=1,
        )
    message = str(caught.value)
    assert str(bad) in message and "Traceback" not in message and len(message.splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# 4. predict: skip and record unreadable images; --strict stops
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def folder_with_a_corrupt_image(shapes_dataset, tmp_path) -> tuple[Path, Path, list[Path]]:
    folder = tmp_path / "images"
    folder.mkdir()
    good = sorted(Path(shapes_dataset["val_images"]).glob("*.png"))[:2]
    for path in good:
        shutil.copy(path, folder / path.name)
    bad = folder / "000001b.png"  # sorts between the two good ones
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return folder, bad, [folder / p.name for p in good]


@pytest.mark.slow
def test_predict_skips_a_corrupt_image_and_records_it(
    model_file, folder_with_a_corrupt_image, tmp_path, capsys
):
    folder, bad, good = folder_with_a_corrupt_image
    out = tmp_path / "out"
    (out).mkdir()
    (out / "errors.jsonl").write_text("stale\n")
    assert main(predict_args(model_file, [folder], out, "--score-threshold", "0", "--coco")) == 0
    summary = capsys.readouterr().out
    assert "3 image(s)" in summary and "1 skipped" in summary and "errors.jsonl" in summary
    results = json.loads((out / "results.json").read_text())
    files = sorted(folder.glob("*.png"))  # image_id = position in the input list
    assert {r["file_name"] for r in results} == {str(p) for p in good}
    assert {r["image_id"] for r in results} == {files.index(p) for p in good}
    records = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert len(records) == 1
    assert records[0]["path"] == str(bad) and records[0]["image_id"] == files.index(bad)
    assert str(bad) in records[0]["error"]
    assert sorted(p.name for p in (out / "overlays").glob("*.png")) == sorted(p.name for p in good)
    # a clean run over the same --out leaves no stale list behind
    assert main(predict_args(model_file, good, out, "--score-threshold", "0")) == 0
    assert not (out / "errors.jsonl").exists()
    assert not list(out.glob(".*.tmp")) and not list((out / "overlays").glob(".*.tmp"))


@pytest.mark.slow
def test_predict_strict_stops_at_a_corrupt_image(
    model_file, folder_with_a_corrupt_image, tmp_path, capsys
):
    folder, bad, _ = folder_with_a_corrupt_image
    assert main(predict_args(model_file, [folder], tmp_path / "out", "--strict")) == 2
    assert str(bad) in error_line(capsys)


# ---------------------------------------------------------------------------------------------
# 3. predict: one writer per --out
# ---------------------------------------------------------------------------------------------


def test_second_writer_of_an_out_folder_is_refused(model_file, shapes_dataset, tmp_path, capsys):
    out = tmp_path / "out"
    image = sorted(Path(shapes_dataset["val_images"]).glob("*.png"))[0]
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from blendmask.runtime.output_lock import OutputLock\n"
            f"with OutputLock({str(out)!r}):\n"
            "    print('locked', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(predict_args(model_file, [image], out)) == 2
        err = error_line(capsys)
        assert f"another blendmask process is writing {out} (pid {holder.pid})" in err
        assert not (out / "predictions.jsonl").exists()
    finally:
        holder.communicate("", timeout=60)
    # the lock went with its process: the folder is free again
    assert main(predict_args(model_file, [image], out)) == 0
    assert (out / "predictions.jsonl").is_file()


def test_output_lock_is_held_for_the_run(tmp_path):
    with OutputLock(tmp_path / "o"):
        with pytest.raises(ValueError, match="another blendmask process is writing"):
            with OutputLock(tmp_path / "o"):
                pass
    with OutputLock(tmp_path / "o"):  # released
        pass


# ---------------------------------------------------------------------------------------------
# 2. image size: a documented maximum, checked from the header
# ---------------------------------------------------------------------------------------------


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares width x height RGB and holds no pixel data (a hostile header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("size", [(12000, 10000), (20000, 20000)])
def test_image_over_the_maximum_is_one_line(model_file, tmp_path, capsys, size):
    big = png_header_only(tmp_path / "big.png", *size)
    assert main(predict_args(model_file, [big], tmp_path / "out", "--strict")) == 2
    err = error_line(capsys)
    assert str(big) in err and f"maximum image size of {MAX_IMAGE_PIXELS} pixels" in err
    if size == (12000, 10000):
        assert "12000 x 10000" in err


def test_check_image_size_of_arrays_and_tensors():
    check_image_size(torch.zeros(3, 10, 10), max_pixels=100)
    with pytest.raises(ValueError, match="10 x 11 px, larger than the maximum"):
        check_image_size(torch.zeros(3, 11, 10), max_pixels=100)
    with pytest.raises(ValueError, match="larger than the maximum"):
        check_image_size(np.zeros((11, 10, 3), np.uint8), max_pixels=100)


# ---------------------------------------------------------------------------------------------
# 2. memory: box-local masks, encoded and drawn one detection at a time
# ---------------------------------------------------------------------------------------------


def lazy_detections(num: int, size: tuple[int, int], seed: int = 0) -> Detections:
    g = torch.Generator().manual_seed(seed)
    h, w = size
    xy0 = torch.rand(num, 2, generator=g) * torch.tensor([w, h]) * 0.7
    wh = torch.rand(num, 2, generator=g) * torch.tensor([w, h]) * 0.6 + 1
    boxes = torch.cat([xy0, (xy0 + wh).minimum(torch.tensor([w, h]).float())], 1)
    return Detections(
        boxes,
        torch.rand(num, generator=g),
        torch.randint(0, 4, (num,), generator=g),
        mask_probs=torch.rand(num, 12, 12, generator=g),
        image_size=size,
    )


def test_box_local_masks_paste_on_access_and_encode_alike(monkeypatch):
    det = lazy_detections(9, (37, 53))
    assert not det.has_dense_masks
    windowed = detection_rles(det)  # from the windows, never the (D, H0, W0) masks
    assert not det.has_dense_masks
    dense = det.masks  # the API users' bool[D, H0, W0]
    assert dense.dtype == torch.bool and dense.shape == (9, 37, 53)
    assert torch.equal(dense, paste_masks(det.mask_probs, det.boxes, (37, 53)))
    for rle, mask in zip(windowed, dense):
        expected = mask_util.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))
        assert rle["counts"] == expected["counts"].decode()
    picked = det.select(det.scores > 0.5)
    assert not picked.has_dense_masks or picked.masks.shape[0] == int((det.scores > 0.5).sum())
    assert torch.equal(picked.masks, dense[det.scores > 0.5])
    # a single window larger than the float budget is sampled in row tiles, same pixels
    monkeypatch.setattr(paste, "_PASTE_MAX_GRID_POINTS", 64)
    assert torch.equal(paste_masks(det.mask_probs, det.boxes, (37, 53)), dense)


def test_postprocessor_returns_box_local_masks(shapes_dataset):
    from blendmask.predictor import Predictor

    torch.manual_seed(0)
    predictor = Predictor.from_config(tiny_config(), device="cpu", score_threshold=None)
    image = sorted(Path(shapes_dataset["val_images"]).glob("*.png"))[0]
    (det,) = predictor([image])
    assert len(det) > 0 and not det.has_dense_masks
    assert det.masks.shape == (len(det), 128, 128)


MEMORY_SCRIPT = textwrap.dedent(
    """
    import resource, sys, torch
    from blendmask.metrics.coco import detections_to_coco_results
    from blendmask.structures import Detections
    from blendmask.visualization import draw_detections

    torch.set_num_threads(1)
    num, side = int(sys.argv[1]), int(sys.argv[2])
    image = torch.full((3, side, side), 100, dtype=torch.uint8)
    # Boxes covering almost the image, masks all foreground: the largest masks there are.
    boxes = torch.tensor([[1.0, 1.0, side - 1.0, side - 1.0]]).repeat(num, 1)
    det = Detections(
        boxes, torch.linspace(0.5, 1.0, num), torch.zeros(num, dtype=torch.int64),
        mask_probs=torch.ones(num, 28, 28), image_size=(side, side),
    )
    results = detections_to_coco_results([det], [0], [1])
    overlay = draw_detections(image, det)
    assert len(results) == num and overlay.shape == image.shape
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    """
)


def peak_rss(num: int, side: int) -> int:
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(num), str(side)],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_memory_grows_with_the_image_not_with_detections():
    side = 2000
    image_bytes = side * side  # one bool mask of the image: 4 MB
    one, many = peak_rss(1, side), peak_rss(100, side)
    # (D, H0, W0) bool masks alone would add 99 x 4 MB = 396 MB, their uint8 copy as much.
    assert many - one < 25 * image_bytes, (one, many)
