"""The accuracy gate of bf16 training (`solver.precision=bf16`, what `auto` picks on a CPU with
native bf16): mask AP at equal iterations against fp32, for each seed.

Each (seed, precision) trains `--iterations` updates of the same preset from the same seed
(same initial weights, same batches) with the decay at 75% and 90%, then scores the val split
with the training's own final evaluation; fp32 and bf16 of a seed run at the same time, one
thread each. The gate (docs/speed.md): the mean
mask AP of bf16 over the seeds is at most 0.01 below fp32's. The wall time per update is
reported too: what bf16 buys on this machine.

    python benchmarks/bf16_train_gate.py --data shapes --iterations 300 --seeds 0 1 \
        --json benchmarks/results/bf16_train_gate_shapes.json
    python benchmarks/bf16_train_gate.py --data nuclei --iterations 400 --seeds 0 1 \
        --json benchmarks/results/bf16_train_gate_nuclei.json

Runs already in the JSON are kept (stop and start again at will); `--force` redoes them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from common import (
    DEFAULT_NUCLEI,
    NUCLEI_VARIABLE,
    cpu_flags,
    cpu_model,
    print_checks,
    run_side_by_side,
    saved_runs,
    write_json,
)

REPO = Path(__file__).resolve().parents[1]
MAX_AP_DROP = 0.01
PRESETS = {"shapes": "shapes_lite0", "nuclei": "nuclei_lite0"}
PRESETS_PREC = ("fp32", "bf16")


def dataset(args: argparse.Namespace) -> dict[str, Path]:
    """The train / val jsons and image folders; the shapes data is made once under --out."""
    if args.data_root:
        root = Path(args.data_root)
    elif args.data == "nuclei":
        root = Path(os.environ.get(NUCLEI_VARIABLE, DEFAULT_NUCLEI))
    else:
        root = Path(args.out) / "shapes_data"
        if not (root / "annotations" / "instances_val.json").is_file():
            subprocess.run(
                [sys.executable, "-m", "blendmask", "shapes", "--out", str(root),
                 "--train", "1000", "--val", "100", "--seed", "0"],
                check=True, cwd=REPO,
            )  # fmt: skip
    return {
        f"{split}_{kind}": root
        / ("annotations" if kind == "json" else "images")
        / (f"instances_{split}.json" if kind == "json" else split)
        for split in ("train", "val")
        for kind in ("json", "images")
    }


def train_command(args: argparse.Namespace, seed: int, precision: str) -> tuple[list[str], Path]:
    files, n = dataset(args), args.iterations
    out = Path(args.out) / f"{args.data}_seed{seed}_{precision}"
    cmd = [
        sys.executable, "-m", "blendmask", "train", "--preset", args.preset or PRESETS[args.data],
        "--train-json", str(files["train_json"]), "--train-images", str(files["train_images"]),
        "--val-json", str(files["val_json"]), "--val-images", str(files["val_images"]),
        "--out", str(out), "--seed", str(seed), "--no-resume",
        *sum((["--set", kv] for kv in (
            f"solver.max_iter={n}", f"solver.steps=[{int(0.75 * n)},{int(0.9 * n)}]",
            f"solver.precision={precision}", "solver.eval_period=0",
            f"solver.checkpoint_period={n}",
        )), []),
    ]  # fmt: skip
    return cmd, out


def train_seed(args: argparse.Namespace, seed: int) -> list[dict[str, Any]]:
    """fp32 and bf16 of one seed at the same time, one thread each (equal iterations: the
    time does not decide anything, it only halves the wall time on a 2-core machine)."""
    jobs = {p: train_command(args, seed, p) for p in PRESETS_PREC}
    walls = run_side_by_side({f"seed {seed} {p}": job for p, job in jobs.items()}, REPO)
    return [summary(jobs[p][1], seed, p, walls[f"seed {seed} {p}"]) for p in PRESETS_PREC]


def summary(out: Path, seed: int, precision: str, wall: float) -> dict[str, Any]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if r.get("type") == "eval"][-1]
    # images per second of each logging window, past the warm-up window
    rates = sorted(r["images_per_s"] for r in records if r.get("type") == "train")[1:]
    return {
        "seed": seed,
        "precision": precision,
        "iterations": final["iteration"],
        "wall_s": round(wall, 1),
        "median_images_per_s": rates[len(rates) // 2] if rates else None,
        "segm_AP": round(final["segm_AP"], 4),
        "segm_AP75": round(final["segm_AP75"], 4),
        "bbox_AP": round(final["bbox_AP"], 4),
    }


def verdict(runs: list[dict[str, Any]]) -> dict[str, Any]:
    by = {(r["seed"], r["precision"]): r for r in runs}
    seeds = sorted({s for s, p in by if (s, "fp32") in by and (s, "bf16") in by})
    if not seeds:
        return {}
    diff = {s: round(by[s, "bf16"]["segm_AP"] - by[s, "fp32"]["segm_AP"], 4) for s in seeds}
    mean = {p: round(sum(by[s, p]["segm_AP"] for s in seeds) / len(seeds), 4) for p in PRESETS_PREC}
    return {
        "seeds": seeds,
        "bf16 - fp32 segm_AP per seed": diff,
        "mean segm_AP": mean,
        f"mean bf16 >= mean fp32 - {MAX_AP_DROP}": mean["bf16"] >= mean["fp32"] - MAX_AP_DROP,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=sorted(PRESETS), default="shapes")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--preset", help="instead of the data's preset (a test's tiny one)")
    parser.add_argument("--data-root", help="a dataset in the COCO layout, instead of --data's")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", default=str(REPO / "runs" / "bf16_train_gate"))
    parser.add_argument("--json", help="default: results/bf16_train_gate_<data>.json here")
    parser.add_argument("--force", action="store_true", help="redo runs already in the JSON")
    args = parser.parse_args(argv)
    path = Path(
        args.json
        or Path(__file__).resolve().parent / "results" / f"bf16_train_gate_{args.data}.json"
    )
    runs = [] if args.force else saved_runs(path)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        if any(r["seed"] == seed for r in runs):
            continue
        print(f"{args.data}: seed {seed}, fp32 and bf16, {args.iterations} iterations", flush=True)
        runs += train_seed(args, seed)
        print(json.dumps(runs[-2:]), flush=True)
        report = {
            "preset": args.preset or PRESETS[args.data],
            "iterations": args.iterations,
            "threads_per_run": 1,
            "cpu": cpu_model(),
            "cpu_flags": cpu_flags(),
            "runs": runs,
            "checks": verdict(runs),
        }
        write_json(path, report, sort_keys=False)
    print_checks(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
