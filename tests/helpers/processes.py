"""Child processes that clean up after themselves."""

from __future__ import annotations

import os
import subprocess


def run_in_session(command: list[str], timeout: float) -> subprocess.CompletedProcess:
    """`command` (a torchrun) with one thread per process. When it times out or the test is
    interrupted, torchrun gets SIGTERM, on which it stops its workers (each runs in a session
    of its own, out of reach of a kill of torchrun's process group; a SIGKILLed torchrun
    leaves them waiting for it forever), then SIGKILL after 30 s."""
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except BaseException:
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()  # not communicate: a surviving worker may hold the pipes open
        raise
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)
