"""torchrun launches for the tests: one node with N processes, several c10d "nodes" on this
machine, and a worker script that runs blendmask commands and SIGKILLs itself at chosen moments
(to test torchrun's restarts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from helpers.serve import free_port

# Runs `blendmask.cli.main` on each argv of $BLENDMASK_TEST_COMMANDS (a JSON list) in turn.
# $BLENDMASK_TEST_KILLS (JSON: {"ATTEMPT": {"rank": R, "at": WHERE, "n": N}}) makes rank R of
# torchrun attempt ATTEMPT SIGKILL itself: WHERE "iteration" (at the start of training step
# N), "checkpoint" (in the middle of writing its N-th last.pt: the temp file written, not yet
# renamed), "evaluation" (as the N-th evaluation during training starts), "eval" (after its
# N-th image of `blendmask eval`), "predict" (after its N-th batch of `blendmask predict` is
# written).
WORKER = textwrap.dedent(
    """
    import json, os, signal, sys
    import torch
    torch.set_num_threads(1)
    from blendmask.cli import main

    kills = json.loads(os.environ.get("BLENDMASK_TEST_KILLS", "{}"))
    plan = kills.get(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if plan is not None and plan["rank"] == int(os.environ["RANK"]):
        calls = {"n": 0}

        def die_at_nth():
            calls["n"] += 1
            if calls["n"] == plan["n"]:
                print(f"test: killing rank {plan['rank']} at {plan['at']} {plan['n']}", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)

        def wrap(module, name, before=True):
            original = getattr(module, name)

            def wrapped(*args, **kwargs):
                if before:
                    die_at_nth()
                result = original(*args, **kwargs)
                if not before:
                    die_at_nth()
                return result

            setattr(module, name, wrapped)

        if plan["at"] == "iteration":
            from blendmask.training import loop
            wrap(loop, "train_step")
        elif plan["at"] == "checkpoint":
            from blendmask.training import checkpoint
            save = checkpoint.torch.save

            class Torch:  # checkpoint.torch, whose save dies once the bytes are out
                def __getattr__(self, name):
                    return getattr(torch, name)

                def save(self, obj, f, *args, **kwargs):
                    save(obj, f, *args, **kwargs)
                    f.flush()
                    die_at_nth()

            checkpoint.torch = Torch()
        elif plan["at"] == "evaluation":
            from blendmask.training import training_run
            wrap(training_run, "evaluate_model")
        elif plan["at"] == "eval":
            from blendmask.evaluation import evaluate
            original_one = evaluate._predict_images

            def one_by_one(predictor, images, evaluator, batch_size, num_workers):
                process = evaluator.process

                def process_then_die(*args, **kwargs):
                    process(*args, **kwargs)
                    die_at_nth()

                evaluator.process = process_then_die
                return original_one(predictor, images, evaluator, batch_size, num_workers)

            evaluate._predict_images = one_by_one
        elif plan["at"] == "predict":
            from blendmask.prediction import predict_stream
            writer = predict_stream.JsonLinesWriter.write

            def write(self, records):
                writer(self, records)
                if records and "predictions" in self.path.name:
                    die_at_nth()

            predict_stream.JsonLinesWriter.write = write

    for argv in json.loads(os.environ["BLENDMASK_TEST_COMMANDS"]):
        code = main(argv)
        if code:
            sys.exit(code)
    """
)


def write_worker(folder: Path) -> Path:
    path = folder / "torchrun_worker.py"
    path.write_text(WORKER)
    return path


def torchrun_nodes(
    worker: Path,
    commands: list[list[str]],
    *,
    nodes: int = 1,
    procs_per_node: int = 2,
    max_restarts: int = 0,
    kills: dict[str, dict] | None = None,
    timeout: float = 240,
) -> list[subprocess.CompletedProcess]:
    """Run `commands` (blendmask argvs, in turn) in every worker of `nodes` torchrun launches
    of `procs_per_node` processes each, joined by a c10d rendezvous on a free local port (as
    separate machines would be); one completed process per launch."""
    port = free_port()
    base = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes)]
    base += ["--nproc-per-node", str(procs_per_node), "--max-restarts", str(max_restarts)]
    base += ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}"]
    base += ["--rdzv-id", f"test{port}", "--monitor-interval", "0.2", str(worker)]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "BLENDMASK_TEST_COMMANDS": json.dumps(commands),
        "BLENDMASK_TEST_KILLS": json.dumps(kills or {}),
    }
    # Files, not pipes: a launch blocked on a full pipe while another is read would stall both.
    logs = [tempfile.TemporaryFile() for _ in range(nodes)]
    procs = [subprocess.Popen(base, stdout=log, stderr=subprocess.STDOUT, env=env) for log in logs]
    return _wait_all(procs, logs, base, timeout)


def _wait_all(
    procs: list[subprocess.Popen], logs: list, command: list[str], timeout: float
) -> list[subprocess.CompletedProcess]:
    """Each launch's output; on a timeout (or an interrupted test) every launch gets SIGTERM,
    on which torchrun stops its workers (see helpers.processes), then SIGKILL after 30 s."""
    deadline = time.monotonic() + timeout
    done = []
    try:
        for proc, log in zip(procs, logs):
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            log.seek(0)
            text = log.read().decode(errors="replace")
            done.append(subprocess.CompletedProcess(command, proc.returncode, text))
    except BaseException:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        raise
    return done
