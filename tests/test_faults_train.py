"""Fault suite, training side: nothing lost, nothing hangs, no silent wrong answer.

A run killed with SIGKILL at random points resumes to the same weights bit for bit; a full
disk, a read-only or misplaced run folder end in one line naming the path and the reason,
with the previous `last.pt` intact and no temp file left; a NaN loss skips the update, a
diverging run stops without overwriting its last good checkpoint, and resuming it with a lower
learning rate takes that rate explicitly (or is refused, naming the keys that differ). Errors
are one line, not a traceback, also from a DataLoader worker. Run alone with
`pytest -m faults`.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from blendmask import atomic
from blendmask.atomic import WriteError, atomic_write, remove_stale_temps
from blendmask.cli import train as cli_train
from blendmask.cli.main import main, one_line
from blendmask.config import from_dict
from blendmask.modeling.losses import BlendMaskCriterion
from blendmask.runtime.output_lock import OutputLock
from blendmask.training.optim import warmup_multistep_factor

pytestmark = pytest.mark.faults

# Small images and no loader processes: a tiny-preset iteration takes a fraction of a second.
FAST = [
    "--preset",
    "tiny",
    "--device",
    "cpu",
    "--seed",
    "7",
    "--set",
    "data.min_size_train=[64,96]",
    "--set",
    "data.max_size_train=128",
    "--set",
    "data.num_workers=0",
]


def train_args(
    out: Path, shapes: dict[str, Path], *extra: str, max_iter: int | None = 2
) -> list[str]:
    iters = [] if max_iter is None else ["--max-iter", str(max_iter)]
    return [
        "train",
        "--out",
        str(out),
        "--train-json",
        str(shapes["train_json"]),
        "--train-images",
        str(shapes["train_images"]),
        *iters,
        *FAST,
        *extra,
    ]


def error_line(err: str) -> str:
    """The one `blendmask train: error:` line of stderr (and no traceback)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err
    return lines[0]


def temp_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(".tmp"))


def iteration_of(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["iteration"])


def all_finite(state: dict[str, torch.Tensor]) -> bool:
    return all(bool(v.isfinite().all()) for v in state.values() if v.is_floating_point())


@pytest.fixture(scope="module")
def two_iterations(tmp_path_factory: pytest.TempPathFactory, shapes_dataset) -> Path:
    """A finished 2-iteration run (last.pt at iteration 2, model.pt); tests copy it."""
    out = tmp_path_factory.mktemp("run") / "two"
    assert main(train_args(out, shapes_dataset)) == 0
    return out


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.pt", "curves.png"))
    return dst


@contextmanager
def small_tmpfs(mount_point: Path, size: int) -> Iterator[Path]:
    """A tmpfs of `size` bytes (root and a `mount` that works only; else the test skips)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a small tmpfs needs root")
    mount_point.mkdir(parents=True)
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)]
    if subprocess.run(cmd, capture_output=True).returncode != 0:
        pytest.skip("mount -t tmpfs is not allowed here")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


# --------------------------------------------------------------------------------------------
# The atomic writer


def test_atomic_write_replaces_the_file_with_usual_permissions(tmp_path):
    target = tmp_path / "sub" / "model.pt"
    atomic_write(target, lambda f: f.write(b"one"))
    atomic_write(target, lambda f: f.write(b"two"))
    assert target.read_bytes() == b"two"
    assert temp_files(target.parent) == []
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def _fails_with(exc: BaseException):
    def write(f) -> None:
        f.write(b"x" * 4096)  # a partial file, as a full disk leaves it
        raise exc

    return write


ENFORCE = (
    "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
    "data/0: file write failed"
)


@pytest.mark.parametrize(
    ("exc", "free", "reason"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), None, "no space left on device"),
        (OSError(errno.EROFS, "Read-only file system"), None, "read-only file system"),
        (PermissionError(errno.EACCES, "Permission denied"), None, "permission denied"),
        (RuntimeError(ENFORCE), 0, "no space left on device"),  # torch.save by name, no errno
    ],
    ids=["ENOSPC", "EROFS", "EACCES", "torch-enforce-fail"],
)
def test_failed_write_names_path_and_reason_and_keeps_the_previous_file(
    tmp_path, monkeypatch, exc, free, reason
):
    target = tmp_path / "last.pt"
    target.write_bytes(b"previous")
    if free is not None:
        usage = shutil.disk_usage(tmp_path)
        monkeypatch.setattr(atomic.shutil, "disk_usage", lambda _: usage._replace(free=free))
    with pytest.raises(WriteError) as info:
        atomic_write(target, _fails_with(exc))
    assert str(info.value) == f"cannot write {target}: {reason}"
    assert target.read_bytes() == b"previous"
    assert temp_files(tmp_path) == []


def test_torch_save_into_a_full_device_reports_no_space(tmp_path, monkeypatch):
    """The real thing where /dev/full exists: torch.save's write fails with ENOSPC."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    target = tmp_path / "model.pt"

    def save_to_dev_full(f) -> None:
        with open("/dev/full", "wb") as full:
            torch.save({"w": torch.zeros(100_000)}, full)

    with pytest.raises(WriteError, match="no space left on device"):
        atomic_write(target, save_to_dev_full)
    assert not target.exists() and temp_files(tmp_path) == []


