"""The paper's ablations (BlendMask Sec. 4.2, Tables 1, 2, 3, 5, 6) at a small, fixed budget.

Every row is a real training run of the package's own loop (`training.loop.run_training`, the
code behind `blendmask train`), from the same preset with the same schedule, data and seeds;
only the blender's knobs differ (`--set` overrides of `model.blender.*` and
`model.basis_module.num_bases`). After training, each run is evaluated on the val set (COCO
mask / box AP), timed per image (the Predictor's path, one thread, median over the val
images) and its attentions are measured for instance specificity
(`blendmask.metrics.attention`). docs/ablations.md explains the budget and the results.

Resumable: each finished (dataset, configuration, seed) is a record in the results json and is
not run again; a run killed half-way continues from its `last.pt` (`run_training` resumes).
Several workers (`--jobs`) share the list: each claims a run with a claim file in its run
folder (a claim whose process is gone is taken over) and adds its record under a file lock.

    nice -n 19 .venv/bin/python benchmarks/ablations.py --jobs 2          # train what is missing
    .venv/bin/python benchmarks/ablations.py --report-only                 # tables + plot only
    .venv/bin/python benchmarks/ablations.py --only shapes/base --seeds 0  # one run

Writes benchmarks/results/ablations.json, the tables into docs/ablations.md (between the
`ablations:begin` / `ablations:end` markers) and docs/images/ablations_ap_vs_m.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablations_measure import TIMED_IMAGES, TOP_PER_IMAGE, measure_specificity, time_per_image  # noqa: E402
from ablations_store import RESULTS, add_record, claim, locked, read_results, write_results  # noqa: E402
from common import DEFAULT_NUCLEI, NUCLEI_VARIABLE, REPO, machine_info  # noqa: E402

WORK = REPO / "runs" / "ablations"
NUCLEI = Path(os.environ.get(NUCLEI_VARIABLE, DEFAULT_NUCLEI))
SHAPES_SIZES = {"train": 400, "val": 40, "seed": 0, "image_size": 192}
# Same budget for every configuration of a data set. 150 shapes iterations (the first budget)
# left one blender seed on the detector's early plateau (mask AP 6 against 25 for the other
# seed), so the list runs twice as long: ~2 CPU minutes a shapes run, ~5 a nuclei run, about
# 100 minutes of one core for the whole list (docs/ablations.md, "Budget").
BUDGET = {
    "shapes": {
        "preset": "shapes_lite0",
        "size": 192,
        "iterations": 300,
        "batch": 4,
        "lr": 0.01,
        "lr_steps": [240],
        "warmup": 20,
    },
    # Nuclei keep the preset's scale (every image 3x, 384 px training crops): at 1x a nucleus covers
    # one or two stride-8 locations and every configuration's AP is noise.
    "nuclei": {
        "preset": "nuclei_lite0",
        "iterations": 300,
        "batch": 2,
        "lr": 0.005,
        "lr_steps": [240],
        "warmup": 20,
    },
}


@dataclass(frozen=True)
class Ablation:
    """One configuration: a name (`dataset/name` is its key) and its `--set` overrides."""

    dataset: str
    name: str
    overrides: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.name}"


def _blender(m: int, r: int, *extra: str) -> tuple[str, ...]:
    return (f"model.blender.attn_size={m}", f"model.blender.bottom_resolution={r}", *extra)


# The FCIS assembler (Table 1): K = M*M bases, fixed one-hot position-sensitive attention,
# nearest interpolation (blender.py forces nearest for fixed one-hot; set here for clarity).
FCIS = _blender(
    4,
    28,
    "model.basis_module.num_bases=16",
    "model.blender.fixed_onehot_attention=true",
    "model.blender.top_interp=nearest",
)


def ablations() -> list[Ablation]:
    """Every configuration, the most important first (a short run still fills Table 1).

    The baseline `base` is the shapes_lite0 blender: K = 4, M = 7, R = 28, bilinear top
    interpolation, RoIAlign bottom pooling. `M1_R28` (one scalar per base) is YOLACT's
    weighted sum of Table 1. K = 1 uses a sigmoid on both sides (blender.py), as in the paper.
    `K16` and `fcis_learned` are not in the paper: they take the assembler apart.
    """
    shapes = [
        Ablation("shapes", "base"),
        Ablation("shapes", "M1_R28", _blender(1, 28)),
        Ablation("shapes", "fcis", FCIS),
    ]
    nuclei = [Ablation("nuclei", a.name, a.overrides) for a in shapes]
    grid = [
        Ablation("shapes", f"M{m}_R{r}", _blender(m, r))
        for r in (28, 56)
        for m in (1, 2, 4, 7, 14)
        if (m, r) not in ((7, 28), (1, 28))
    ]
    bases = [Ablation("shapes", f"K{k}", (f"model.basis_module.num_bases={k}",)) for k in (1, 2, 8)]
    interp = [
        Ablation("shapes", "top_nearest", ("model.blender.top_interp=nearest",)),
        Ablation("shapes", "pool_nearest", ("model.blender.pooler_type=ROIPool",)),
    ]
    # FCIS minus one thing at a time (Table 1's assembler beat the blender on shapes): the
    # blender with the assembler's 16 bases, and the assembler with learned attention.
    fcis_parts = [
        Ablation("shapes", "K16", ("model.basis_module.num_bases=16",)),
        Ablation("shapes", "fcis_learned", tuple(o for o in FCIS if "fixed_onehot" not in o)),
    ]
    return shapes + nuclei + grid + bases + interp + fcis_parts


def config_overrides(
    ablation: Ablation, seed: int, data: dict[str, str], budget: dict[str, Any] | None = None
) -> list[str]:
    """The full `--set` list of a run: the budget (default `BUDGET[dataset]`), the data, the
    seed, then the ablation."""
    b = BUDGET[ablation.dataset] if budget is None else budget
    size = b.get("size")
    sizes = []
    if size:
        sizes = [
            f"data.min_size_train=[{size}]",
            f"data.max_size_train={2 * size}",
            f"data.min_size_test={size}",
            f"data.max_size_test={2 * size}",
        ]
    return [
        *sizes,
        f"solver.max_iter={b['iterations']}",
        f"solver.steps={b['lr_steps']}",
        f"solver.warmup_iters={b['warmup']}",
        f"solver.ims_per_batch={b['batch']}",
        f"solver.base_lr={b['lr']}",  # the preset's rate scaled linearly to the batch
        "solver.clip_grad_norm=10",  # as nuclei_lite0: single-batch gradient spikes
        "solver.eval_period=0",
        "solver.checkpoint_period=50",
        f"solver.log_period={b['iterations']}",
        f"solver.seed={seed}",
        *(f"data.{k}={v}" for k, v in data.items()),
        *ablation.overrides,
    ]


def dataset_paths(dataset: str) -> dict[str, str]:
    if dataset == "nuclei":
        ann, images = NUCLEI / "annotations", NUCLEI / "images"
        if not ann.is_dir():
            raise FileNotFoundError(f"{NUCLEI}: the DSB2018 nuclei set is missing")
    else:
        from blendmask.data.shapes import write_shapes_dataset

        root = WORK / "shapes_data"
        ann, images = root / "annotations", root / "images"
        if not (ann / "instances_val.json").is_file():
            s = SHAPES_SIZES
            write_shapes_dataset(
                root, s["train"], s["val"], seed=s["seed"], image_size=s["image_size"]
            )
    return {
        "train_json": str(ann / "instances_train.json"),
        "train_images": str(images / "train"),
        "val_json": str(ann / "instances_val.json"),
        "val_images": str(images / "val"),
    }


def train_command(ablation: Ablation, overrides: list[str], out: Path) -> str:
    """The `blendmask train` command line equivalent to the run (for the record)."""
    sets = " ".join(f"--set {o}" for o in overrides)
    return f"blendmask train --preset {BUDGET[ablation.dataset]['preset']} {sets} --out {out}"


def run_one(
    ablation: Ablation, seed: int, budget: dict[str, Any] | None = None, work: Path = WORK
) -> dict[str, Any]:
    """Train, evaluate, time and measure one (configuration, seed) under `budget` (default
    `BUDGET[dataset]`) in `work`/dataset/name/seedN; returns its record."""
    from blendmask.data.coco import CocoDataset
    from blendmask.predictor import Predictor
    from blendmask.presets import load_config
    from blendmask.training.loaders import build_train_dataset
    from blendmask.training.loop import run_training
    from blendmask.training.train_config import resolve_dataset_classes

    data = dataset_paths(ablation.dataset)
    overrides = config_overrides(ablation, seed, data, budget)
    out = work / ablation.dataset / ablation.name / f"seed{seed}"
    cfg = load_config(BUDGET[ablation.dataset]["preset"], None, overrides)
    dataset = build_train_dataset(cfg)
    cfg = resolve_dataset_classes(cfg, dataset, quiet=True)
    result = run_training(cfg, out_dir=out, dataset=dataset, device="cpu", verbose=False)
    predictor = Predictor(result.cfg, result.model, result.postprocessor, "cpu")
    val = CocoDataset(data["val_json"], data["val_images"])
    images = [val[i][0] for i in range(len(val))]
    return {
        "dataset": ablation.dataset,
        "name": ablation.name,
        "seed": seed,
        "overrides": list(ablation.overrides),
        "command": train_command(ablation, overrides, out),
        "iterations": result.iteration,
        "train_seconds": round(result.seconds, 1),
        "metrics": {k: v for k, v in result.metrics.items() if k.startswith(("bbox_", "segm_"))},
        "cpu_ms_per_image": round(1000 * time_per_image(predictor, images[:TIMED_IMAGES]), 2),
        "timed_images": min(TIMED_IMAGES, len(images)),
        "specificity": measure_specificity(predictor, images, TOP_PER_IMAGE[ablation.dataset]),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


# --- bookkeeping: the results json, claims, workers ----------------------------------------------


def run_key(ablation: Ablation, seed: int) -> str:
    return f"{ablation.key}/seed{seed}"


def worker(plan: list[tuple[Ablation, int]], deadline: float | None) -> None:
    """Run every planned (configuration, seed) that is neither recorded nor claimed."""
    for ablation, seed in plan:
        if deadline is not None and time.time() > deadline:
            logging.warning("ablations: deadline reached; the rest stays for the next call")
            return
        key = run_key(ablation, seed)
        folder = WORK / ablation.dataset / ablation.name / f"seed{seed}"
        if key in read_results()["runs"] or not claim(folder):
            continue
        try:
            if key in read_results()["runs"]:
                continue
            start = time.time()
            record = run_one(ablation, seed)
            record["wall_seconds"] = round(time.time() - start, 1)
            add_record(key, record, budget_record())
            m = record["metrics"]
            print(
                f"{key}: mask AP {m['segm_AP']:.3f} box AP {m['bbox_AP']:.3f} "
                f"({record['wall_seconds']:.0f} s)",
                flush=True,
            )
        finally:
            (folder / "claim").unlink(missing_ok=True)


def budget_record() -> dict[str, Any]:
    """The budget as the results json records it (json round trip: tuples become lists)."""
    return json.loads(json.dumps({"shapes_data": SHAPES_SIZES, **BUDGET, "threads": 1}))


def check_budget() -> None:
    """Refuse to mix rows of two budgets in one results json."""
    recorded = read_results().get("budget")
    if recorded is not None and recorded != budget_record():
        raise SystemExit(
            f"{RESULTS}: its runs were trained under another budget ({recorded}); move it "
            "away (and runs/ablations/{shapes,nuclei}) to start the list under the current one"
        )


def plan_runs(seeds: list[int], only: list[str]) -> list[tuple[Ablation, int]]:
    """The runs in the order that fills the must-have rows first, should time run out:
    Table 1 on shapes with two seeds (which also measures the seed-to-seed spread), Table 1
    on nuclei with one, every other configuration with one, then the other seeds."""
    chosen = [a for a in ablations() if not only or a.key in only]
    unknown = set(only) - {a.key for a in ablations()}
    if unknown:
        raise ValueError(f"--only: unknown configurations {sorted(unknown)}")
    table1 = {"shapes/base", "shapes/M1_R28", "shapes/fcis"}

    def tier(a: Ablation, rank: int) -> int:
        if a.key in table1 and rank < 2:
            return 0
        if rank == 0:
            return 1 if a.dataset == "nuclei" else 2
        return 3 if a.dataset == "nuclei" else 4

    runs = [
        (tier(a, rank), rank, i, a, s) for rank, s in enumerate(seeds) for i, a in enumerate(chosen)
    ]
    return [(a, s) for *_, a, s in sorted(runs, key=lambda run: run[:3])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--only", nargs="*", default=[], help="dataset/name keys")
    parser.add_argument("--jobs", type=int, default=1, help="parallel runs (1 thread each)")
    parser.add_argument("--deadline", help="start no run after this time, HH:MM (local)")
    parser.add_argument("--report-only", action="store_true", help="no training")
    parser.add_argument("--no-figures", action="store_true", help="no demo model / explain figures")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torch.set_num_threads(1)
    plan = plan_runs(args.seeds, args.only)
    deadline = _deadline(args.deadline)
    if not args.report_only:
        check_budget()
        if args.worker or args.jobs == 1:
            worker(plan, deadline)
        else:
            _spawn_workers(args.jobs, argv if argv is not None else sys.argv[1:])
    if args.worker:
        return 0
    from ablations_figures import write_figures
    from ablations_report import write_report

    with locked(RESULTS):
        results = read_results()
        results["machine"] = machine_info(1, torch.device("cpu"))
        write_results(results)
    if not args.no_figures:
        write_figures()
    write_report(read_results())
    return 0


def _deadline(text: str | None) -> float | None:
    if not text:
        return None
    hours, minutes = (int(x) for x in text.split(":"))
    now = time.localtime()
    return time.mktime((*now[:3], hours, minutes, 0, 0, 0, -1))


def _spawn_workers(jobs: int, argv: list[str]) -> None:
    """`jobs` copies of this script as workers over the same list; waits for all."""
    command = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker"]
    processes = []
    for _ in range(jobs):
        processes.append(subprocess.Popen(command))
        time.sleep(5)  # staggered, so they claim different runs first
    for process in processes:
        process.wait()


if __name__ == "__main__":
    raise SystemExit(main())
