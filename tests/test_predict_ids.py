"""The image ids of `blendmask predict`, and scoring its --coco results.

- `predict --coco --json GT` then `eval --results` gives the AP of `eval --weights` on the same
  images (GT's ids are not the images' positions); without --json too, since eval reads each
  result's file_name back to its GT image;
- a resumed run over a folder that grew keeps every file's id and gives new files new ones
  (the position of a file in the grown list would repeat an id);
- paths are matched to GT file_names by whole trailing components; files that are in no GT, or
  in two GT images, are one-line errors.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers.self_ground_truth import write_ground_truth, write_model

from blendmask.cli import main
from blendmask.metrics.image_ids import GroundTruthImages
from blendmask.prediction import predict_ids

KEYS = [f"{t}_{k}" for t in ("bbox", "segm") for k in ("AP", "AP50", "AP75")]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(tmp_path_factory.mktemp("model") / "model.pt")


def predict(model_file: Path, sources: list, out: Path, *extra: str) -> int:
    args = ["predict", "--weights", str(model_file), *map(str, sources), "--out", str(out)]
    return main([*args, "--device", "cpu", "--workers", "0", "--no-overlays", *map(str, extra)])


def metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def test_predict_coco_results_score_as_eval_weights(model_file, tmp_path):
    folder = tmp_path / "val"
    gt = write_ground_truth(model_file, folder, [17, 3, 42], json_path=tmp_path / "val.json")
    common = ["--json", str(gt), "--device", "cpu"]
    assert main(["eval", "--weights", str(model_file), "--images", str(folder), "--out",
                 str(tmp_path / "by_model"), "--num-workers", "0", *common]) == 0  # fmt: skip
    expected = metrics(tmp_path / "by_model")
    assert expected["segm_AP"] > 0.2, expected  # the model finds its own masks
    # --conf 0: eval keeps every detection, predict drops those under 0.3 by default
    assert (
        predict(model_file, [folder], tmp_path / "ids", "--coco", "--conf", "0", "--json", gt) == 0
    )
    assert [r["image_id"] for r in records(tmp_path / "ids")] == [17, 3, 42]
    assert predict(model_file, [folder], tmp_path / "own", "--coco", "--conf", "0") == 0
    assert [r["image_id"] for r in records(tmp_path / "own")] == [0, 1, 2]
    for run in ("ids", "own"):  # "own": eval finds the images by the results' file_name
        results = tmp_path / run / "results.json"
        assert main(["eval", "--results", str(results), "--json", str(gt), "--out",
                     str(tmp_path / f"eval_{run}")]) == 0  # fmt: skip
        got = metrics(tmp_path / f"eval_{run}")
        assert {k: got[k] for k in KEYS} == {k: expected[k] for k in KEYS}, run


@pytest.mark.faults
def test_resumed_run_over_a_grown_folder_never_repeats_an_id(model_file, tmp_path):
    source = tmp_path / "all"
    write_ground_truth(model_file, source, [0, 1, 2])
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("im0.png", "im2.png"):
        shutil.copy(source / name, folder / name)
    out = tmp_path / "out"
    assert predict(model_file, [folder], out, "--coco") == 0
    first = {Path(r["file_name"]).name: r["image_id"] for r in records(out)}
    assert first == {"im0.png": 0, "im2.png": 1}
    shutil.copy(source / "im1.png", folder / "im1.png")  # sorts between the two
    assert predict(model_file, [folder], out, "--coco") == 0
    ids = {Path(r["file_name"]).name: r["image_id"] for r in records(out)}
    # im1 is now 2nd of the folder, but id 1 is im2's: it takes the next id never given
    assert ids == {"im0.png": 0, "im2.png": 1, "im1.png": 2}
    results = json.loads((out / "results.json").read_text())
    assert {(Path(r["file_name"]).name, r["image_id"]) for r in results} <= set(ids.items())
    # a file gone from the folder keeps its id reserved: a new file never takes it
    (folder / "im2.png").unlink()
    shutil.copy(source / "im2.png", folder / "new.png")
    assert predict(model_file, [folder], out) == 0
    assert {Path(r["file_name"]).name: r["image_id"] for r in records(out)}["new.png"] == 3


def test_a_resumed_run_gives_pending_images_their_first_run_ids(monkeypatch, tmp_path):
    # A killed torchrun rank leaves its share half done while the other finished: the pending
    # images must get the ids of an uninterrupted run (their positions), not ids after the max.
    images = [tmp_path / f"im{i}.png" for i in range(5)]
    done = {str(images[0]): 0, str(images[3]): 3}
    monkeypatch.setattr(predict_ids, "recorded_image_ids", lambda out: done)
    assert predict_ids.image_ids(images, tmp_path, None) == [0, 1, 2, 3, 4]
    # a position held by another file: the next id never given, after every position taken
    done = {str(images[1]): 0, str(images[3]): 3}
    assert predict_ids.image_ids(images, tmp_path, None) == [5, 0, 2, 3, 4]


def test_paths_match_whole_trailing_components():
    images = GroundTruthImages(
        [
            {"id": 1, "file_name": "a.png"},
            {"id": 2, "file_name": "val/b.png"},
            {"id": 3, "file_name": "b.png"},
            {"id": 4, "file_name": "./sub\\c.png"},
        ],
        "gt.json",
    )
    assert images.find("/data/coco/a.png") == 1 and images.find("a.png") == 1
    assert images.find("other/val/b.png") == 2  # the longest file_name that ends the path
    assert images.find("xval/b.png") == 3  # "val" is not "xval": the shorter one
    assert images.find("sub/c.png") == 4 and images.find("/x/sub/c.png") == 4
    assert images.find("c.png") is None and images.find("ba.png") is None


@pytest.mark.faults
def test_files_of_no_ground_truth_image_are_one_line_errors(model_file, tmp_path, capsys):
    folder = tmp_path / "val"
    gt = write_ground_truth(model_file, folder, [5, 6], json_path=tmp_path / "val.json")
    shutil.copy(folder / "im0.png", folder / "extra.png")
    assert predict(model_file, [folder], tmp_path / "out", "--coco", "--json", gt) == 2
    err = capsys.readouterr().err.strip()
    assert "extra.png" in err and "is not an image of" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out" / "predictions.jsonl").exists()  # refused before predicting
    # eval --results: a result whose file_name is in no ground-truth image
    results = tmp_path / "results.json"
    result = {"image_id": 5, "category_id": 1, "score": 0.9, "bbox": [0, 0, 4, 4]}
    results.write_text(json.dumps([{**result, "file_name": str(folder / "extra.png")}]))
    assert main(["eval", "--results", str(results), "--json", str(gt), "--out",
                 str(tmp_path / "e")]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert "result 0 of" in err and "extra.png" in err and len(err.splitlines()) == 1
    # two ground-truth images of one file_name: which one a path is cannot be said
    data = json.loads(gt.read_text())
    data["images"][1]["file_name"] = data["images"][0]["file_name"]
    gt.write_text(json.dumps(data))
    results.write_text(json.dumps([{**result, "file_name": str(folder / "im0.png")}]))
    assert main(["eval", "--results", str(results), "--json", str(gt), "--out",
                 str(tmp_path / "e")]) == 2  # fmt: skip
    assert "matches images 5 and 6" in capsys.readouterr().err
