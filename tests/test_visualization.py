"""Tests of the pictures: detection overlays (one colour per instance, contours, labels kept in
the image), `eval --plots` (precision-recall curves and the ground truth / prediction sheet,
matching of predictions to ground truth) and the learning-rate panel of `curves.png`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util
from torchvision.utils import draw_segmentation_masks

from blendmask.metrics.plots import match_image, write_eval_plots
from blendmask.structures import Detections
from blendmask.visualization import (
    draw_detections,
    instance_color,
    label_position,
    label_size,
    overlay_sizes,
    paint_windows,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def two_squares(labels: tuple[int, int] = (0, 0)) -> Detections:
    """Two 40 x 40 squares in a 200 x 200 image, scores 0.9 and 0.8."""
    masks = torch.zeros(2, 200, 200, dtype=torch.bool)
    masks[0, 60:100, 20:60] = True
    masks[1, 60:100, 120:160] = True
    boxes = torch.tensor([[20.0, 60.0, 60.0, 100.0], [120.0, 60.0, 160.0, 100.0]])
    return Detections(boxes, torch.tensor([0.9, 0.8]), torch.tensor(labels), masks)


def test_instances_of_one_class_get_different_colours() -> None:
    """Fails if the overlay colours by class: two squares of class 0 must differ."""
    image = torch.zeros(3, 200, 200, dtype=torch.uint8)
    out = draw_detections(image, two_squares((0, 0)), class_names=["square"])
    first, second = out[:, 85, 40], out[:, 85, 140]  # inside each mask, below the labels
    assert not torch.equal(first, second)
    # the most confident instance has the first colour, the next the second, at alpha 0.5
    for pixel, rank in ((first, 0), (second, 1)):
        expected = torch.tensor([c // 2 for c in instance_color(rank)])
        assert (pixel.int() - expected).abs().max() <= 1


def test_contour_is_opaque_and_differs_from_the_fill() -> None:
    """Fails if the mask is not outlined: its boundary pixels carry the full colour, its
    inside the translucent blend."""
    image = torch.full((3, 200, 200), 40, dtype=torch.uint8)
    out = draw_detections(image, two_squares())
    color = torch.tensor(instance_color(0), dtype=torch.uint8)
    _, line, contour = overlay_sizes(200, 200)
    assert contour > line  # so x = 21 is on the contour, not on the box outline at x = 20
    # inside the left and bottom edges of mask 0, away from the label above it
    assert torch.equal(out[:, 90, 20 + line], color)
    assert torch.equal(out[:, 99 - line, 40], color)
    fill = out[:, 90, 40]
    assert not torch.equal(fill, color)
    assert (fill.int() - (40 * 0.5 + color.int() * 0.5).int()).abs().max() <= 1


def test_paint_windows_is_torchvisions_fill_with_the_top_mask_over_overlaps() -> None:
    """Without contours the fill is `draw_segmentation_masks`' pixels where masks do not
    overlap; where they do, the last mask's colour (torchvision paints black there). Fails
    if the window-by-window path drifts from torchvision's arithmetic."""
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 50, 60), dtype=torch.uint8, generator=generator)
    masks = torch.rand(3, 50, 60, generator=generator) > 0.6
    colors = [instance_color(i) for i in range(3)]
    # windows out of order, as `paste_mask_windows` may yield them
    windows = [(d, 0, 0, masks[d]) for d in (2, 0, 1)]
    out = paint_windows(image, windows, colors, alpha=0.4)
    single = masks.sum(0) <= 1
    expected = draw_segmentation_masks(image, masks, alpha=0.4, colors=colors)
    assert torch.equal(out[:, single], expected[:, single])
    top = torch.where(masks[2], 2, torch.where(masks[1], 1, 0))
    painted = torch.tensor(colors, dtype=torch.uint8)[top].permute(2, 0, 1)
    expected = (image * 0.6 + painted * 0.4).to(torch.uint8)
    overlap = ~single
    assert bool(overlap.any()) and torch.equal(out[:, overlap], expected[:, overlap])


