"""`blendmask serve` as a client sees it: a real server process on a free local port (a random
tiny model that detects on any image), every endpoint, the detections equal to `Predictor`'s,
every bad input answered 4xx with a one-line JSON error while the server keeps serving, 503 +
Retry-After under overload, and a clean SIGTERM. The micro-batcher is also tested in-process."""

from __future__ import annotations

import io
import json
import signal
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from helpers.self_ground_truth import write_model  # noqa: E402
from helpers.serve import (  # noqa: E402
    ServerProcess,
    multipart,
    post_chunked,
    post_declared,
    post_image,
    request,
)

from blendmask.predictor import Predictor  # noqa: E402

# Slow: the tests start a `blendmask serve` process (`pytest -m "not slow"` leaves them out).
pytestmark = pytest.mark.slow

SERVER_ARGS = ("--max-batch", "2", "--max-queue", "2", "--max-upload-mb", "2")
SERVER_ARGS += ("--max-pixels", "4000000", "--max-wait-ms", "20")


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def bomb_png(width: int, height: int) -> bytes:
    """A valid 8 x 8 PNG whose header says width x height: a few hundred bytes declaring
    gigapixels, as a decompression bomb does."""
    data = bytearray(png_bytes(noise(8, 8)))
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")  # IHDR's CRC
    return bytes(data)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(tmp_path_factory.mktemp("serve") / "model.pt")


