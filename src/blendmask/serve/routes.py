"""The routes of `blendmask serve` (see `app.py` for the server they share)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from blendmask.predictor import DEFAULT_SCORE_THRESHOLD
from blendmask.serve.backends import detection_records, overlay_png
from blendmask.structures import Detections

if TYPE_CHECKING:
    from blendmask.serve.app import Server

# The request body of the image endpoints, for the OpenAPI page (the body is read by hand:
# in memory, under the size limit, never spooled to disk).
IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
PNG = {200: {"content": {"image/png": {}}, "description": "a PNG image"}}

Conf = Annotated[
    float, Query(ge=0, le=1, description="keep detections scoring at least this (0: all)")
]
Iou = Annotated[float | None, Query(ge=0, le=1, description="NMS IoU (default: the model's)")]
MaxDet = Annotated[int | None, Query(ge=1, le=10000, description="detections per image after NMS")]
Classes = Annotated[
    str | None,
    Query(description="keep only these classes: names or 0-based labels, comma separated"),
]
Masks = Annotated[Literal["rle", "polygon", "none"], Query(description="mask format")]


def add_routes(app: FastAPI, server: Server) -> None:
    async def predict_one(
        request: Request,
        conf: float | None,
        iou: float | None,
        max_det: int | None,
        classes: str | None,
    ) -> tuple[np.ndarray, Detections, dict[str, float]]:
        """Knobs checked, body read and decoded, detections from the batcher."""
        knobs = server.knobs(conf, iou, max_det, classes)
        image = await server.read_image(request)
        det, timing = await server.detect(knobs, image)
        return image, det, timing

    @app.post("/predict", openapi_extra=IMAGE_BODY, tags=["inference"])
    async def predict(
        request: Request,
        conf: Conf = DEFAULT_SCORE_THRESHOLD,
        iou: Iou = None,
        max_det: MaxDet = None,
        classes: Classes = None,
        masks: Masks = "rle",
    ) -> JSONResponse:
        """Detections of one image: the package's per-detection records, model and timing."""
        start = time.perf_counter()
        async with server.slot():
            image, det, timing = await predict_one(request, conf, iou, max_det, classes)
            records = await run_in_threadpool(detection_records, det, masks)
        height, width = image.shape[:2]
        timing["total_ms"] = (time.perf_counter() - start) * 1000
        body = {
            "model": server.model_info()["name"],
            "image": {"height": int(height), "width": int(width)},
            "detections": records,
            "timing": timing,
        }
        return JSONResponse(body)

    @app.post("/predict/overlay", openapi_extra=IMAGE_BODY, responses=PNG, tags=["inference"])
    async def predict_overlay(
        request: Request,
        conf: Conf = DEFAULT_SCORE_THRESHOLD,
        iou: Iou = None,
        max_det: MaxDet = None,
        classes: Classes = None,
    ) -> Response:
        """The detections drawn over the image (PNG)."""
        async with server.slot():
            image, det, _ = await predict_one(request, conf, iou, max_det, classes)
            png = await run_in_threadpool(overlay_png, image, det)
        return Response(png, media_type="image/png")

    @app.post("/explain", openapi_extra=IMAGE_BODY, responses=PNG, tags=["inference"])
    async def explain(
        request: Request,
        top: Annotated[int, Query(ge=0, le=16, description="detections explained")] = 4,
        conf: Conf = 0.0,
    ) -> Response:
        """Bases, attentions and blended masks of the top detections (PNG)."""
        async with server.slot():
            image = await server.read_image(request)
            png = await run_in_threadpool(server.backend.explain_png, image, top=top, conf=conf)
        return Response(png, media_type="image/png")

    add_service_routes(app, server)

    for route, (data, media_type) in server.pages.items():
        app.add_api_route(
            route, _static(data, media_type), methods=["GET"], include_in_schema=False
        )


def add_service_routes(app: FastAPI, server: Server) -> None:
    """GET /health, /model, /metrics."""

    @app.get("/health", tags=["service"])
    async def health() -> dict[str, Any]:
        """Alive and the model loaded; the queue's depth."""
        return {"status": "ok", "queue_depth": server.batcher.depth, "busy": server.busy}

    @app.get("/model", tags=["service"])
    async def model() -> dict[str, Any]:
        """Preset, classes, input size, precision, version and the serving settings."""
        return server.model_info()

    @app.get("/metrics", tags=["service"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus text: requests, errors, latency histogram, batch sizes, queue depth."""
        return Response(server.metrics.text(), media_type=server.metrics.content_type)


def _static(data: bytes, media_type: str) -> Callable[[], Awaitable[Response]]:
    """A route answering the bytes read at start (no path of the request is looked up)."""

    async def page() -> Response:
        return Response(data, media_type=media_type)

    return page
