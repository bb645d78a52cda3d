"""Prometheus metrics of one server process (`GET /metrics`, text exposition format).

prometheus_client does the counting and the text format; each app gets its own registry, so
two apps in one process (tests) do not share counts. With `--workers N` each worker process
counts its own requests: scrape them behind the one port and sum, or run one worker.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Seconds: a tiny model answers in milliseconds, a large one on a CPU in seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServerMetrics:
    """requests / errors by endpoint and status, request latency, batch sizes, queue depth."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, queue_depth: Callable[[], float], max_batch: int) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "blendmask_requests",
            "HTTP requests answered, by endpoint and status code",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "blendmask_errors",
            "HTTP requests answered with a 4xx or 5xx status, by endpoint and status code",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "blendmask_request_latency_seconds",
            "Time from request to response, by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "blendmask_batch_size",
            "Images per inference call (micro-batching)",
            buckets=tuple(range(1, max_batch + 1)),
            registry=self.registry,
        )
        depth = Gauge(
            "blendmask_queue_depth",
            "Requests waiting for a batch",
            registry=self.registry,
        )
        depth.set_function(queue_depth)

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        if status >= 400:
            self.errors.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)
