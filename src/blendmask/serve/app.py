"""The HTTP API and web page of `blendmask serve` (FastAPI; run by uvicorn, `cli/serve.py`).

POST /predict, /predict/overlay, /explain take an image (multipart file or raw bytes); GET
/health, /model, /metrics; GET / is the web page (package files, no CDN); OpenAPI at /docs.
Every error is `{"error": "<one line>"}` with a 4xx / 5xx status, and the server keeps serving.

Load: image requests hold one of `max_queue + max_batch` slots from before their body is read
until answered, so at most that many uploads are in memory; past it, and past `max_queue`
jobs waiting for a batch, the answer is 503 with Retry-After. No path of a request reaches the
file system: bodies stay in memory and the page's files are read once, at start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from blendmask.serve.backends import Knobs, OnnxBackend, TorchBackend, parse_classes
from blendmask.serve.batching import MicroBatcher, QueueFull
from blendmask.serve.errors import install_error_handlers, internal_error
from blendmask.serve.metrics import ServerMetrics
from blendmask.serve.routes import add_routes
from blendmask.serve.uploads import HTTPError, decode_image, image_bytes, read_limited

logger = logging.getLogger("blendmask.serve")


def package_version() -> str:
    """blendmask's version, from the installed metadata as `blendmask.__version__` (which this
    layer may not import)."""
    try:
        return metadata.version("blendmask")
    except metadata.PackageNotFoundError:
        return "0+unknown"


STATIC_FILES = {"/": "index.html", "/static/app.js": "app.js", "/static/style.css": "style.css"}
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".css": "text/css"}


@dataclass
class ServeSettings:
    """What `blendmask serve` is told (defaults as its flags')."""

    weights: str
    backend: str = "torch"
    device: str = "cpu"
    max_batch: int = 4
    max_queue: int = 16
    max_wait_ms: float = 5.0
    timeout_s: float = 30.0
    max_upload_mb: float = 20.0
    max_pixels: int = 25_000_000
    retry_after_s: int = 1

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def load_backend(settings: ServeSettings) -> TorchBackend | OnnxBackend:
    if not Path(settings.weights).is_file():
        raise FileNotFoundError(f"{settings.weights}: model file not found")
    if settings.backend == "onnx":
        return OnnxBackend(settings.weights)
    if settings.backend != "torch":
        raise ValueError(f"--backend {settings.backend!r}: expected torch or onnx")
    return TorchBackend(settings.weights, settings.device)


class Server:
    """The state behind the routes: backend, batcher, metrics, admission slots."""

    def __init__(self, settings: ServeSettings, backend: TorchBackend | OnnxBackend) -> None:
        self.settings = settings
        self.backend = backend
        self.metrics = ServerMetrics(lambda: self.batcher.depth, settings.max_batch)
        self.batcher = MicroBatcher(
            self._run_batch,
            max_batch=settings.max_batch,
            max_queue=settings.max_queue,
            max_wait_s=settings.max_wait_ms / 1000,
            on_batch=self.metrics.batch_size.observe,
        )
        self.slots = settings.max_queue + settings.max_batch
        self.busy = 0
        self.pages = {route: _read_static(name) for route, name in STATIC_FILES.items()}

    def _run_batch(self, knobs: Knobs, images: list[np.ndarray]) -> list[tuple[Any, float, int]]:
        start = time.perf_counter()
        dets = self.backend.predict(knobs, images)
        seconds = time.perf_counter() - start
        return [(det, seconds, len(images)) for det in dets]

    def busy_error(self, why: str) -> HTTPError:
        headers = {"Retry-After": str(self.settings.retry_after_s)}
        return HTTPError(503, f"server busy: {why}; retry later", headers)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """One of the image-request slots, or 503 at once (nothing read) when all are held."""
        if self.busy >= self.slots:
            raise self.busy_error(f"{self.busy} image requests in progress")
        self.busy += 1
        try:
            yield
        finally:
            self.busy -= 1

    async def read_image(self, request: Request) -> np.ndarray:
        body = await read_limited(
            request.stream(),
            request.headers.get("content-length"),
            self.settings.max_upload_bytes,
        )
        data = image_bytes(body, request.headers.get("content-type"))
        return await run_in_threadpool(decode_image, data, self.settings.max_pixels)

    def knobs(
        self, conf: float | None, iou: float | None, max_det: int | None, classes: str | None
    ) -> Knobs:
        try:
            labels = parse_classes(classes, self.backend.class_names)
            knobs = Knobs(conf, iou, max_det, labels)
            self.backend.variant(knobs)  # a bad setting fails here, before any work is queued
        except ValueError as exc:
            raise HTTPError(400, str(exc).splitlines()[0]) from None
        return knobs

    async def detect(self, knobs: Knobs, image: np.ndarray) -> tuple[Any, dict[str, float]]:
        """Detections of one image through the batcher, and the timing of its batch."""
        start = time.perf_counter()
        try:
            det, seconds, size = await self.batcher.submit(knobs, image, self.settings.timeout_s)
        except QueueFull as exc:
            raise self.busy_error(str(exc)) from None
        except asyncio.TimeoutError:
            raise HTTPError(504, f"no answer within {self.settings.timeout_s:g} s") from None
        total = time.perf_counter() - start
        timing = {"inference_ms": seconds * 1000, "queue_ms": (total - seconds) * 1000}
        return det, {**timing, "batch_size": size}

    def model_info(self) -> dict[str, Any]:
        cfg = self.backend.cfg
        return {
            "name": Path(self.settings.weights).name,
            "preset": cfg.preset,
            "backend": self.backend.name,
            "device": self.settings.device if self.backend.name == "torch" else "cpu",
            "classes": self.backend.class_names,
            "category_ids": list(cfg.data.category_ids),
            "input_size": {"min_size": cfg.data.min_size_test, "max_size": cfg.data.max_size_test},
            "precision": "float32",
            "version": package_version(),
            "settings": {k: v for k, v in asdict(self.settings).items() if k != "weights"},
        }


def _read_static(name: str) -> tuple[bytes, str]:
    data = resources.files("blendmask.serve").joinpath("static", name).read_bytes()
    return data, MEDIA_TYPES[Path(name).suffix]


def create_app(
    settings: ServeSettings, backend: TorchBackend | OnnxBackend | None = None
) -> FastAPI:
    """The app for `settings` (the model loaded now unless `backend` is given)."""
    server = Server(settings, backend or load_backend(settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server.batcher.start()
        yield
        # uvicorn has let the in-flight requests finish; end the inference thread.
        await run_in_threadpool(server.batcher.stop, settings.timeout_s)

    app = FastAPI(
        title="blendmask serve",
        version=package_version(),
        description="BlendMask instance segmentation over HTTP: detections, overlays, "
        'explanations. Errors are {"error": "..."}.',
        lifespan=lifespan,
    )
    app.state.server = server
    install_error_handlers(app)
    app.middleware("http")(_metrics_middleware(server))
    add_routes(app, server)
    return app


def _metrics_middleware(server: Server) -> Callable[..., Any]:
    known = {"/predict", "/predict/overlay", "/explain", "/health", "/model", "/metrics"}

    async def middleware(request: Request, call_next: Callable[..., Any]) -> Response:
        start = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception as exc:  # noqa: BLE001 - answered as a one-line 500, server goes on
            response = internal_error(exc)
        path = request.url.path
        endpoint = path if path in known or path in STATIC_FILES else "other"
        server.metrics.observe(endpoint, response.status_code, time.perf_counter() - start)
        return response

    return middleware
