"""The demo, eval, predict and train commands end to end, on the tiny preset.

- `demo` writes its data, model, metrics and pictures, and `eval --weights` on its model reproduces its
  metrics (same weights, same evaluation path) and its detections;
- `predict --coco` on a folder writes COCO results whose RLE masks decode (pycocotools) to the
  masks drawn in the overlays, with original category ids;
- `eval --results` scores a results json without a model, as `eval --weights` did;
- `train` flags: the linear scaling rule, bad input, the warning about a random ResNet body."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util

from blendmask.cli import main
from blendmask.evaluation.evaluate import METRIC_KEYS
from blendmask.training.demo import run_demo
from blendmask.training.train_config import resolve_train_config
from blendmask.visualization import (
    instance_color,
    label_position,
    label_size,
    mask_contour,
    overlay_sizes,
)

# A low threshold so that a barely trained tiny model still yields detections to compare.
TINY_OVERRIDES = ["model.fcos.inference_th_test=0.0", "data.min_size_test=96"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    metrics = run_demo(
        out=out,
        device="cpu",
        minutes=2.0,
        num_train=6,
        num_val=3,
        preset="tiny",
        overrides=[*TINY_OVERRIDES, "solver.max_iter=4", "solver.steps=[3]"],
        num_overlays=2,
    )
    return out, metrics


@pytest.mark.slow
def test_demo_writes_its_files(demo_run):
    out, metrics = demo_run
    for name in ("metrics.json", "model.pt", "explain.png", "curves.png", "metrics.jsonl"):
        assert (out / name).is_file(), name
    assert len(list((out / "overlays").glob("*.png"))) == 2
    saved = json.loads((out / "metrics.json").read_text())
    for key in (*METRIC_KEYS, "images", "seconds", "iterations"):
        assert key in saved, key
        if key in METRIC_KEYS:
            assert 0.0 <= saved[key] <= 1.0 or saved[key] == -1.0
    assert saved["iterations"] == 4 and saved["images"] == 3
    # model.pt holds config + weights only and loads with weights_only=True
    payload = torch.load(out / "model.pt", weights_only=True)
    assert set(payload) == {"format_version", "config", "model"}
    assert payload["config"]["data"]["category_names"] == [
        "circle",
        "rectangle",
        "triangle",
        "star",
    ]


def test_eval_weights_reproduces_the_demo(demo_run, capsys):
    out, metrics = demo_run
    data = out / "data"
    eval_dir = out / "eval"
    code = main(
        [
            "eval",
            "--weights",
            str(out / "model.pt"),
            "--json",
            str(data / "annotations" / "instances_val.json"),
            "--images",
            str(data / "images" / "val"),
            "--out",
            str(eval_dir),
            "--device",
            "cpu",
            "--num-workers",
            "0",
        ]
    )
    assert code == 0
    reproduced = json.loads((eval_dir / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert reproduced[key] == metrics[key], key
    results = json.loads((eval_dir / "results.json").read_text())
    assert len(results) > 0  # non-vacuous: there were detections to score
    assert {r["category_id"] for r in results} <= {1, 2, 3, 4}

    # the same results scored without the model give the same metrics
    scored_dir = out / "eval_results"
    code = main(
        [
            "eval",
            "--results",
            str(eval_dir / "results.json"),
            "--json",
            str(data / "annotations" / "instances_val.json"),
            "--out",
            str(scored_dir),
        ]
    )
    assert code == 0
    scored = json.loads((scored_dir / "metrics.json").read_text())
    for key in ("bbox_AP", "segm_AP"):
        assert scored[key] == pytest.approx(metrics[key]), key
    capsys.readouterr()
    assert main(["eval", "--results", str(eval_dir / "results.json"), "--out", "x"]) == 2
    assert "needs --json" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_folder_rle_matches_overlays(demo_run):
    out, _ = demo_run
    images_dir = out / "data" / "images" / "val"
    pred_dir = out / "predict"
    code = main(
        [
            "predict",
            "--weights",
            str(out / "model.pt"),
            str(images_dir),
            "--out",
            str(pred_dir),
            "--device",
            "cpu",
            "--score-threshold",
            "0.0",
            "--coco",
        ]
    )
    assert code == 0
    results = json.loads((pred_dir / "results.json").read_text())
    files = sorted(images_dir.glob("*.png"))
    assert {r["image_id"] for r in results} <= set(range(len(files)))
    categories = json.loads((out / "data" / "annotations" / "instances_val.json").read_text())
    names = {c["id"]: c["name"] for c in categories["categories"]}
    checked_masks = 0
    for index, path in enumerate(files):
        mine = [r for r in results if r["image_id"] == index]
        assert all(r["file_name"] == str(path) for r in mine)
        overlay = torch.from_numpy(np.array(Image.open(pred_dir / "overlays" / path.name)))
        overlay = overlay.permute(2, 0, 1)
        image = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
        if not mine:
            assert torch.equal(overlay, image)
            continue
        # Decode the RLEs and paint them as predict does: lowest score first, each in the
        # colour of its rank (0 = most confident), the last mask over the others.
        mine.sort(key=lambda r: r["score"])
        masks = torch.from_numpy(
            np.stack([mask_util.decode(r["segmentation"]) for r in mine])
        ).bool()
        painted = image.clone()
        for k, mask in enumerate(masks):
            color = instance_color(len(mine) - 1 - k)
            painted[:, mask] = torch.tensor(color, dtype=torch.uint8)[:, None]
        expected = (image * 0.5 + painted * 0.5).to(torch.uint8)  # torchvision's arithmetic
        # Pixels may differ only where predict drew contours, box outlines and labels; a
        # wrong mask would change pixels elsewhere too. Check: outside those the overlay
        # equals the mask layer.
        font_size, _, contour = overlay_sizes(*image.shape[-2:])
        band = torch.zeros(image.shape[-2:], dtype=torch.bool)
        for r, mask in zip(mine, masks):
            # Contours run along what is seen of each mask: inside a mask's edge, or outside
            # it where another mask covers the pixels near that edge.
            near = torch.nn.functional.max_pool2d(
                mask[None, None].float(), 2 * contour + 1, stride=1, padding=contour
            )[0, 0]
            band |= mask_contour(mask, contour) | ((near > 0) & ~mask)
            x, y, w, h = r["bbox"]
            x0, y0 = int(x) - 1, int(y) - 1
            x1, y1 = int(x + w) + 2, int(y + h) + 2
            edge = torch.zeros_like(band)
            edge[max(y0, 0) : y1, max(x0, 0) : x1] = True
            inner = torch.zeros_like(band)
            inner[max(y0 + 4, 0) : max(y1 - 4, 0), max(x0 + 4, 0) : max(x1 - 4, 0)] = True
            band |= edge & ~inner
            # the label, on its background, where draw_detections puts it
            text = f"{names[r['category_id']]} {r['score']:.2f}"
            size = label_size(text, font_size)
            lx, ly = label_position((x, y, x + w, y + h), size, tuple(image.shape[-2:]))
            band[ly : ly + size[1], lx : lx + size[0]] = True
        outside = ~band
        assert torch.equal(overlay[:, outside], expected[:, outside]), path.name
        checked_masks += int(masks.flatten(1).any(1).sum())
    assert checked_masks > 0, "no non-empty mask was compared"


def test_batch_size_scales_lr_linearly(tmp_path, caplog):
    caplog.set_level("INFO", logger="blendmask")  # library notes are logged, not printed
    cfg = resolve_train_config(out=tmp_path, preset="tiny", batch_size=8)
    base = resolve_train_config(out=tmp_path, preset="tiny")
    assert cfg.solver.ims_per_batch == 8
    assert cfg.solver.base_lr == pytest.approx(base.solver.base_lr * 8 / base.solver.ims_per_batch)
    assert "linear scaling rule" in caplog.text
    explicit = resolve_train_config(out=tmp_path, preset="tiny", batch_size=8, lr=0.05)
    assert explicit.solver.base_lr == 0.05
    longer = resolve_train_config(out=tmp_path, preset="tiny", max_iter=20)
    # the lr steps keep their fraction of the run
    assert longer.solver.steps == [round(s * 20 / base.solver.max_iter) for s in base.solver.steps]


def test_backbone_weights_set_the_input_conventions(tmp_path):
    import torchvision

    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    kwargs = dict(out=tmp_path, preset="R_50_1x", overrides=["model.backbone.name=resnet18"])
    before = resolve_train_config(**kwargs).model  # the preset's MSRA conventions
    assert (before.input_format, before.backbone.stride_in_1x1) == ("BGR", True)
    m = resolve_train_config(**kwargs, backbone_weights=str(path)).model
    assert (m.input_format, m.input_scale, m.backbone.stride_in_1x1) == ("RGB", 1.0, False)
    assert m.pixel_mean == [0.485, 0.456, 0.406] and m.backbone.weights == str(path)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        resolve_train_config(**kwargs, backbone_weights=str(tmp_path / "nope.pth"))


@pytest.mark.slow
def test_train_warns_about_a_random_resnet_body(tmp_path, shapes_dataset, capsys):
    args = [
        "train",
        "--preset",
        "tiny",
        "--out",
        str(tmp_path / "run"),
        "--train-json",
        str(shapes_dataset["train_json"]),
        "--train-images",
        str(shapes_dataset["train_images"]),
        "--device",
        "cpu",
        "--max-iter",
        "1",
    ]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "RANDOM weights" in err and "--backbone-weights" in err
    # a resumed run continues trained weights: no warning (a larger --max-iter is a changed
    # setting, taken explicitly)
    assert main([*args[:-1], "2", "--resume-with-new-settings"]) == 0
    captured = capsys.readouterr()
    assert "resuming from" in captured.out and "RANDOM" not in captured.err


def test_train_bad_input_exits_2(tmp_path, capsys):
    code = main(
        [
            "train",
            "--preset",
            "tiny",
            "--out",
            str(tmp_path / "run"),
            "--train-json",
            str(tmp_path / "missing.json"),
            "--train-images",
            str(tmp_path),
            "--device",
            "cpu",
        ]
    )
    assert code == 2
    assert "missing.json" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "empty")]) == 2  # no preset, no last.pt


def test_predict_missing_input_exits_2(demo_run, tmp_path, capsys):
    out, _ = demo_run
    code = main(
        [
            "predict",
            "--weights",
            str(out / "model.pt"),
            str(tmp_path / "nope.png"),
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 2
    assert "nope.png" in capsys.readouterr().err
