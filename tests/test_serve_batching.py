"""The micro-batcher in-process: batches up to max_batch, groups by key, a bounded queue, and
a timed-out job cancelled before it runs."""

from __future__ import annotations

import asyncio
import threading

import pytest

pytest.importorskip("fastapi")

from blendmask.serve.batching import MicroBatcher, QueueFull  # noqa: E402


def test_batches_up_to_max_batch_grouped_by_key() -> None:
    calls: list[tuple[str, list[int]]] = []

    def run(key, payloads):  # noqa: ANN001, ANN202
        calls.append((key, list(payloads)))
        return [p * 10 for p in payloads]

    batcher = MicroBatcher(run, max_batch=4, max_queue=8, max_wait_s=0.05)
    # Queued before the thread starts: they are all waiting when it takes its first batch.
    futures = [batcher.submit_nowait("a" if i != 2 else "b", i) for i in range(6)]
    batcher.start()
    assert [f.result(timeout=10) for f in futures] == [0, 10, 20, 30, 40, 50]
    batcher.stop(timeout=10)
    # First batch: jobs 0-3 (4 = max_batch), run as key "a" (0, 1, 3) and key "b" (2).
    assert calls[:2] == [("a", [0, 1, 3]), ("b", [2])] and calls[2] == ("a", [4, 5])


def test_queue_is_bounded_and_stop_finishes_queued_jobs() -> None:
    batcher = MicroBatcher(lambda key, payloads: payloads, max_batch=1, max_queue=2)
    first, second = batcher.submit_nowait(0, 1), batcher.submit_nowait(0, 2)
    with pytest.raises(QueueFull):
        batcher.submit_nowait(0, 3)
    assert batcher.depth == 2
    batcher.start()
    batcher.stop(timeout=10)
    assert (first.result(0), second.result(0)) == (1, 2)
    with pytest.raises(QueueFull):  # stopped: no new work
        batcher.submit_nowait(0, 4)


def test_timed_out_job_is_cancelled_and_skipped() -> None:
    release = threading.Event()
    ran: list[int] = []

    def run(key, payloads):  # noqa: ANN001, ANN202
        release.wait(10)
        ran.extend(payloads)
        return payloads

    batcher = MicroBatcher(run, max_batch=1, max_queue=4, max_wait_s=0.0)
    batcher.start()
    blocker = batcher.submit_nowait(0, 1)  # occupies the thread until released

    async def late() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await batcher.submit(0, 2, timeout=0.05)

    asyncio.run(late())
    release.set()
    assert blocker.result(10) == 1
    batcher.stop(timeout=10)
    assert ran == [1]  # job 2 gave up before its turn and never ran


def test_errors_reach_every_caller_of_the_batch() -> None:
    def run(key, payloads):  # noqa: ANN001, ANN202
        raise ValueError("boom")

    batcher = MicroBatcher(run, max_batch=2, max_queue=4)
    futures = [batcher.submit_nowait(0, i) for i in range(2)]
    batcher.start()
    for future in futures:
        with pytest.raises(ValueError, match="boom"):
            future.result(10)
    batcher.stop(timeout=10)
