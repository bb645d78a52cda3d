"""Tests of the end-to-end export (network + selection + NMS + blender + pasting in one graph):
onnxruntime and TorchScript against the PyTorch `Predictor` detection by detection, batches and
sizes (dynamic axes), an image without detections, the traceable pieces against the
post-processor's own functions, the converted R_50 at a reduced size, and the CLI.

The tiny preset with spread-out random weights (`helpers.models.spread_model`), so that
there are dozens of detections with distinct scores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from helpers.models import boxy_model, shapes_images, spread_model  # noqa: E402

from blendmask.checkpoint_io import save_model_file  # noqa: E402
from blendmask.export.compare import ParityReport, add_image, as_arrays, compare  # noqa: E402
from blendmask.export.end_to_end import paste_in_images  # noqa: E402
from blendmask.export.end_to_end_onnx import (  # noqa: E402
    end_to_end_module,
    export_end_to_end_onnx,
)
from blendmask.export.torchscript import TorchScriptSegmenter, export_torchscript  # noqa: E402
from blendmask.modeling.postprocess import attentions_at  # noqa: E402
from blendmask.onnx_runtime import OnnxSegmenter, preprocess_images  # noqa: E402
from blendmask.predictor import Predictor  # noqa: E402
from blendmask.structures.paste import paste_masks  # noqa: E402

# Slow: every test exports or runs a whole graph (`pytest -m "not slow"` leaves them out).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    cfg, model, post = boxy_model()
    folder = tmp_path_factory.mktemp("e2e")
    onnx_path = export_end_to_end_onnx(
        model, post, folder / "tiny.onnx", height=64, width=96, cfg=cfg
    )
    return cfg, model, post, onnx_path, folder


def test_onnx_end_to_end_equals_predictor_on_ten_images(tiny) -> None:
    """The Must-show comparison on the tiny model: fails if any step of the graph (selection,
    NMS, top layer, blender, rescaling, pasting) or the numpy preprocessing drifts."""
    cfg, model, post, path, _ = tiny
    predictor = Predictor(cfg, model, post, "cpu", score_threshold=None)
    report = compare(lambda im: predictor([im])[0], OnnxSegmenter(path), shapes_images())
    assert report.images == 10
    assert report.expected >= 100, "too few detections for the comparison to mean anything"
    assert report.passed(), report.summary()
    assert report.mean_mask_iou >= 0.999


def test_onnx_batch_equals_the_traced_module(tiny) -> None:
    """A batch of three sizes, padded to the largest, in onnxruntime equals the same module in
    PyTorch (fails if a batch-dependent shape was frozen in the trace)."""
    cfg, model, post, path, _ = tiny
    segmenter = OnnxSegmenter(path)
    images = shapes_images(3, seed=1)
    batch, sizes, origs = segmenter.preprocess(images)
    got = segmenter.predict_batch(images)
    with torch.no_grad():
        want = end_to_end_module(model, post)(*(torch.from_numpy(a) for a in (batch, sizes, origs)))
    assert [len(g.scores) for g in got] == want[4].tolist()
    assert len(set(want[4].tolist())) > 1, "equal counts would not test the padding rows"
    for i, g in enumerate(got):
        n = int(want[4][i])
        np.testing.assert_array_equal(g.labels, want[2][i, :n].numpy())
        np.testing.assert_allclose(g.boxes, want[0][i, :n].numpy(), atol=1e-3, rtol=0)
        np.testing.assert_allclose(g.scores, want[1][i, :n].numpy(), atol=1e-5, rtol=0)
        h, w = images[i].shape[:2]
        assert g.masks.shape == (n, h, w)
        assert (g.masks != want[5][i, :n, :h, :w].numpy()).mean() < 1e-3


def test_no_detections_gives_empty_outputs(tmp_path: Path) -> None:
    """A score threshold no candidate passes: zero-size outputs all the way through (RoiAlign,
    Resize and MatMul on empty tensors), not an onnxruntime error."""
    cfg, model, post = boxy_model(seed=1)
    post.score_thresh = 1.0
    path = export_end_to_end_onnx(model, post, tmp_path / "none.onnx", height=64, width=64)
    image = shapes_images(1)[0]
    out = OnnxSegmenter(path)(image)
    assert out.boxes.shape == (0, 4) and out.scores.shape == (0,) and out.labels.shape == (0,)
    assert out.masks.shape == (0, *image.shape[:2])
    session_out = OnnxSegmenter(path).predict_batch([image, image[:50]])
    assert [len(s.scores) for s in session_out] == [0, 0]


def test_torchscript_equals_predictor_and_loads_without_the_package(tiny) -> None:
    """`export_torchscript` gives the Predictor's detections, and the file runs in a fresh
    interpreter where `import blendmask` fails (only torch + torchvision)."""
    cfg, model, post, _, folder = tiny
    path = export_torchscript(model, post, folder / "tiny.ts", height=64, width=96, cfg=cfg)
    predictor = Predictor(cfg, model, post, "cpu", score_threshold=None)
    segmenter = TorchScriptSegmenter(path)
    images = shapes_images(4, seed=2)
    report = compare(lambda im: predictor([im])[0], segmenter, images)
    assert report.expected > 0 and report.passed(), report.summary()

    m = segmenter.metadata
    batch, sizes, origs = preprocess_images(images[:1], m["min_size"], m["max_size"])
    np.savez(folder / "inputs.npz", images=batch, image_sizes=sizes, orig_sizes=origs)
    script = f"""
