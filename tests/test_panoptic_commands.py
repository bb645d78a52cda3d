"""The panoptic commands end to end on a tiny random panoptic model and `shapes --panoptic`
data: `eval --panoptic-json` and `predict` must agree (the PQ of predict's PNGs + json scored
here equals eval's), predict's PNG ids must be its json's segments, and bad panoptic input to
`train` / `eval` must end in one line naming the file, exit code 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blendmask.checkpoint_io import save_model_file
from blendmask.cli.main import main
from blendmask.data.panoptic import CocoPanopticDataset
from blendmask.data.panoptic_format import rgb_to_id
from blendmask.factory import build
from blendmask.metrics.panoptic import PanopticEvaluator
from blendmask.presets import get_preset


@pytest.fixture(scope="module")
def panoptic_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("panoptic")
    data = root / "data"
    argv = ["shapes", "--out", str(data), "--train", "1", "--val", "2", "--image-size", "64"]
    assert main([*argv, "--panoptic"]) == 0
    paths = {
        "json": data / "annotations" / "panoptic_val.json",
        "png": data / "annotations" / "panoptic_val",
        "images": data / "images" / "val",
    }
    dataset = CocoPanopticDataset(paths["json"], paths["png"], paths["images"])
    cfg = get_preset("tiny")
    cfg.model.fcos.num_classes = dataset.num_classes
    p = cfg.model.panoptic
    p.enabled, p.num_stuff_classes, p.conv_dims = True, len(dataset.stuff_names), 32
    p.stuff_area_limit = 64  # the default 4096 px is a whole 64 px image
    cfg.data.category_names = list(dataset.category_names)
    cfg.data.category_ids = list(dataset.contiguous_to_category_id)
    cfg.data.stuff_names = list(dataset.stuff_names)
    cfg.data.stuff_ids = list(dataset.stuff_category_ids)
    cfg.validate()
    model, _, _ = build(cfg, load_pretrained=False)
    paths["weights"] = root / "model.pt"
    save_model_file(paths["weights"], cfg, model)
    return paths


def test_predict_and_eval_agree(panoptic_setup, tmp_path):
    """Wrong if predict's PNG and json disagree, if its overlays are missing or of another
    size, or if eval's PQ is not the PQ of what predict writes (two paths, one model)."""
    s = panoptic_setup
    out = tmp_path / "pred"
    assert (
        main(["predict", "--weights", str(s["weights"]), str(s["images"]), "--out", str(out)]) == 0
    )
    results = json.loads((out / "panoptic.json").read_text())
    assert {c["isthing"] for c in results["categories"]} == {0, 1}
    dataset = CocoPanopticDataset(s["json"], s["png"], s["images"])
    evaluator = PanopticEvaluator(dataset.data.categories)
    by_source = {Path(a["source"]).name: a for a in results["annotations"]}
    assert len(by_source) == len(dataset) == 2
    segments = 0
    for index, image_id in enumerate(dataset.image_ids):
        ann = by_source[dataset.image_path(index).name]
        ids = rgb_to_id(np.asarray(Image.open(out / "panoptic" / ann["file_name"])))
        info = {seg["id"]: seg for seg in ann["segments_info"]}
        assert set(np.unique(ids).tolist()) - {0} == set(info)
        assert all(int((ids == k).sum()) == seg["area"] for k, seg in info.items())
        overlay = Image.open(out / "overlays" / ann["file_name"])
        assert overlay.size == (64, 64)
        categories = {k: seg["category_id"] for k, seg in info.items()}
        gt = dataset.segment_ids(index)
        evaluator.process(gt, dataset.data.segments[image_id], ids, categories)
        segments += len(info)
    assert segments > 0  # random weights still give stuff segments at this area limit
    mine = evaluator.evaluate()

    eval_out = tmp_path / "eval"
    argv = ["eval", "--weights", str(s["weights"]), "--panoptic-json", str(s["json"])]
    argv += ["--panoptic-images", str(s["png"]), "--images", str(s["images"])]
    assert main([*argv, "--out", str(eval_out)]) == 0
    metrics = json.loads((eval_out / "metrics.json").read_text())
    for key in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st"):
        assert metrics[key] == pytest.approx(mine[key]), key


