"""Exact resumption: a run killed (SIGKILL) right after a checkpoint and resumed with
`blendmask train --out DIR` ends with weights bitwise equal to an uninterrupted run.

If this fails, something that decides the next iterations is not in `last.pt` or not restored
(optimiser momentum, the scheduler's iteration, the data order or the augmentation seeds)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

# Slow: trains, kills and resumes runs (`pytest -m "not slow"` leaves it out).
pytestmark = pytest.mark.slow

ITERATIONS = 6
KILL_AFTER = 3

# Runs `train_command`; with a kill iteration it stops (sleeps) right after writing that
# checkpoint, so the parent can SIGKILL it there, mid-run, as a crash would.
CHILD = (
    textwrap.dedent(
        """
    import sys, time
    import torch
    torch.set_num_threads(1)
    from blendmask.training import checkpoint
    from blendmask.training.train import train_command

    out, train_json, train_images, kill_at = sys.argv[1:5]
    kill_at = int(kill_at)
    original = checkpoint.write_training_state

    def save_then_hang(path, payload):
        original(path, payload)
        if payload["iteration"] == kill_at:
            print("CHECKPOINT", payload["iteration"], flush=True)
            time.sleep(600)

    checkpoint.write_training_state = save_then_hang
    train_command(
        out=out, preset="tiny", device="cpu", train_json=train_json, train_images=train_images,
        max_iter=ITERATIONS, seed=7,
        overrides=["solver.checkpoint_period=KILL_AFTER", "solver.steps=[4]",
                   "data.min_size_train=[64,96]", "data.max_size_train=128"],
    )
    """
    )
    .replace("KILL_AFTER", str(KILL_AFTER))
    .replace("ITERATIONS", str(ITERATIONS))
)


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _run_child(tmp_path, out, shapes_dataset, kill_at: int) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    return subprocess.Popen(
        [
            sys.executable,
            str(script),
            str(out),
            str(shapes_dataset["train_json"]),
            str(shapes_dataset["train_images"]),
            str(kill_at),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
    )


def _weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_killed_run_resumes_bitwise(tmp_path, shapes_dataset):
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"

    # The crashed run: killed while it sleeps after checkpoint KILL_AFTER.
    killed = _run_child(tmp_path, killed_dir, shapes_dataset, kill_at=KILL_AFTER)
    # Meanwhile, the uninterrupted reference run (kill_at=-1: never hangs).
    full = _run_child(tmp_path, full_dir, shapes_dataset, kill_at=-1)
    lines = []
    for line in killed.stdout:
        lines.append(line)
        if line.startswith("CHECKPOINT"):
            break
    assert lines and lines[-1].startswith("CHECKPOINT"), "".join(lines)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    assert killed.returncode == -signal.SIGKILL
    full_output = full.communicate(timeout=300)[0]
    assert full.returncode == 0, full_output

    state = torch.load(killed_dir / "last.pt", map_location="cpu", weights_only=True)
    assert state["iteration"] == KILL_AFTER
    assert not (killed_dir / "model.pt").exists()  # it really died mid-run

    # Resume through the command line, with the config stored in last.pt.
    resumed = subprocess.run(
        [sys.executable, "-m", "blendmask", "train", "--out", str(killed_dir), "--device", "cpu"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming from {killed_dir / 'last.pt'} at iteration {KILL_AFTER}" in resumed.stdout

    a, b = _weights(full_dir / "model.pt"), _weights(killed_dir / "model.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # and the weights did change during the resumed part (the comparison is not vacuous)
    at_kill = state["model"]
    assert any(not torch.equal(at_kill[k], b[k]) for k in b if b[k].is_floating_point())

    # metrics.jsonl: one line per iteration, the resumed lines equal the uninterrupted ones
    def train_lines(run_dir):
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return [json.loads(x) for x in lines if json.loads(x)["type"] == "train"]

    full_lines, resumed_lines = train_lines(full_dir), train_lines(killed_dir)
    assert [r["iteration"] for r in resumed_lines] == list(range(1, ITERATIONS + 1))
    for ra, rb in zip(full_lines, resumed_lines):
        assert ra["loss"] == rb["loss"] and ra["lr"] == rb["lr"]
