"""Micro-batching: requests that arrive within a few milliseconds of each other run as one
batch of up to `max_batch` images, on one inference thread.

The event loop only queues work and awaits its future, so health checks, metrics and 503s are
answered while a batch runs. The queue is bounded: past `max_queue` waiting jobs `submit`
raises `QueueFull` (the server answers 503 + Retry-After) instead of queueing without bound.
A job whose caller gave up (timeout, disconnect) is cancelled and skipped if not yet started.
`stop()` lets the jobs already queued finish, then ends the thread (clean shutdown).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any


class QueueFull(Exception):
    """`max_queue` jobs are already waiting."""


@dataclass
class Job:
    """One image's work: `key` groups the jobs that may run in one call (same settings)."""

    key: Hashable
    payload: Any
    future: Future = field(default_factory=Future)


# run(key, payloads) -> one result per payload, in order.
RunBatch = Callable[[Hashable, Sequence[Any]], Sequence[Any]]
_STOP = object()


class MicroBatcher:
    """Collects jobs for up to `max_wait_s` after the first one (or until `max_batch`), groups
    them by key and calls `run` once per group on its own thread.

    `on_batch(size)` is called with the size of every call of `run` (metrics)."""

    def __init__(
        self,
        run: RunBatch,
        *,
        max_batch: int = 4,
        max_queue: int = 16,
        max_wait_s: float = 0.005,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 1:
            raise ValueError(f"max_batch and max_queue must be >= 1, got {max_batch}, {max_queue}")
        self.run = run
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.max_wait_s = max_wait_s
        self.on_batch = on_batch
        self._queue: queue.Queue[Any] = queue.Queue()
        self._lock = threading.Lock()
        self._waiting = 0
        self._thread = threading.Thread(target=self._loop, name="blendmask-batcher", daemon=True)
        self._stopping = False

    @property
    def depth(self) -> int:
        """Jobs waiting for a batch (not counting the batch running)."""
        return self._waiting

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new jobs, finish the queued ones, end the thread."""
        with self._lock:
            self._stopping = True
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def submit_nowait(self, key: Hashable, payload: Any) -> Future:
        """Queue one job; QueueFull past `max_queue` waiting jobs (or while stopping)."""
        job = Job(key, payload)
        with self._lock:
            if self._stopping or self._waiting >= self.max_queue:
                raise QueueFull(f"{self._waiting} requests waiting (--max-queue {self.max_queue})")
            self._waiting += 1
        self._queue.put(job)
        return job.future

    async def submit(self, key: Hashable, payload: Any, timeout: float | None = None) -> Any:
        """Queue one job and await its result; asyncio.TimeoutError after `timeout` seconds
        (the job is then cancelled unless it already runs)."""
        future = self.submit_nowait(key, payload)
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout)

    def _take(self) -> tuple[list[Job], bool]:
        """The next batch: the first job (waited for), then whatever arrives within
        `max_wait_s` up to `max_batch`; and whether the stop mark was reached."""
        first = self._queue.get()
        if first is _STOP:
            return [], True
        jobs = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(jobs) < self.max_batch:
            try:
                job = self._queue.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                break
            if job is _STOP:
                return jobs, True
            jobs.append(job)
        return jobs, False

    def _loop(self) -> None:
        stop = False
        while not stop:
            jobs, stop = self._take()
            with self._lock:
                self._waiting -= len(jobs)
            # A cancelled job (its caller timed out) is dropped here; the others now run.
            live = [job for job in jobs if job.future.set_running_or_notify_cancel()]
            groups: dict[Hashable, list[Job]] = {}
            for job in live:
                groups.setdefault(job.key, []).append(job)
            for key, group in groups.items():
                self._run_group(key, group)

    def _run_group(self, key: Hashable, group: list[Job]) -> None:
        if self.on_batch is not None:
            self.on_batch(len(group))
        try:
            results = self.run(key, [job.payload for job in group])
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting caller
            for job in group:
                job.future.set_exception(exc)
            return
        for job, result in zip(group, results):
            job.future.set_result(result)