def _one_line_exit_2(capsys, argv: list[str], name: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert name in err and len(err.splitlines()) == 1, err


def test_eval_bad_panoptic_input_is_one_line(panoptic_setup, tmp_path, capsys):
    """Wrong if a missing PNG or a json naming an unknown category crashes eval with a
    traceback instead of exit 2 and one line naming the file."""
    s = panoptic_setup
    base = ["eval", "--weights", str(s["weights"]), "--images", str(s["images"])]
    base += ["--out", str(tmp_path / "e")]
    png_dir = tmp_path / "pngs"
    png_dir.mkdir()
    for png in sorted(s["png"].glob("*.png"))[1:]:  # the first image's PNG is missing
        (png_dir / png.name).write_bytes(png.read_bytes())
    missing = sorted(s["png"].glob("*.png"))[0].name
    argv = [*base, "--panoptic-json", str(s["json"]), "--panoptic-images", str(png_dir)]
    _one_line_exit_2(capsys, argv, missing)

    data = json.loads(s["json"].read_text())
    data["annotations"][1]["segments_info"][0]["category_id"] = 99
    bad = tmp_path / "bad_panoptic.json"
    bad.write_text(json.dumps(data))
    argv = [*base, "--panoptic-json", str(bad), "--panoptic-images", str(s["png"])]
    _one_line_exit_2(capsys, argv, "bad_panoptic.json")


def test_train_bad_panoptic_json_is_one_line(panoptic_setup, tmp_path, capsys):
    """Wrong if `train --train-panoptic-json` does not read the panoptic json (a broken one
    must stop it before training, with one line naming the file)."""
    s = panoptic_setup
    bad = tmp_path / "broken.json"
    bad.write_text('{"images": [], "annotations": [], "categories": [{"id": 1}]}')
    argv = ["train", "--preset", "tiny", "--train-images", str(s["images"])]
    argv += ["--train-panoptic-json", str(bad), "--train-panoptic-images", str(s["png"])]
    _one_line_exit_2(capsys, [*argv, "--out", str(tmp_path / "run")], "broken.json")


def test_predict_honours_the_postprocess_flags(panoptic_setup, tmp_path, monkeypatch):
    """Wrong if a panoptic `predict` takes --iou / --max-det / --classes / --batch-size and
    drops them (it did): the thing instances are post-processed with them, and the images go
    through the network --batch-size at a time."""
    from blendmask.predictor import Predictor

    s = panoptic_setup
    seen = []
    original = Predictor.predict_panoptic

    def spy(self, images):
        post = self.postprocessor
        seen.append((len(images), post.nms_thresh, post.post_nms_topk, post.classes))
        return original(self, images)

    monkeypatch.setattr(Predictor, "predict_panoptic", spy)
    argv = ["predict", "--weights", str(s["weights"]), str(s["images"])]
    argv += ["--iou", "0.25", "--max-det", "3", "--classes", "1", "--batch-size", "2"]
    assert main([*argv, "--out", str(tmp_path / "pred")]) == 0
    assert seen == [(2, 0.25, 3, (1,))]
    # an unknown class is refused as for an instance model
    assert main([*argv[:4], "--classes", "99", "--out", str(tmp_path / "bad")]) == 2


@pytest.mark.faults
def test_predict_refuses_workers(panoptic_setup, tmp_path, capsys):
    """The panoptic loop decodes in the main process: --num-workers N (or the old --workers)
    is refused in one line rather than ignored; 0 is what it does, and is taken."""
    s = panoptic_setup
    argv = ["predict", "--weights", str(s["weights"]), str(s["images"])]
    for flag in ("--num-workers", "--workers"):
        _one_line_exit_2(capsys, [*argv, flag, "2", "--out", str(tmp_path / "p")], "--num-workers")
    assert main([*argv, "--num-workers", "0", "--out", str(tmp_path / "p0")]) == 0


@pytest.mark.faults
def test_predict_with_no_readable_image_exits_2(panoptic_setup, tmp_path, capsys):
    """Wrong if a panoptic `predict` whose every image is unreadable reports success (exit 0,
    an empty panoptic.json) where an instance model's predict exits 2."""
    s = panoptic_setup
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not a png")
    (folder / "b.jpg").write_bytes(b"")
    out = tmp_path / "pred"
    argv = ["predict", "--weights", str(s["weights"]), str(folder), "--out", str(out)]
    _one_line_exit_2(capsys, argv, "none of the 2 image(s) could be read")
    assert len((out / "errors.jsonl").read_text().splitlines()) == 2
    # one readable image among them is a success that lists the others
    (folder / "c.png").write_bytes((next(s["images"].glob("*.png"))).read_bytes())
    assert main(argv) == 0
    assert "2 skipped" in capsys.readouterr().out
