"""Training records: a progress bar, `metrics.jsonl`, `curves.png` and optional TensorBoard,
bundled for the loop by `TrainingLog`.

`metrics.jsonl` has one JSON object per line: `{"type": "train", "iteration", "lr",
"images_per_s", "loss", "loss_fcos_cls", ..., "data_seconds"}` at each logging step (losses and
the seconds each iteration waited for its batch, averaged over the steps since the previous line
and over ranks) and `{"type": "eval", "iteration", "bbox_AP",
"segm_AP", ...}` after each evaluation. `plot_curves` turns it into `curves.png`.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from blendmask.atomic import AppendFile, atomic_write, make_folder
from blendmask.runtime import distributed as dist_utils

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
EVAL_SUMMARY_KEYS = ("bbox_AP", "segm_AP", "segm_AP50")

# This module is blendmask.training.logging; `logging` above is the standard library's.
logger = logging.getLogger(__name__)


class MetricsFile:
    """Appends JSON lines to `path` (rank 0 only; other ranks pass `path=None`)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        # Not through a link; a full disk names the file.
        with AppendFile(self.path) as f:
            f.write((json.dumps(record, sort_keys=False) + "\n").encode())

    def truncate_after(self, iteration: int) -> None:
        """Drop lines past `iteration`: a resumed run repeats the steps after the checkpoint,
        and its lines replace those the interrupted run wrote."""
        if self.path is None or not self.path.is_file():
            return
        kept = [r for r in read_metrics(self.path) if r.get("iteration", 0) <= iteration]
        text = "".join(json.dumps(r) + "\n" for r in kept).encode()
        atomic_write(self.path, lambda f: f.write(text))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a `metrics.jsonl`; a torn last line (killed process) is skipped."""
    records = []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class LossAverager:
    """Sums named scalars between two logging steps and returns their means."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.count = 0

    def update(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] += float(v)
        self.count += 1

    def pop(self) -> dict[str, float]:
        means = {k: v / max(self.count, 1) for k, v in self.sums.items()}
        self.sums.clear()
        self.count = 0
        return means