@pytest.fixture(scope="module")
def server(model_file: Path, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("serve_log") / "server.log"
    process = ServerProcess(model_file, *SERVER_ARGS, log=log)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def image_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("serve_images") / "noise.png"
    path.write_bytes(png_bytes(noise(48, 72)))
    return path


def assert_same_records(served: list[dict], expected: list[dict]) -> None:
    """The server's records are the package's (`Detections.to_json`) for the same image."""
    assert len(served) == len(expected) > 0
    for got, want in zip(served, expected):
        assert got.keys() == want.keys()
        assert np.allclose(got["box"], want["box"], atol=1e-4), (got["box"], want["box"])
        assert got["score"] == pytest.approx(want["score"], abs=1e-6)
        for key in set(want) - {"box", "score"}:
            assert got[key] == want[key], key


def test_service_endpoints(server: ServerProcess) -> None:
    status, _, body = request(server.url + "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, _, body = request(server.url + "/model")
    info = json.loads(body)
    assert info["preset"] == "tiny" and info["classes"] == [
        "circle",
        "rectangle",
        "triangle",
        "star",
    ]
    assert info["input_size"] == {"min_size": 64, "max_size": 64} and info["precision"] == "float32"
    assert info["version"] and info["backend"] == "torch"
    status, headers, body = request(server.url + "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"/static/app.js" in body and b"http" not in body.replace(b"http-equiv", b"")
    for asset in ("/static/app.js", "/static/style.css"):
        assert request(server.url + asset)[0] == 200
    schema = json.loads(request(server.url + "/openapi.json")[2])
    assert {"/predict", "/predict/overlay", "/explain", "/metrics"} <= set(schema["paths"])
    assert request(server.url + "/docs")[0] == 200
    # Binds the loopback address unless told otherwise.
    assert f"http://127.0.0.1:{server.port}" in server.log()


def test_predict_equals_predictor(
    server: ServerProcess, model_file: Path, image_file: Path
) -> None:
    data = image_file.read_bytes()
    predictor = Predictor.from_checkpoint(model_file, device="cpu", score_threshold=0.0)
    expected = predictor(image_file)[0].to_json()
    status, _, raw = post_image(server.url, "/predict", data, conf=0)
    assert status == 200, raw
    assert raw["image"] == {"height": 48, "width": 72} and raw["model"] == "model.pt"
    assert {"inference_ms", "queue_ms", "total_ms"} <= set(raw["timing"])
    assert_same_records(raw["detections"], expected)
    # The same as a multipart upload; the file name a client sends is never used as a path.
    body, content_type = multipart("file", "../../../etc/passwd", data)
    status, _, answer = request(
        server.url + "/predict?conf=0", body, {"Content-Type": content_type}
    )
    assert status == 200
    assert_same_records(json.loads(answer)["detections"], expected)


def test_predict_knobs_equal_predictor_knobs(
    server: ServerProcess, model_file: Path, image_file: Path
) -> None:
    # (This random model's best boxes are empty at the image's size, so max_det 30 keeps 5.)
    knobs = {"score_threshold": 0.065, "max_detections": 30, "classes": ["rectangle", "triangle"]}
    predictor = Predictor.from_checkpoint(model_file, device="cpu", **knobs)
    expected = predictor(image_file)[0].to_json()
    params = {"conf": 0.065, "max_det": 30, "classes": "rectangle,2", "iou": 0.6}
    status, _, raw = post_image(server.url, "/predict", image_file.read_bytes(), **params)
    assert status == 200, raw
    assert_same_records(raw["detections"], expected)
    assert {d["label"] for d in raw["detections"]} == {1, 2}


def test_mask_formats_overlay_and_explain(server: ServerProcess, image_file: Path) -> None:
    from pycocotools import mask as mask_util

    data = image_file.read_bytes()
    _, _, rle = post_image(server.url, "/predict", data, conf=0)
    _, _, none = post_image(server.url, "/predict", data, conf=0, masks="none")
    _, _, poly = post_image(server.url, "/predict", data, conf=0, masks="polygon")
    assert len(rle["detections"]) == len(none["detections"]) == len(poly["detections"]) > 0
    assert all("mask" not in d for d in none["detections"])
    for with_rle, with_polygons in zip(rle["detections"], poly["detections"]):
        counts = {**with_rle["mask"], "counts": with_rle["mask"]["counts"].encode()}
        polygons = with_polygons["mask"]
        assert bool(polygons) == bool(mask_util.area(counts) > 0)
        assert all(len(p) >= 6 and len(p) % 2 == 0 for p in polygons)
        assert all(-1 <= v <= 73 for p in polygons for v in p)
    for path in ("/predict/overlay", "/explain"):
        status, headers, png = post_image(server.url, path, data, conf=0.07)
        assert status == 200 and headers["content-type"] == "image/png"
        picture = Image.open(io.BytesIO(png))
        if path == "/predict/overlay":
            assert picture.size == (72, 48)  # drawn at the image's size


@pytest.mark.faults
def test_bad_input_is_a_one_line_4xx_and_the_server_keeps_serving(
    server: ServerProcess, image_file: Path
) -> None:
    good = image_file.read_bytes()
    cases = {
        "not an image": ("/predict", b"this is not an image", {}, 400),
        "truncated": ("/predict", good[: len(good) // 2], {}, 400),
        "bomb": ("/predict", bomb_png(6000, 6000), {}, 413),  # under PIL's own limit
        "PIL-sized bomb": ("/predict", bomb_png(60000, 60000), {}, 413),
        "unknown class": ("/predict", good, {"classes": "dog"}, 400),
        "label out of range": ("/predict", good, {"classes": "7"}, 400),
        "bad knob": ("/predict", good, {"conf": "1.5"}, 422),
        "bad mask format": ("/predict", good, {"masks": "png"}, 422),
        "empty": ("/predict/overlay", b"", {}, 400),
        "explain truncated": ("/explain", good[:40], {}, 400),
    }
    for name, (path, data, params, expected) in cases.items():
        status, headers, body = post_image(server.url, path, data, **params)
        assert status == expected, (name, status, body)
        assert headers["content-type"] == "application/json", name
        assert isinstance(body, dict) and list(body) == ["error"], (name, body)
        assert body["error"] and "\n" not in body["error"], (name, body)
    assert "dog" in post_image(server.url, "/predict", good, classes="dog")[2]["error"]
    # 100 MB against the 2 MB limit: refused from its Content-Length, before it is sent ...
    status, body = post_declared(server.url, "/predict", 100 * 1024 * 1024)
    assert status == 413 and "limit of 2097152 bytes" in body["error"]
    # ... and a chunked upload (no length given) once 2 MB have been counted.
    status, body = post_chunked(server.url, "/predict", [b"\0" * 65536] * 33)
    assert status == 413 and list(body) == ["error"]
    assert request(server.url + "/no/such/path")[0] == 404
    assert post_image(server.url, "/predict", good, conf=0)[0] == 200
    metrics = request(server.url + "/metrics")[2].decode()
    assert 'blendmask_errors_total{endpoint="/predict",status="413"} 4.0' in metrics


def test_overload_answers_503_with_retry_after_then_serves_again(
    server: ServerProcess, image_file: Path
) -> None:
    data = image_file.read_bytes()
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda _: post_image(server.url, "/predict", data), range(24)))
    statuses = [status for status, _, _ in answers]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(503) > 0 and statuses.count(200) >= 2, statuses
    for status, headers, body in answers:
        if status == 503:
            assert headers["retry-after"] == "1" and "busy" in body["error"]
    assert post_image(server.url, "/predict", data)[0] == 200
    metrics = request(server.url + "/metrics")[2].decode()
    for name in ("blendmask_request_latency_seconds_bucket", "blendmask_queue_depth"):
        assert name in metrics
    assert 'blendmask_requests_total{endpoint="/predict",status="503"}' in metrics


def test_sigterm_lets_in_flight_requests_finish(
    model_file: Path, image_file: Path, tmp_path: Path
) -> None:
    # A long batching window holds six requests in the server when SIGTERM comes.
    args = ("--max-batch", "8", "--max-queue", "8", "--max-wait-ms", "1500")
    server = ServerProcess(model_file, *args, log=tmp_path / "server.log")
    data = image_file.read_bytes()
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(post_image, server.url, "/predict", data) for _ in range(6)]
        deadline = time.monotonic() + 20
        while json.loads(request(server.url + "/health")[2])["busy"] < 6:
            assert time.monotonic() < deadline, "requests never reached the server"
            time.sleep(0.02)
        code = server.stop()
        statuses = [future.result()[0] for future in futures]
    assert statuses == [200] * 6
    # uvicorn ends by re-raising the SIGTERM it handled (exit status -15), after the shutdown.
    assert code in (0, -signal.SIGTERM), server.log()
    assert "Application shutdown complete" in server.log()


def test_polygons_outline_the_mask() -> None:
    from pycocotools import mask as mask_util

    from blendmask.serve.backends import rle_to_polygons

    mask = np.zeros((40, 50), dtype=np.uint8)
    mask[5:25, 10:30] = 1  # a square with a hole, and a separate blob
    mask[12:18, 17:23] = 0
    mask[30:36, 40:48] = 1
    rle = mask_util.encode(np.asfortranarray(mask))
    polygons = rle_to_polygons({"size": rle["size"], "counts": rle["counts"].decode()})
    assert len(polygons) == 3  # outer square, hole, blob
    outer = max(polygons, key=len)
    xs, ys = outer[0::2], outer[1::2]
    assert (min(xs), max(xs), min(ys), max(ys)) == (10, 30, 5, 25)  # pixel edges


def test_onnx_backend_equals_predictor(model_file: Path, image_file: Path) -> None:
    """`--backend onnx` with a model.pt: exported at start, onnxruntime gives the detections
    of `Predictor`, with the same knobs."""
    pytest.importorskip("onnxruntime")
    from blendmask.serve.backends import Knobs, OnnxBackend

    backend = OnnxBackend(model_file)
    image = np.asarray(Image.open(image_file).convert("RGB"))
    for knobs, options in [
        (Knobs(conf=0.0), {"score_threshold": 0.0}),
        (
            Knobs(conf=0.065, max_det=30, labels=(1, 2)),
            {"score_threshold": 0.065, "max_detections": 30, "classes": [1, 2]},
        ),
    ]:
        predictor = Predictor.from_checkpoint(model_file, device="cpu", **options)
        served = backend.predict(knobs, [image])[0].to_json()
        expected = predictor(image_file)[0].to_json()
        # onnxruntime's kernels are not PyTorch's: boxes within 1e-3 px, scores within 1e-5.
        assert len(served) == len(expected) > 0
        for got, want in zip(served, expected):
            assert np.allclose(got["box"], want["box"], atol=1e-3)
            assert got["score"] == pytest.approx(want["score"], abs=1e-5)
            assert got["label"] == want["label"]
    with pytest.raises(NotImplementedError, match="--backend torch"):
        backend.explain_png(image, top=1, conf=0.0)


def test_without_the_extra_the_command_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, model_file: Path, capsys: pytest.CaptureFixture
) -> None:
    from blendmask.cli.main import main

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed
    assert main(["serve", "--weights", str(model_file)]) == 2
    assert "pip install 'blendmask[serve]'" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(["serve", "--weights", "missing.pt"]) == 2
    assert "missing.pt: model file not found" in capsys.readouterr().err
