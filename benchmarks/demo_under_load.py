"""The demos on a busy machine: `blendmask demo [--panoptic]` with a competing CPU-bound job
for the whole run (and, with `--conditions quiet load`, without one for comparison).

Issue 26's check: under a competing 2-thread job the panoptic demo must keep PQ >= 0.6 and
PQ_th >= 0.4 (things must not vanish from the panoptic map), and the instance demo its mask
AP. The competing job is `nuclei_budget.busy`: float matmuls on `--load-threads` threads,
started with the demo and stopped when it ends.

    python benchmarks/demo_under_load.py --kinds panoptic instance --conditions load \
        --json benchmarks/results/demo_under_load.json

Runs already in the JSON are kept (stop and start again freely); `--force` redoes them.
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

import torch
from common import machine_info, print_checks, saved_runs, write_json
from nuclei_budget import busy

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"panoptic": {"PQ": 0.6, "PQ_th": 0.4}, "instance": {"segm_AP": 0.4}}
KEPT = ("PQ", "PQ_th", "PQ_st", "SQ", "RQ", "merge_score_threshold", "segm_AP", "segm_AP75")


def run_one(kind: str, load: bool, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One demo in a subprocess, with the competing job alive for all of it when `load`."""
    cmd = [sys.executable, "-m", "blendmask", "demo", "--out", str(out), "--seed", str(args.seed)]
    cmd += ["--minutes", str(args.minutes)] + (["--panoptic"] if kind == "panoptic" else [])
    for setting in args.set:
        cmd += ["--set", setting]
    competitor = None
    if load:
        competitor = mp.get_context("spawn").Process(target=busy, args=(3 * 3600.0, args.threads))
        competitor.start()
    start, load_start = time.perf_counter(), os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall, load_end = time.perf_counter() - start, os.getloadavg()[0]
    if competitor is not None:
        competitor.terminate()
        competitor.join()
    (out / "demo.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"demo failed ({kind}, load {load}):\n{proc.stderr[-3000:]}")
    return summarise(out, kind=kind, load=load, wall=wall, loads=(load_start, load_end))


def summarise(
    out: Path, *, kind: str, load: bool, wall: float, loads: tuple[float, float]
) -> dict[str, Any]:
    """The run's row: its final metrics (DIR/metrics.json) and iterations (DIR/metrics.jsonl)."""
    metrics = json.loads((out / "metrics.json").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    iterations = max((r.get("iteration", 0) for r in records), default=0)
    return {
        "kind": kind,
        "competing_load": load,
        "wall_s": round(wall, 1),
        "load_average_start_end": [round(x, 2) for x in loads],
        "iterations": iterations,
        "final": {k: round(float(metrics[k]), 4) for k in KEPT if k in metrics},
    }


def verdict(runs: list[dict[str, Any]]) -> dict[str, bool]:
    """Each loaded run against its kind's targets."""
    checks = {}
    for r in runs:
        if r["competing_load"]:
            for key, floor in TARGETS[r["kind"]].items():
                name = f"{r['kind']} under load: {key} >= {floor}"
                checks[name] = r["final"].get(key, -1.0) >= floor
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", nargs="+", choices=sorted(TARGETS), default=["panoptic"])
    parser.add_argument("--conditions", nargs="+", choices=["quiet", "load"], default=["load"])
    parser.add_argument("--threads", type=int, default=2, help="threads of the competing job")
    parser.add_argument("--minutes", type=float, default=9.0, help="the demo's --minutes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="passed to demo"
    )
    parser.add_argument("--out", default=str(REPO / "runs" / "demo_under_load"))
    parser.add_argument("--json", default=str(REPO / "benchmarks/results/demo_under_load.json"))
    parser.add_argument("--force", action="store_true", help="redo runs already in the JSON")
    args = parser.parse_args(argv)
    path = Path(args.json)
    runs = saved_runs(path)
    for kind in args.kinds:
        for condition in args.conditions:
            load = condition == "load"
            if not args.force and any(
                (r["kind"], r["competing_load"]) == (kind, load) for r in runs
            ):
                continue
            out = Path(args.out) / f"{kind}_{condition}"
            print(f"{kind} demo, {condition} -> {out}", flush=True)
            row = run_one(kind, load, args, out)
            print(json.dumps(row["final"]), f"wall {row['wall_s']} s", flush=True)
            runs = [r for r in runs if (r["kind"], r["competing_load"]) != (kind, load)] + [row]
            report = {
                "machine": machine_info(torch.get_num_threads(), torch.device("cpu")),
                "competing_threads": args.threads,
                "seed": args.seed,
                "settings": args.set,
                "runs": runs,
                "checks": verdict(runs),
            }
            write_json(path, report, sort_keys=False)
    print_checks(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
