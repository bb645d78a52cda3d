"""`blendmask predict` on a video: a synthetic clip written here with PyAV goes to an annotated
video with the same number of frames and size, and one record per frame in order.

Fails when frames are dropped or duplicated (encoder delay not flushed, a batch lost at the
end), when records and frames disagree, or when a done video is predicted again on a rerun.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from blendmask.cli import main

av = pytest.importorskip("av")

FRAMES, HEIGHT, WIDTH = 7, 48, 64  # 7 frames at batch 3: a short last batch


def write_clip(path: Path) -> None:
    """A moving bright square on a dark background, MPEG-4 in an .mp4 container."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for k in range(FRAMES):
            frame = np.full((HEIGHT, WIDTH, 3), 30, dtype=np.uint8)
            frame[10:30, 4 + 6 * k : 24 + 6 * k] = 220
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))


def decoded_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    import torch

    from blendmask.checkpoint_io import save_model_file
    from blendmask.factory import build
    from blendmask.presets import get_preset

    torch.manual_seed(0)
    cfg = get_preset("tiny")
    cfg.model.fcos.num_classes = 2
    cfg.model.fcos.inference_th_test = 0.0
    cfg.data.min_size_test, cfg.data.max_size_test = 64, 96
    model, _, _ = build(cfg.validate(), load_pretrained=False)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model_file(path, cfg, model)
    return path


@pytest.fixture(scope="module")
def predictor(model_file):
    from blendmask.predictor import Predictor

    return Predictor.from_checkpoint(model_file, device="cpu", score_threshold=None)


@pytest.mark.slow
def test_video_gives_annotated_video_and_a_record_per_frame(predictor, tmp_path):
    from blendmask.prediction.predict import predict_images

    clip = tmp_path / "clip.mp4"
    write_clip(clip)
    source = decoded_frames(clip)
    assert len(source) == FRAMES  # the clip itself is whole
    out = tmp_path / "out"
    run = {"weights": None, "predictor": predictor, "inputs": [clip], "batch_size": 3}
    summary = predict_images(**run, out=out, score_threshold=0)
    assert summary["frames"] == FRAMES
    annotated = decoded_frames(out / "videos" / "clip.mp4")
    assert len(annotated) == FRAMES
    assert all(f.shape == (HEIGHT, WIDTH, 3) for f in annotated)
    with av.open(str(out / "videos" / "clip.mp4")) as container:
        assert container.streams.video[0].average_rate == Fraction(10)
    lines = (out / "videos" / "clip.jsonl").read_text().splitlines()
    frames = [json.loads(line) for line in lines]
    assert [r["frame"] for r in frames] == list(range(FRAMES))
    assert all(r["file_name"] == str(clip) for r in frames)
    assert all((r["height"], r["width"]) == (HEIGHT, WIDTH) for r in frames)
    assert [r["time"] for r in frames] == pytest.approx([k / 10 for k in range(FRAMES)])
    assert all(r["detections"] for r in frames)  # threshold 0: something on every frame
    schema = Path(__file__).resolve().parents[1] / "docs" / "detections.schema.json"
    for record in frames:  # the layout of images' lines (docs/detections.md)
        jsonschema.validate(record, json.loads(schema.read_text()))
    # a rerun skips the finished video
    assert predict_images(**run, out=out, score_threshold=0)["frames"] == 0
    assert len(decoded_frames(out / "videos" / "clip.mp4")) == FRAMES
    # Threshold 1 draws nothing: each annotated frame is its own source frame (up to the
    # codec's loss), closer to it than to any other frame, so frames keep their order.
    plain = tmp_path / "plain"
    predict_images(**run, out=plain, score_threshold=1.0)
    annotated = decoded_frames(plain / "videos" / "clip.mp4")
    for k, frame in enumerate(annotated):
        diffs = [np.abs(frame.astype(int) - s.astype(int)).mean() for s in source]
        assert int(np.argmin(diffs)) == k and diffs[k] < 3, (k, diffs)


def test_unreadable_video_is_listed_not_fatal(model_file, tmp_path, capsys):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video at all")
    good = tmp_path / "good.png"
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(good)
    out = tmp_path / "out"
    args = ["predict", "--weights", str(model_file), str(bad), str(good), "--out", str(out)]
    assert main([*args, "--device", "cpu", "--workers", "0"]) == 0
    assert "1 image(s), 1 video(s) (0 frames this run)" in capsys.readouterr().out
    errors = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    assert [e["path"] for e in errors] == [str(bad)] and str(bad) in errors[0]["error"]
    assert not (out / "videos" / "bad.jsonl").exists()
    assert not list((out / "videos").glob(".*.tmp"))