def test_writing_below_a_file_says_not_a_directory(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file, not a folder")
    with pytest.raises(WriteError) as info:
        atomic_write(blocker / "run" / "last.pt", lambda f: f.write(b"x"))
    assert f"not a directory ({blocker} is a file)" in str(info.value)


def test_stale_temps_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".last.pt.{dead_pid}.k3j_x9ab.tmp"
    old_style = tmp_path / f".last.pt.{dead_pid}.tmp"
    mine = tmp_path / f".last.pt.{os.getpid()}.abcdefgh.tmp"
    other = tmp_path / "notes.tmp"
    for p in (stale, old_style, mine, other):
        p.write_bytes(b"x")
    assert sorted(remove_stale_temps(tmp_path)) == sorted([stale, old_style])
    assert mine.exists() and other.exists()


# --------------------------------------------------------------------------------------------
# One line, not a traceback


class _BadImages(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int):
        try:
            raise OSError("broken data stream when reading image file")
        except OSError as e:
            raise ValueError(f"cannot read image /data/{i:06d}.png: OSError: {e}") from e


def test_dataloader_worker_error_becomes_the_original_message():
    batches = iter(DataLoader(_BadImages(), num_workers=1))
    try:
        next(batches)
    except ValueError as exc:
        # Without its traceback the error no longer keeps the loader (and its worker) alive.
        error = exc.with_traceback(None)
    else:
        pytest.fail("the worker's error was not raised")
    del batches  # stops the worker now rather than in the next test
    assert "Original Traceback" in str(error)  # what torch hands over
    assert one_line(error) == (
        "cannot read image /data/000000.png: OSError: broken data stream when reading image file"
    )


@pytest.mark.parametrize(
    ("exc", "code", "message"),
    [
        (RuntimeError("CUDA error: an illegal memory access\nmore detail"), 1, "CUDA error"),
        (PermissionError(errno.EACCES, "Permission denied", "/runs/x"), 2, "/runs/x: permission"),
        (OSError(errno.EIO, "Input/output error", "/runs/x"), 1, "/runs/x: input/output error"),
        (FloatingPointError("training stopped: the loss was not finite"), 1, "training stopped"),
    ],
    ids=["RuntimeError", "PermissionError", "EIO", "FloatingPointError"],
)
def test_cli_errors_are_one_line_and_debug_reraises(monkeypatch, capsys, exc, code, message):
    def fail(**_):
        raise exc

    monkeypatch.setattr(cli_train, "train_command", fail)
    monkeypatch.delenv("BLENDMASK_DEBUG", raising=False)
    assert main(["train", "--out", "x", "--preset", "tiny"]) == code
    line = error_line(capsys.readouterr().err)
    assert line.startswith(f"blendmask train: error: {message}")
    assert "more detail" not in line
    monkeypatch.setenv("BLENDMASK_DEBUG", "1")
    with pytest.raises(type(exc)):
        main(["train", "--out", "x", "--preset", "tiny"])


def test_corrupt_training_image_in_a_worker_is_one_line_naming_it(tmp_path, shapes_dataset, capsys):
    images = tmp_path / "images"
    shutil.copytree(shapes_dataset["train_images"], images)
    for png in images.glob("*.png"):
        png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    args = train_args(tmp_path / "out", {**shapes_dataset, "train_images": images})
    assert main([*args, "--set", "data.num_workers=1"]) == 2
    line = error_line(capsys.readouterr().err)
    assert re.search(r"\d{6}\.png", line), line
    assert "DataLoader worker" not in line


def test_non_positive_max_iter_is_refused(tmp_path, shapes_dataset, capsys):
    out = tmp_path / "out"
    args = train_args(out, shapes_dataset, "--set", "solver.max_iter=-1", max_iter=None)
    assert main(args) == 2
    assert "solver.max_iter" in error_line(capsys.readouterr().err)
    assert not (out / "model.pt").exists()


# --------------------------------------------------------------------------------------------
# Full disk, read-only and misplaced run folders


@pytest.mark.slow
def test_disk_full_at_a_checkpoint_keeps_the_previous_one(
    tmp_path, two_iterations, shapes_dataset, monkeypatch, capsys
):
    """The writer patched to fail as a full disk does (ENOSPC after a partial write)."""
    out = copy_run(two_iterations, tmp_path / "run")
    real_save = torch.save

    def full_disk_save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "optimizer" in obj:  # last.pt
            f.write(b"x" * 65536)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk_save)
    args = train_args(out, shapes_dataset, "--resume-with-new-settings", max_iter=4)
    assert main([*args, "--set", "solver.checkpoint_period=1"]) == 2
    line = error_line(capsys.readouterr().err)
    assert (
        line == f"blendmask train: error: cannot write {out / 'last.pt'}: no space left on device"
    )
    assert iteration_of(out / "last.pt") == 2
    assert temp_files(out) == []


