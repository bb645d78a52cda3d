"""Nuclei on a CPU budget: `blendmask train --preset nuclei_lite0 --minutes M` on the DSB2018
nuclei subset, evaluated on its val split, for each seed, on a quiet machine and with a
competing CPU-bound job during the first minutes.

What it checks (the figures docs/results.md quotes): mask AP and mask AP75 of the final evaluation,
the wall time of the whole command against its budget (it must end within 3%), and how much
the competing job changes the result (the time budget re-plans from recent iterations, so the
run should still use its time and land on the same figures).

    python benchmarks/nuclei_budget.py --minutes 15 --seeds 0 1 \
        --json benchmarks/results/nuclei_budget.json

Runs already in the JSON are kept (the script can be stopped and run again); `--force` redoes
them. The competing job is a 2-thread float matmul loop in another process, started with the
run and stopped after `--load-minutes`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import DEFAULT_NUCLEI, NUCLEI_VARIABLE, print_checks, saved_runs, write_json

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get(NUCLEI_VARIABLE, DEFAULT_NUCLEI))
TARGETS = {"segm_AP": 0.45, "segm_AP75": 0.45}


def busy(seconds: float, threads: int) -> None:
    """A CPU-bound job: matmuls on `threads` threads for `seconds`."""
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(512, 512)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        a = torch.tanh(a @ a)


def run_one(args: argparse.Namespace, seed: int, load: bool, out: Path) -> dict[str, Any]:
    data = Path(args.data)
    cmd = [
        sys.executable, "-m", "blendmask", "train", "--preset", args.preset,
        "--train-json", str(data / "annotations" / "instances_train.json"),
        "--train-images", str(data / "images" / "train"),
        "--val-json", str(data / "annotations" / "instances_val.json"),
        "--val-images", str(data / "images" / "val"),
        "--out", str(out), "--minutes", str(args.minutes), "--seed", str(seed),
        "--no-resume",
    ]  # fmt: skip
    for setting in args.set:
        cmd += ["--set", setting]
    competitor = None
    if load:
        competitor = mp.get_context("spawn").Process(
            target=busy, args=(args.load_minutes * 60.0, args.load_threads)
        )
        competitor.start()
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - start
    if competitor is not None:
        competitor.terminate()
        competitor.join()
    out.mkdir(parents=True, exist_ok=True)  # a run that failed to start made no folder
    (out / "train.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"training failed (seed {seed}, load {load}):\n{proc.stderr[-3000:]}")
    return summarise(out, seed=seed, load=load, wall=wall, budget=args.minutes * 60.0)


def summarise(out: Path, *, seed: int, load: bool, wall: float, budget: float) -> dict[str, Any]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r.get("type") == "eval"]
    train = [r for r in records if r.get("type") == "train"]
    final = evals[-1]
    return {
        "seed": seed,
        "competing_load": load,
        "budget_s": budget,
        "wall_s": round(wall, 1),
        "wall_over_budget": round(wall / budget, 4),
        "within_3pct": abs(wall / budget - 1) <= 0.03,
        "iterations": final["iteration"],
        "data_seconds_per_iter": round(
            sum(r.get("data_seconds", 0.0) for r in train) / max(len(train), 1), 3
        ),
        "final": {k: round(final[k], 4) for k in final if k.startswith(("segm_", "bbox_"))},
        "curve": [{"iteration": r["iteration"], "segm_AP": round(r["segm_AP"], 4)} for r in evals],
    }


def verdict(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Every run against the targets, and the loaded runs against the quiet ones per seed."""
    checks: dict[str, Any] = {
        f"{k} >= {v}": all(r["final"][k] >= v for r in runs) for k, v in TARGETS.items()
    }
    checks["every run within 3% of its budget"] = all(r["within_3pct"] for r in runs)
    quiet = {r["seed"]: r for r in runs if not r["competing_load"]}
    loaded = {r["seed"]: r for r in runs if r["competing_load"]}
    diffs = {
        seed: {k: round(loaded[seed]["final"][k] - quiet[seed]["final"][k], 4) for k in TARGETS}
        for seed in quiet.keys() & loaded.keys()
    }
    checks["loaded - quiet per seed"] = diffs
    checks["loaded within 0.03 of quiet"] = all(
        abs(v) <= 0.03 for d in diffs.values() for v in d.values()
    )
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--preset", default="nuclei_lite0")
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--load-minutes", type=float, default=3.0)
    parser.add_argument("--load-threads", type=int, default=2)
    parser.add_argument("--conditions", nargs="+", default=["quiet", "load"])
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="passed to train"
    )
    parser.add_argument("--out", default=str(REPO / "runs" / "nuclei_budget"))
    parser.add_argument("--json", default=str(REPO / "benchmarks/results/nuclei_budget.json"))
    parser.add_argument("--force", action="store_true", help="redo runs already in the JSON")
    args = parser.parse_args(argv)
    json_path = Path(args.json)
    done = saved_runs(json_path)
    for seed in args.seeds:
        for condition in args.conditions:
            load = condition == "load"
            key = (seed, load, args.minutes)
            if not args.force and any(
                (r["seed"], r["competing_load"], r["budget_s"] / 60) == key for r in done
            ):
                continue
            out = Path(args.out) / f"seed{seed}_{condition}"
            print(f"seed {seed}, {condition}: training {args.minutes} min -> {out}", flush=True)
            result = run_one(args, seed, load, out)
            print(json.dumps(result["final"]), f"wall {result['wall_s']} s", flush=True)
            done = [r for r in done if (r["seed"], r["competing_load"], r["budget_s"] / 60) != key]
            done.append(result)
            report = {
                "preset": args.preset,
                "settings": args.set,
                "runs": done,
                "checks": verdict(done),
            }
            write_json(json_path, report, sort_keys=False)
    print_checks(json_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
