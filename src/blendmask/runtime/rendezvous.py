"""How the processes of one torchrun attempt find each other, and how long they wait.

Why this exists. torchrun (static or c10d rendezvous) hands its workers the address of a
TCPStore that its agent serves (`TORCHELASTIC_USE_AGENT_STORE=True`) and keeps for the whole
job. `init_process_group("env://")` puts every attempt's keys under the same names there, so
after `--max-restarts` restarts a group whose worker was killed, the new workers can read the
dead workers' addresses: gloo's full-mesh connect was refused (a wasted restart) or hung inside
`init_process_group` for the whole process-group timeout, two hours then. `attempt_store`
gives each attempt a namespace of its own that every rank agrees on, and
`process_group_timeout` bounds every wait (a collective, the connect, this agreement) so that
a peer that died without closing its sockets (a lost node) is noticed in minutes.

The agreement. Restart counts differ between nodes (torchrun counts only its own failures), so
the namespace is a fresh random token of global rank 0. Every other rank writes a fresh nonce
under its rank and waits for rank 0's answer under that nonce; rank 0 answers whatever nonce it
finds (a dead worker's too, harmlessly) until each rank has acknowledged under the token. A
stale key can therefore only hold a nonce nobody waits for: every key that anyone waits on was
first written in this attempt (torchrun stops all workers of an attempt before it starts any of
the next).
"""

from __future__ import annotations

import datetime
import math
import os
import time
import uuid

import torch.distributed as dist

TIMEOUT_ENV = "BLENDMASK_DIST_TIMEOUT_MINUTES"
# Long enough for what one rank does alone while the others wait in a collective (COCOeval of a
# large val set on rank 0, writing last.pt), short enough to notice a lost peer in minutes.
DEFAULT_TIMEOUT_MINUTES = 10.0
_POLL_SECONDS = 0.02


def process_group_timeout() -> datetime.timedelta:
    """The timeout of every collective and of the rendezvous: $BLENDMASK_DIST_TIMEOUT_MINUTES
    (a positive number of minutes) or 10 minutes."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return datetime.timedelta(minutes=DEFAULT_TIMEOUT_MINUTES)
    try:
        minutes = float(text)
    except ValueError:
        minutes = math.nan
    if not (math.isfinite(minutes) and minutes > 0):
        raise ValueError(f"{TIMEOUT_ENV}={text!r}: expected a positive number of minutes")
    return datetime.timedelta(minutes=minutes)


def attempt_store(rank: int, world_size: int, timeout: datetime.timedelta) -> dist.Store | None:
    """A store namespace of this torchrun attempt on the agent's store, or None where the
    workers do not share the agent's store (torch's `env://` then starts a fresh one, hosted by
    rank 0, for every attempt)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    base = dist.TCPStore(
        host_name=os.environ["MASTER_ADDR"],
        port=int(os.environ["MASTER_PORT"]),
        world_size=world_size,
        is_master=False,
        timeout=timeout,
    )
    root = dist.PrefixStore("blendmask/attempts", base)
    if rank == 0:
        token = uuid.uuid4().hex
        _answer_every_rank(root, token, world_size, timeout)
    else:
        nonce = uuid.uuid4().hex
        root.set(f"hello/{rank}", nonce)
        root.wait([f"token/{nonce}"], timeout)
        token = root.get(f"token/{nonce}").decode()
        root.set(f"{token}/ack/{rank}", "1")
    return dist.PrefixStore(f"blendmask/{token}", base)


def _answer_every_rank(
    root: dist.Store, token: str, world_size: int, timeout: datetime.timedelta
) -> None:
    """Rank 0: answer each rank's latest nonce with `token` until every rank acknowledged."""
    deadline = time.monotonic() + timeout.total_seconds()
    pending = set(range(1, world_size))
    answered: dict[int, bytes] = {}
    while pending:
        for r in sorted(pending):
            if root.check([f"{token}/ack/{r}"]):
                pending.discard(r)
            elif root.check([f"hello/{r}"]):
                nonce = root.get(f"hello/{r}")
                if answered.get(r) != nonce:  # a new worker of rank r (or a dead one's key)
                    root.set(f"token/{nonce.decode()}", token)
                    answered[r] = nonce
        if pending and time.monotonic() > deadline:
            raise TimeoutError(
                f"ranks {sorted(pending)} did not join the process group within "
                f"{timeout.total_seconds() / 60:g} minutes ({TIMEOUT_ENV})"
            )
        if pending:
            time.sleep(_POLL_SECONDS)