@pytest.mark.slow
@pytest.mark.parametrize(
    "box",
    [
        (0.0, 0.0, 30.0, 20.0),  # top-left: no room above, the label goes inside
        (170.0, 0.0, 200.0, 25.0),  # top-right: moved left to stay in
        (175.0, 180.0, 200.0, 200.0),  # bottom-right
        (0.0, 185.0, 200.0, 200.0),  # the whole bottom row
    ],
)
def test_label_stays_inside_the_image_for_a_box_at_the_corner(box) -> None:
    text = "a long class name 0.93"
    font_size, _, _ = overlay_sizes(200, 200)
    width, height = label_size(text, font_size)
    x, y = label_position(box, (width, height), (200, 200))
    assert 0 <= x and x + width <= 200 and 0 <= y and y + height <= 200
    # drawn: the label background (the instance colour) is in the picture, all of it
    image = torch.zeros(3, 200, 200, dtype=torch.uint8)
    masks = torch.zeros(1, 200, 200, dtype=torch.bool)
    dets = Detections(torch.tensor([box]), torch.tensor([0.93]), torch.tensor([0]), masks)
    out = draw_detections(image, dets, class_names=["a long class name"])
    color = torch.tensor(instance_color(0), dtype=torch.uint8)[:, None, None]
    # the label's first column of pixels, below the text padding, is the background colour
    assert bool((out[:, y + 1 : y + height - 1, x : x + 1] == color).all())
    assert bool((out[:, y + 1 : y + height - 1, x + width - 1 : x + width] == color).all())


def test_label_goes_above_the_box_when_there_is_room() -> None:
    x, y = label_position((50.0, 100.0, 90.0, 150.0), (60, 16), (200, 200))
    assert (x, y) == (50, 84)


# ---------------------------------------------------------------------------------------------
# eval --plots
# ---------------------------------------------------------------------------------------------


def rle_of(mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}


def square(y0: int, x0: int, side: int, size: int = 96) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[y0 : y0 + side, x0 : x0 + side] = True
    return mask


def test_match_image_finds_matches_misses_and_false_positives() -> None:
    """gt 0 is found, gt 1 is missed (the prediction near it overlaps < 0.5), the prediction
    of another class over gt 0 is a false positive, as is the one on empty ground."""
    gts = [square(10, 10, 30), square(50, 50, 30)]
    anns = [
        {"category_id": 1, "iscrowd": 0, "bbox": [10, 10, 30, 30]},
        {"category_id": 1, "iscrowd": 0, "bbox": [50, 50, 30, 30]},
    ]
    predictions = [
        {"category_id": 1, "score": 0.9, "segmentation": rle_of(square(11, 11, 30))},
        {"category_id": 2, "score": 0.8, "segmentation": rle_of(square(10, 10, 30))},
        {"category_id": 1, "score": 0.7, "segmentation": rle_of(square(62, 62, 30))},
    ]
    match = match_image(anns, [rle_of(m) for m in gts], predictions)
    assert match.gt_match == [0, -1]
    assert match.fp == [False, True, True]


