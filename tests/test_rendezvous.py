"""What lets torchrun restart a group: each attempt's own store namespace, minute-sized
timeouts, and an output lock that a killed process's forked children do not keep.

If the namespaces were shared, a restarted rank could read a dead worker's address (gloo's
connect refused, or a hang); if the lock stayed with the children, the restarted rank 0 would be
refused its own run folder ("another blendmask process is writing")."""

from __future__ import annotations

import datetime
import subprocess
import sys
import textwrap
import threading

import pytest
import torch.distributed as dist
from helpers.serve import free_port

from blendmask.runtime.output_lock import OutputLock
from blendmask.runtime.rendezvous import TIMEOUT_ENV, attempt_store, process_group_timeout


def test_timeout_defaults_to_minutes_and_follows_the_environment(monkeypatch):
    monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    assert process_group_timeout() == datetime.timedelta(minutes=10)
    monkeypatch.setenv(TIMEOUT_ENV, "2.5")
    assert process_group_timeout() == datetime.timedelta(seconds=150)


@pytest.mark.faults
@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "ten"])
def test_bad_timeout_is_one_clear_error(monkeypatch, value):
    monkeypatch.setenv(TIMEOUT_ENV, value)
    with pytest.raises(ValueError, match=f"{TIMEOUT_ENV}=.*positive number of minutes"):
        process_group_timeout()


def _attempt(world_size: int) -> list[dist.Store]:
    """Every rank's `attempt_store`, each rank in a thread (as in its own process)."""
    stores: list = [None] * world_size
    timeout = datetime.timedelta(seconds=20)

    def join(rank: int) -> None:
        stores[rank] = attempt_store(rank, world_size, timeout)

    # the highest rank first: a stale answer, if any were readable, would be read before
    # rank 0 writes this attempt's
    threads = [threading.Thread(target=join, args=(r,)) for r in reversed(range(world_size))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(s is not None for s in stores)
    return stores


def test_each_attempt_gets_a_namespace_all_its_ranks_share(monkeypatch):
    port = free_port()
    agent = dist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False)
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    first = _attempt(3)
    first[2].set("rank_2_address", "dead worker")  # as gloo's keys of a killed attempt
    second = _attempt(3)
    # the new attempt does not see the old attempt's keys ...
    assert not any(s.check(["rank_2_address"]) for s in second)
    # ... and its ranks see each other's
    second[2].set("rank_2_address", "new worker")
    assert [s.get("rank_2_address") for s in second] == [b"new worker"] * 3
    assert first[0].get("rank_2_address") == b"dead worker"
    del agent


def test_no_namespace_without_the_agents_store(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    assert attempt_store(0, 2, datetime.timedelta(seconds=1)) is None


# Takes OUT/.lock, forks a child that lives on, then dies without releasing anything (SIGKILL
# leaves no chance to): the state a restarted rank 0 meets.
HOLDER = textwrap.dedent(
    """
    import os, sys, time
    from blendmask.runtime.output_lock import OutputLock
    lock = OutputLock(sys.argv[1]).__enter__()
    child = os.fork()
    if child == 0:
        os.close(1), os.close(2)  # the test reads the parent's output to its end
        time.sleep(20)
        os._exit(0)
    print(child, flush=True)
    os._exit(0)
    """
)


@pytest.mark.faults
def test_a_forked_child_does_not_keep_the_output_lock(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", HOLDER, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    child = int(proc.stdout.strip())
    try:
        with OutputLock(tmp_path):  # refused while the child held the parent's lock
            pass
    finally:
        subprocess.run(["kill", str(child)], check=False)