class Progress:
    """A tqdm bar over iterations with ETA, loss terms, lr and images/s (rank 0 only).

    When stderr is not a terminal (CI logs, files) the bar is replaced by one logged line
    (INFO) per logging step, which reads better than carriage-return redraws. Messages go
    through `logging` too (through the bar's `write` while it is drawn), so a program that
    sets the `blendmask` logger to WARNING sees neither bar nor progress lines.
    """

    def __init__(self, *, total: int, start: int, enabled: bool) -> None:
        self.enabled = enabled
        self.total = total
        self.start_time = time.perf_counter()
        self.start = start
        self.interactive = enabled and sys.stderr.isatty() and logger.isEnabledFor(logging.INFO)
        self.bar = (
            tqdm(total=total, initial=start, desc="train", dynamic_ncols=True, file=sys.stderr)
            if self.interactive
            else None
        )
        self.last = start

    def update(self, iteration: int, stats: dict[str, float]) -> None:
        """Report that `iteration` updates are done, with the latest averaged `stats`."""
        if not self.enabled:
            return
        short = {k.removeprefix("loss_"): v for k, v in stats.items()}
        if self.bar is not None:
            self.bar.update(iteration - self.last)
            self.bar.set_postfix({k: _fmt(v) for k, v in short.items()}, refresh=False)
        else:
            elapsed = time.perf_counter() - self.start_time
            done = iteration - self.start
            eta = elapsed / done * (self.total - iteration) if done else float("nan")
            fields = " ".join(f"{k}={_fmt(v)}" for k, v in short.items())
            logger.info(f"[{iteration}/{self.total}] eta {format_seconds(eta)} {fields}")
        self.last = iteration

    def set_total(self, total: int) -> None:
        """A new end iteration (the time budget shrank the schedule)."""
        self.total = total
        if self.bar is not None:
            self.bar.total = total
            self.bar.refresh()

    def write(self, message: str, level: int = logging.INFO) -> None:
        """Log `message` at `level`, above the bar when one is drawn (tqdm's `write`)."""
        if not self.enabled or not logger.isEnabledFor(level):
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            logger.log(level, message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fmt(v: float) -> str:
    if v == 0 or 1e-3 <= abs(v) < 1e4:
        return f"{v:.4g}"
    return f"{v:.2e}"


def format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class TensorBoard:
    """Scalars to TensorBoard when asked for and installed (`pip install tensorboard`)."""

    def __init__(self, log_dir: str | Path | None) -> None:
        self.writer = None
        if log_dir is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.warning("note: --tensorboard needs the tensorboard package; skipping it")
            return
        self.writer = SummaryWriter(str(make_folder(log_dir)))

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def plot_curves(metrics_path: str | Path, out_path: str | Path) -> Path | None:
    """Loss terms (log scale), validation AP and the learning rate against iterations, from
    `metrics.jsonl` (the lr panel shows the warm-up and the steps, so a loss jump can be read
    against the schedule).

    Returns the written path, or None when there is nothing to plot.
    """
    metrics_path = Path(metrics_path)
    if not metrics_path.is_file():
        return None
    records = read_metrics(metrics_path)
    train = [r for r in records if r.get("type") == "train"]
    evals = [r for r in records if r.get("type") == "eval"]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_ap, ax_lr) = plt.subplots(1, 3, figsize=(15, 4))
    loss_keys = sorted({k for r in train for k in r if k.startswith("loss")})
    for key in loss_keys:
        pts = [(r["iteration"], r[key]) for r in train if key in r and r[key] > 0]
        if pts:
            xs, ys = zip(*pts)
            ax_loss.plot(xs, ys, label=key, linewidth=2.0 if key == "loss" else 1.0)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("iteration")
    ax_loss.set_title("training losses")
    if loss_keys:
        ax_loss.legend(fontsize=7)
    for key in ("bbox_AP", "segm_AP", "segm_AP50", "segm_AP75"):
        pts = [(r["iteration"], r[key]) for r in evals if key in r]
        if pts:
            xs, ys = zip(*pts)
            ax_ap.plot(xs, ys, marker="o", label=key)
    ax_ap.set_xlabel("iteration")
    ax_ap.set_ylim(0, 1)
    ax_ap.set_title("validation AP")
    if evals:
        ax_ap.legend(fontsize=7)
    else:
        ax_ap.text(0.5, 0.5, "no evaluation", ha="center", va="center")
    pts = [(r["iteration"], r["lr"]) for r in train if "lr" in r]
    if pts:
        xs, ys = zip(*pts)
        ax_lr.plot(xs, ys, color="tab:purple", marker=".")
    ax_lr.set_xlabel("iteration")
    ax_lr.set_ylabel("lr")
    ax_lr.set_title("learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    fig.tight_layout()
    out_path = Path(out_path)
    try:
        atomic_write(out_path, lambda f: fig.savefig(f, format=_figure_format(out_path), dpi=100))
    finally:
        plt.close(fig)
    return out_path


def _figure_format(path: Path) -> str:
    """matplotlib's format for `path` (its suffix; png without one): saving to a file object,
    it cannot tell from the name."""
    return path.suffix.lstrip(".").lower() or "png"


class TrainingLog:
    """The records of one training run: `metrics.jsonl`, TensorBoard and the progress output
    (rank 0 only), and the losses averaged between logging steps (every rank: the logged
    values are means over ranks).

    A resumed run starts at `start`; the lines past it in `metrics.jsonl` belong to iterations
    that will run again and are dropped.
    """

    def __init__(
        self,
        out_dir: Path,
        *,
        main: bool,
        start: int,
        total: int,
        start_time: float,
        ims_per_batch: int,
        device: torch.device,
        tensorboard: bool = False,
        verbose: bool = True,
    ) -> None:
        self.metrics = MetricsFile(out_dir / METRICS_FILE if main else None)
        if main:
            out_dir.mkdir(parents=True, exist_ok=True)
            self.metrics.truncate_after(start)
        self.board = TensorBoard(out_dir / "tensorboard" if tensorboard and main else None)
        self.progress = Progress(total=total, start=start, enabled=main and verbose)
        self.averager = LossAverager()
        self.start_time = start_time
        self.ims_per_batch = ims_per_batch
        self.device = device
        self.restart_window()

    def restart_window(self) -> None:
        """Images/s counts from here (after an evaluation, which is not training time)."""
        self.window_start, self.window_iters = time.perf_counter(), 0

    def step(self, losses: dict[str, float], data_seconds: float = 0.0) -> None:
        """One update done with these (scalar) losses, after waiting `data_seconds` for its
        batch (logged as `data_seconds`, the mean wait per iteration)."""
        self.averager.update({**losses, "data_seconds": data_seconds})
        self.window_iters += 1

    def log(self, iteration: int, lr: float) -> None:
        """A `train` record of the losses averaged since the last one (a collective call)."""
        elapsed = time.perf_counter() - self.window_start
        stats = dist_utils.reduce_mean(self.averager.pop(), self.device)
        images_per_s = self.window_iters * self.ims_per_batch / max(elapsed, 1e-9)
        record = {
            "type": "train",
            "iteration": iteration,
            "lr": lr,
            "images_per_s": round(images_per_s, 3),
            "seconds": round(time.perf_counter() - self.start_time, 2),
            **{k: round(v, 6) for k, v in stats.items()},
        }
        self.metrics.write(record)
        self.board.scalars("train", {k: v for k, v in record.items() if k != "type"}, iteration)
        shown = {
            "loss": stats.get("loss", math.nan),
            **{k: v for k, v in stats.items() if k.startswith("loss_")},
            "lr": record["lr"],
            "img/s": record["images_per_s"],
        }
        self.progress.update(iteration, shown)
        self.restart_window()

    def evaluation(self, iteration: int, metrics: dict[str, float]) -> None:
        """An `eval` record and a one-line summary (rank 0)."""
        if self.metrics.path is None:
            return
        self.metrics.write({"type": "eval", "iteration": iteration, **metrics})
        self.board.scalars("val", metrics, iteration)
        summary = ", ".join(f"{k}={metrics[k]:.4f}" for k in EVAL_SUMMARY_KEYS if k in metrics)
        self.progress.write(f"iteration {iteration}: {summary}")

    def write(self, message: str, level: int = logging.INFO) -> None:
        self.progress.write(message, level)

    def close(self) -> None:
        self.progress.close()
        self.board.close()