def write_tiny_dataset(root: Path) -> tuple[Path, Path, list[dict]]:
    """Two 96 x 96 images with two squares each, and results: image 1 all found, image 2 one
    found, one missed, one false positive."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    annotations, results, images = [], [], []
    for image_id in (1, 2):
        Image.new("RGB", (96, 96), (90, 110, 130)).save(images_dir / f"{image_id}.png")
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": 96, "width": 96})
        for k, (y0, x0) in enumerate(((8, 8), (50, 50))):
            mask = square(y0, x0, 30)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "iscrowd": 0,
                    "bbox": [x0, y0, 30, 30],
                    "area": 900,
                    "segmentation": rle_of(mask),
                }
            )
            if image_id == 1 or k == 0:
                results.append(
                    {
                        "image_id": image_id,
                        "category_id": 1,
                        "score": 0.9 - 0.1 * k,
                        "bbox": [x0, y0, 30, 30],
                        "segmentation": rle_of(mask),
                    }
                )
    fp = square(60, 5, 25)
    results.append(
        {
            "image_id": 2,
            "category_id": 1,
            "score": 0.6,
            "bbox": [5, 60, 25, 25],
            "segmentation": rle_of(fp),
        }
    )
    gt = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "square"}],
    }
    json_path = root / "gt.json"
    json_path.write_text(json.dumps(gt))
    return json_path, images_dir, results


def test_write_eval_plots_writes_curves_and_a_sheet(tmp_path: Path) -> None:
    json_path, images_dir, results = write_tiny_dataset(tmp_path)
    written = write_eval_plots(json_path, results, images_dir, tmp_path / "plots")
    assert set(written) == {"pr_curves", "sheet"}
    for name in ("pr_curves.png", "sheet.png"):
        path = tmp_path / "plots" / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(path) as png:
            assert png.size[0] > 500 and png.size[1] > 300


@pytest.mark.slow
def test_eval_plots_cli_writes_both_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`blendmask eval --weights W ... --plots` (tiny model at random init: few or no
    detections, which must not stop the plots)."""
    from blendmask.checkpoint_io import save_model_file
    from blendmask.cli import main
    from blendmask.predictor import Predictor
    from blendmask.presets import get_preset

    json_path, images_dir, _ = write_tiny_dataset(tmp_path)
    cfg = get_preset("tiny")
    cfg.data.category_ids = [1]
    cfg.data.category_names = ["square"]
    cfg.model.fcos.num_classes = 1
    torch.manual_seed(0)
    predictor = Predictor.from_config(cfg, device="cpu")
    weights = tmp_path / "model.pt"
    save_model_file(weights, predictor.cfg, predictor.model)
    out = tmp_path / "eval"
    argv = ["eval", "--weights", str(weights), "--json", str(json_path)]
    argv += ["--images", str(images_dir), "--out", str(out), "--device", "cpu"]
    assert main([*argv, "--num-workers", "0", "--plots"]) == 0
    for name in ("pr_curves.png", "sheet.png"):
        assert (out / "plots" / name).read_bytes()[:8] == PNG_SIGNATURE
    capsys.readouterr()
    # --plots needs the model's masks: refused with --results, exit code 2
    results_argv = ["eval", "--results", str(out / "results.json"), "--json", str(json_path)]
    assert main([*results_argv, "--out", str(tmp_path / "r"), "--plots"]) == 2
    assert "--plots" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# curves.png
# ---------------------------------------------------------------------------------------------


def test_curves_show_the_learning_rate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails if `plot_curves` has no axes labelled lr plotting the records' lr values."""
    from matplotlib.figure import Figure

    from blendmask.training.logging import MetricsFile, plot_curves

    saved: list[Figure] = []
    original = Figure.savefig

    def keep(fig: Figure, *args, **kwargs):
        saved.append(fig)
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    path = tmp_path / "metrics.jsonl"
    writer = MetricsFile(path)
    lrs = [0.001, 0.005, 0.01, 0.001]
    for it, lr in enumerate(lrs, start=1):
        writer.write({"type": "train", "iteration": it * 10, "lr": lr, "loss": 1.0 / it})
    out = plot_curves(path, tmp_path / "curves.png")
    assert out is not None and out.read_bytes()[:8] == PNG_SIGNATURE
    (fig,) = saved
    lr_axes = [ax for ax in fig.axes if ax.get_ylabel() == "lr"]
    assert len(lr_axes) == 1
    (line,) = lr_axes[0].get_lines()
    assert list(line.get_ydata()) == lrs
    assert list(line.get_xdata()) == [10, 20, 30, 40]