def test_disk_full_on_a_small_tmpfs(tmp_path, two_iterations, shapes_dataset, capsys):
    """A real full disk: a tmpfs with room for one last.pt and a half."""
    size = (two_iterations / "last.pt").stat().st_size
    with small_tmpfs(tmp_path / "disk", size * 3 // 2) as disk:
        out = copy_run(two_iterations, disk / "run")
        args = train_args(out, shapes_dataset, "--resume-with-new-settings", max_iter=4)
        assert main([*args, "--set", "solver.checkpoint_period=1"]) == 2
        line = error_line(capsys.readouterr().err)
        assert line.endswith(f"cannot write {out / 'last.pt'}: no space left on device"), line
        assert iteration_of(out / "last.pt") == 2
        assert temp_files(out) == []
        assert shutil.disk_usage(disk).free > size // 3  # the partial temp file is gone


def test_read_only_run_folder_fails_at_the_start(
    tmp_path, two_iterations, shapes_dataset, monkeypatch, capsys
):
    out = copy_run(two_iterations, tmp_path / "run")
    before = (out / "last.pt").read_bytes()
    out.chmod(0o555)
    try:
        probe = out / "probe"
        try:
            probe.write_bytes(b"")  # root ignores the mode: fail the writer as the kernel would
            probe.unlink()

            def denied(*args, **kwargs):
                raise PermissionError(errno.EACCES, "Permission denied")

            monkeypatch.setattr(tempfile, "mkstemp", denied)
        except PermissionError:
            pass
        args = train_args(out, shapes_dataset, "--resume-with-new-settings", max_iter=4)
        assert main(args) == 2
    finally:
        out.chmod(0o755)
    line = error_line(capsys.readouterr().err)
    assert line == f"blendmask train: error: cannot write {out}: permission denied"
    assert (out / "last.pt").read_bytes() == before
    assert temp_files(out) == []


def test_out_below_a_file_says_not_a_directory(tmp_path, shapes_dataset, capsys):
    blocker = tmp_path / "runs"
    blocker.write_text("a file")
    assert main(train_args(blocker / "a", shapes_dataset)) == 2
    line = error_line(capsys.readouterr().err)
    assert line.endswith(f"not a directory ({blocker} is a file)"), line


# --------------------------------------------------------------------------------------------
# Non-finite losses, and resuming with other settings


@pytest.mark.slow
@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_one_nonfinite_step_is_skipped_and_training_goes_on(
    tmp_path, shapes_dataset, monkeypatch, capsys, where
):
    calls = {"n": 0}
    forward = BlendMaskCriterion.forward

    def nan_once(self, *args, **kwargs):
        losses = forward(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            if where == "loss":
                losses["loss_mask"] = losses["loss_mask"] * float("nan")
            else:  # a finite loss (0 * sqrt(0)) whose gradient is not (0 / 0)
                x = losses["loss_mask"]
                losses["loss_mask"] = x + 0 * torch.sqrt(x - x)
        return losses

    monkeypatch.setattr(BlendMaskCriterion, "forward", nan_once)
    out = tmp_path / "run"
    assert main(train_args(out, shapes_dataset, max_iter=4)) == 0
    what = "loss_mask=nan" if where == "loss" else "gradient norm"
    assert f"iteration 3: non-finite {what}; update skipped (1 in a row)" in capsys.readouterr().out
    assert all_finite(torch.load(out / "model.pt", weights_only=True)["model"])
    assert iteration_of(out / "last.pt") == 4


@pytest.mark.slow
def test_diverging_run_keeps_its_last_good_checkpoint_and_resumes_with_a_lower_lr(
    tmp_path, shapes_dataset, capsys
):
    """lr 1000: the loss is NaN from iteration 3 on. The checkpoint of iteration 2 holds the
    weights that NaN came from, so it is never written; last.pt stays at iteration 1."""
    out = tmp_path / "run"
    args = train_args(out, shapes_dataset, "--set", "solver.checkpoint_period=1", max_iter=8)
    assert main([*args, "--lr", "1000"]) == 1
    captured = capsys.readouterr()
    assert "update skipped (1 in a row)" in captured.out
    line = error_line(captured.err)
    assert "not finite for 5 iterations in a row (3-7" in line, line
    assert f"{out / 'last.pt'} (iteration 1) holds the last finite weights" in line
    assert "--resume-with-new-settings" in line
    saved = torch.load(out / "last.pt", weights_only=True)
    assert saved["iteration"] == 1 and all_finite(saved["model"])
    assert not (out / "model.pt").exists() and temp_files(out) == []

    # Another lr and max_iter: refused, naming both keys. (The checkpoint period may differ:
    # it does not change the weights.)
    lower = [*args[:-2], "--max-iter", "6", "--lr", "0.01", "--set", "solver.checkpoint_period=6"]
    assert main(lower) == 2
    line = error_line(capsys.readouterr().err)
    assert "solver.base_lr: 1000.0 (checkpoint) -> 0.01 (now)" in line
    assert "solver.max_iter: 8 (checkpoint) -> 6 (now)" in line
    assert iteration_of(out / "last.pt") == 1

    # ... and taken explicitly with the flag.
    assert main([*lower, "--resume-with-new-settings"]) == 0
    assert "with new settings: solver.base_lr: 1000.0 (checkpoint) -> 0.01 (now)" in (
        capsys.readouterr().out
    )
    saved = torch.load(out / "last.pt", weights_only=True)
    assert saved["iteration"] == 6 and all_finite(saved["model"])
    assert {g["initial_lr"] for g in saved["optimizer"]["param_groups"]} == {0.01}
    assert set(saved["scheduler"]["base_lrs"]) == {0.01}
    s = saved["config"]["solver"]
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    lr_at_2 = next(r["lr"] for r in records if r["type"] == "train" and r["iteration"] == 2)
    expected = 0.01 * warmup_multistep_factor(
        1,
        steps=s["steps"],
        gamma=s["gamma"],
        warmup_iters=s["warmup_iters"],
        warmup_factor=s["warmup_factor"],
    )
    assert lr_at_2 == pytest.approx(expected, rel=1e-12)


def test_resuming_another_model_is_refused(tmp_path, two_iterations, shapes_dataset, capsys):
    out = copy_run(two_iterations, tmp_path / "run")
    args = train_args(out, shapes_dataset, "--set", "model.basis_module.num_bases=2")
    assert main(args) == 2
    line = error_line(capsys.readouterr().err)
    assert "another model or data" in line
    assert "model.basis_module.num_bases: 4 (checkpoint) -> 2 (now)" in line
    assert iteration_of(out / "last.pt") == 2


# --------------------------------------------------------------------------------------------
# SIGKILL at random points


def _command(out: Path, shapes: dict[str, Path]) -> list[str]:
    args = train_args(out, shapes, "--set", "solver.checkpoint_period=1", max_iter=6)
    return [sys.executable, "-m", "blendmask", *args]


@pytest.mark.slow
def test_killed_at_random_points_resumes_bitwise(tmp_path, shapes_dataset):
    """SIGKILL three times at random moments (mid-iteration, mid-checkpoint-write), resume
    each time: the weights equal an uninterrupted run's, and no temp file is left."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    ref_dir, out = tmp_path / "reference", tmp_path / "killed"
    reference = subprocess.Popen(
        _command(ref_dir, shapes_dataset),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    rng = random.Random(20240611)
    kills = 0
    for target in sorted(rng.sample(range(1, 6), 3)):
        proc = subprocess.Popen(
            _command(out, shapes_dataset),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            match = re.match(r"\[(\d+)/", line)
            if match and int(match[1]) >= target:
                break
        time.sleep(rng.uniform(0.0, 0.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
    assert kills >= 2
    final = subprocess.run(
        _command(out, shapes_dataset), capture_output=True, text=True, env=env, timeout=300
    )
    assert final.returncode == 0, final.stdout + final.stderr
    assert reference.wait(timeout=300) == 0, reference.stderr.read() if reference.stderr else ""
    a = torch.load(ref_dir / "model.pt", weights_only=True)["model"]
    b = torch.load(out / "model.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert temp_files(out) == []


def test_a_second_run_into_the_same_folder_is_refused(tmp_path, shapes_dataset, capsys):
    out = tmp_path / "run"
    with OutputLock(out):  # another `blendmask train --out run`, still running
        assert main(train_args(out, shapes_dataset)) == 2
    assert "another blendmask process is writing" in error_line(capsys.readouterr().err)
    assert not (out / "last.pt").exists()


def test_non_finite_weights_are_never_written(tmp_path):
    from blendmask.checkpoint_io import save_model_file
    from blendmask.presets import get_preset
    from blendmask.training import checkpoint as ckpt

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    kwargs = dict(model=model, optimizer=optimizer, scheduler=scheduler, scaler=None, config={})
    path = tmp_path / "last.pt"
    ckpt.save_training_state(path, iteration=1, **kwargs)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"last.pt: not written: non-finite .* weight"):
        ckpt.save_training_state(path, iteration=2, **kwargs)
    assert iteration_of(path) == 1
    with pytest.raises(FloatingPointError, match="model.pt: not written"):
        save_model_file(tmp_path / "model.pt", get_preset("tiny"), model)
    assert not (tmp_path / "model.pt").exists() and temp_files(tmp_path) == []


def test_new_max_iter_before_the_saved_iteration_is_refused(
    tmp_path, two_iterations, shapes_dataset, capsys
):
    out = copy_run(two_iterations, tmp_path / "run")
    args = train_args(out, shapes_dataset, "--resume-with-new-settings", max_iter=1)
    assert main(args) == 2
    line = error_line(capsys.readouterr().err)
    assert "solver.max_iter=1 but the run is already at iteration 2" in line


def test_settings_that_do_not_change_the_weights_may_differ(two_iterations):
    from blendmask.training.resume import config_differences

    saved = torch.load(two_iterations / "last.pt", weights_only=True)["config"]
    cfg = from_dict(saved)
    cfg.data.num_workers, cfg.solver.log_period, cfg.solver.checkpoint_period = 3, 7, 9
    cfg.data.train_json = os.path.relpath(cfg.data.train_json)  # the same file, spelt otherwise
    assert config_differences(saved, cfg) == []
    cfg.solver.momentum = 0.5
    assert config_differences(saved, cfg) == [("solver.momentum", 0.9, 0.5)]


def test_test_size_is_free_on_resume_only_when_the_crops_do_not_read_it(two_iterations):
    """`data.min_size_test` sets the scale of `RandomScaledCrop`'s crops, so with crops a
    change alters the training data and must be refused; with the reference resize it only
    changes the periodic evaluations."""
    from blendmask.training.resume import config_differences

    saved = torch.load(two_iterations / "last.pt", weights_only=True)["config"]
    assert saved["data"]["crop_size"] == 0
    cfg = from_dict(saved)
    cfg.data.min_size_test, cfg.data.max_size_test = 17, 33
    assert config_differences(saved, cfg) == []
    cropped = from_dict(saved)
    cropped.data.crop_size = 64
    saved_cropped = cropped.to_dict()
    cropped.data.min_size_test = saved["data"]["min_size_test"] + 8
    assert config_differences(saved_cropped, cropped) == [
        ("data.min_size_test", saved["data"]["min_size_test"], cropped.data.min_size_test)
    ]