import sys
sys.modules["blendmask"] = None  # any import of the package fails
import numpy as np, torch, torchvision
module = torch.jit.load({str(path)!r})
a = np.load({str(folder / "inputs.npz")!r})
out = module(*(torch.from_numpy(a[k]) for k in ("images", "image_sizes", "orig_sizes")))
print(int(out[4][0]), sorted(m for m in sys.modules if m.startswith("blendmask")))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-2000:]
    count, modules = result.stdout.strip().split(" ", 1)
    assert int(count) == len(segmenter(images[0]).scores) > 0
    assert modules == "['blendmask']"  # only the blocked placeholder


def test_attentions_at_traced_holds_for_other_sizes(tmp_path: Path) -> None:
    """`attentions_at`, the one top-layer-at-locations of the post-processor and the export,
    traced (TorchScript and ONNX in onnxruntime) at one set of level sizes and batch size, gives
    the dense 3x3 conv's values at others (border locations, every level, two images). Fails if
    a level size or the batch size were frozen into the trace."""
    torch.manual_seed(0)
    weight, bias = torch.randn(8, 5, 3, 3), torch.randn(8)

    class AtLocations(torch.nn.Module):
        def forward(self, t0, t1, t2, image_inds, point_inds):
            return attentions_at((t0, t1, t2), weight, bias, image_inds, point_inds)

    def towers(n: int, h: int, w: int) -> tuple[torch.Tensor, ...]:
        return tuple(torch.randn(n, 5, -(-h // s), -(-w // s)) for s in (1, 2, 4))

    def locations(shapes: list[tuple[int, int]], n: int) -> tuple[torch.Tensor, torch.Tensor]:
        total = sum(h * w for h, w in shapes)
        # the first and last point of every level (borders), plus a spread of others
        ends = [0, shapes[0][0] * shapes[0][1] - 1, total - 1]
        points = torch.tensor(ends + list(range(1, total, max(total // 11, 1))))
        return torch.arange(len(points)) % n, points

    module = AtLocations()
    example = (*towers(1, 6, 7), *locations([(6, 7), (3, 4), (2, 2)], 1))
    traced = torch.jit.trace(module, example)
    path = tmp_path / "at.onnx"
    names = ["t0", "t1", "t2", "image_inds", "point_inds"]
    dynamic = {name: {0: "n", 2: "h", 3: "w"} for name in names[:3]}
    dynamic.update({name: {0: "d"} for name in names[3:]})
    torch.onnx.export(
        module, example, str(path), input_names=names, dynamic_axes=dynamic, dynamo=False
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    other = towers(2, 9, 13)
    image_inds, point_inds = locations([tuple(t.shape[-2:]) for t in other], 2)
    dense = [F.conv2d(t, weight, bias, padding=1).flatten(2) for t in other]  # (N, O, Hl*Wl)
    want = torch.cat(dense, dim=2)[image_inds, :, point_inds]
    torch.testing.assert_close(traced(*other, image_inds, point_inds), want)
    feeds = dict(zip(names, (x.numpy() for x in (*other, image_inds, point_inds))))
    got = torch.from_numpy(session.run(None, feeds)[0])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_paste_in_images_equals_paste_masks() -> None:
    """Whole-image pasting gives `paste_masks`' pixels (boxes inside, at the border, tiny and
    larger than the mask resolution), and nothing past an image's own size in a batch."""
    torch.manual_seed(0)
    probs = torch.rand(2, 5, 16, 16)
    boxes = torch.tensor(
        [
            [[0.0, 0.0, 40.0, 30.0], [10.5, 3.2, 12.0, 4.9], [5.0, 5.0, 60.0, 45.0]]
            + [[1, 1, 9, 9]] * 2,
            [[20.0, 1.0, 50.0, 33.0], [0.0, 0.0, 30.0, 20.0], [7.3, 2.2, 29.9, 19.7]]
            + [[2, 2, 4, 4]] * 2,
        ]
    )
    sizes = torch.tensor([[45, 60], [20, 30]])
    got = paste_in_images(probs, boxes, sizes, 0.5)
    assert got.shape == (2, 5, 45, 60)
    for n, (h, w) in enumerate(sizes.tolist()):
        want = paste_masks(probs[n], boxes[n], (h, w), 0.5)
        assert torch.equal(got[n, :, :h, :w], want)
        assert not got[n, :, h:].any() and not got[n, :, :, w:].any()


@pytest.mark.timeout(900)
def test_converted_r50_end_to_end_equals_predictor(tmp_path: Path) -> None:
    """R_50_1x with converted reference-style weights (a synthetic AdelaiDet checkpoint), one
    photo at test size 320: the 80-class, 5-level graph matches the Predictor."""
    skimage_data = pytest.importorskip("skimage.data")
    from helpers.reference import synthetic_checkpoint

    from blendmask.convert import convert_adelaidet_model
    from blendmask.factory import build_postprocessor

    cfg, model, report = convert_adelaidet_model(
        synthetic_checkpoint(tmp_path / "R_50_1x.pth"), "R_50_1x"
    )
    assert report.complete
    cfg.data.min_size_test, cfg.data.max_size_test = 320, 533
    post = build_postprocessor(cfg).eval()
    model.eval()
    path = export_end_to_end_onnx(
        model, post, tmp_path / "r50.onnx", height=320, width=544, cfg=cfg
    )
    predictor = Predictor(cfg, model, post, "cpu", score_threshold=None)
    image = skimage_data.coffee()
    parity = ParityReport()
    add_image(parity, as_arrays(predictor([image])[0]), as_arrays(OnnxSegmenter(path)(image)))
    assert parity.expected >= 20
    assert parity.passed(), parity.summary()


def test_export_cli_end_to_end_and_predict_onnx(tmp_path: Path, capsys) -> None:
    """`blendmask export` writes the end-to-end file by default and checks it against the
    Predictor; `blendmask predict --onnx` writes the results json from it."""
    from blendmask.cli import main

    cfg, model, _ = spread_model(seed=4)
    weights = tmp_path / "model.pt"
    save_model_file(weights, cfg, model)
    out = tmp_path / "m.onnx"
    assert main(["export", "--weights", str(weights), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "end to end" in printed and "PASS" in printed
    image = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray(shapes_images(1)[0]).save(image)
    pred = tmp_path / "pred"
    assert main(["predict", "--onnx", str(out), str(image), "--out", str(pred), "--coco"]) == 0
    results = json.loads((tmp_path / "pred" / "results.json").read_text())
    predictor = Predictor(cfg, model, spread_model(seed=4)[2], "cpu", score_threshold=None)
    want = predictor([str(image)])[0]
    assert len(results) == int((want.scores >= 0.3).sum()) > 0


def test_export_cli_refuses_training_settings_and_deformable(tmp_path: Path) -> None:
    import onnx

    from blendmask.cli import main
    from blendmask.factory import build
    from blendmask.presets import get_preset

    cfg, model, _ = spread_model(seed=4)
    weights = tmp_path / "model.pt"
    save_model_file(weights, cfg, model)
    code = main(
        ["export", "--weights", str(weights), "--out", str(tmp_path / "x.onnx")]
        + ["--set", "model.fpn.out_channels=8"]
    )
    assert code == 2
    # an inference setting is taken, and travels in the file's metadata
    out = tmp_path / "scaled.onnx"
    args = ["export", "--weights", str(weights), "--out", str(out), "--no-check"]
    assert main([*args, "--set", "data.test_scale=2"]) == 0
    meta = {e.key: e.value for e in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["blendmask_end_to_end"])["scale"] == 2.0
    cfg = get_preset("tiny")
    cfg.model.backbone.name = "resnet50"
    cfg.model.backbone.deform_interval = 3
    model, _, post = build(cfg, load_pretrained=False)
    with pytest.raises(ValueError, match="deformable"):
        export_end_to_end_onnx(model, post, tmp_path / "d.onnx", height=64, width=64)


def test_graph_holds_the_whole_pipeline(tiny) -> None:
    """The file is one graph with the pipeline's ONNX ops: NMS as `NonMaxSuppression`, RoIAlign
    with half-pixel coordinates (aligned=True), the attention resize, per-level `TopK`; its
    metadata holds the runtime's preprocessing."""
    import onnx

    _, _, _, path, _ = tiny
    proto = onnx.load(str(path))
    ops = {node.op_type for node in proto.graph.node}
    assert {"NonMaxSuppression", "RoiAlign", "Resize", "TopK", "MatMul", "Conv"} <= ops
    (roi_align,) = [n for n in proto.graph.node if n.op_type == "RoiAlign"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in roi_align.attribute}
    assert attrs["coordinate_transformation_mode"] == b"half_pixel"
    assert [i.name for i in proto.graph.input] == ["images", "image_sizes", "orig_sizes"]
    assert [o.name for o in proto.graph.output] == [
        "boxes",
        "scores",
        "labels",
        "mask_probs",
        "num_detections",
        "masks",
    ]
    meta = {e.key: e.value for e in proto.metadata_props}
    runtime = json.loads(meta["blendmask_end_to_end"])
    assert (runtime["min_size"], runtime["max_size"], runtime["size_divisibility"]) == (64, 96, 32)
    assert runtime["scale"] == 0.0  # data.test_scale: the shortest-edge resize


@pytest.mark.timeout(600)
def test_latency_benchmark_times_onnxruntime_and_bf16_rows(tmp_path: Path) -> None:
    """`benchmarks/latency.py --onnx --with-bf16`: the end-to-end ONNX and bf16 rows are timed
    at both detection counts, return exactly that many detections and reach the README."""
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "latency.py"
    out, readme = tmp_path / "latency.json", tmp_path / "README.md"
    readme.write_text("<!-- bench:start -->\n<!-- bench:end -->\n")
    args = ["--size", "64", "96", "--repeats", "1", "--threads", "1", "--presets", "tiny"]
    args += ["--peers", "--no-blender", "--onnx", "--with-bf16", "--detections", "3", "8"]
    proc = subprocess.run(
        [sys.executable, str(bench), *args, "--json", str(out), "--update-readme", str(readme)],
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    models = json.loads(out.read_text())["models"]
    assert set(models) == {"blendmask_tiny", "blendmask_tiny_bf16", "blendmask_tiny_onnxruntime"}
    for per_n in models.values():
        assert [per_n[n]["detections"] for n in ("3", "8")] == [3, 8]
        assert all(per_n[n]["median_s"] > 0 for n in ("3", "8"))
    text = readme.read_text()
    assert "end-to-end ONNX in onnxruntime CPU, 1 threads" in text
    assert "| BlendMask tiny (ours), PyTorch bf16 autocast |" in text
