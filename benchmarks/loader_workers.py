"""Do data-loader workers pay on this machine? Trains the same short schedule with 0, 1 and 2
workers and reports images/s and the seconds each iteration waited for its batch.

    python benchmarks/loader_workers.py --workers 0 1 2 --iterations 60 \
        --json benchmarks/results/loader_workers.json

On a 2-core CPU a worker takes a core from the two threads of the training step; it pays only
when the data step is a large share of the iteration (decoding and resizing every image) and
not when images are cached and cropped (the nuclei preset). The first `--skip` iterations
(start-up, cache filling) are left out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import DEFAULT_NUCLEI, NUCLEI_VARIABLE, write_json

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get(NUCLEI_VARIABLE, DEFAULT_NUCLEI))


def measure(args: argparse.Namespace, workers: int) -> dict[str, Any]:
    data = Path(args.data)
    with tempfile.TemporaryDirectory() as out:
        cmd = [
            sys.executable, "-m", "blendmask", "train", "--preset", args.preset,
            "--train-json", str(data / "annotations" / "instances_train.json"),
            "--train-images", str(data / "images" / "train"), "--out", out,
            "--max-iter", str(args.iterations), "--num-workers", str(workers),
            "--set", f"solver.log_period={args.log_period}", *args.set,
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if proc.returncode != 0:
            raise SystemExit(f"training failed with {workers} workers:\n{proc.stderr[-3000:]}")
        lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    timed = [r for r in records if r.get("type") == "train" and r["iteration"] > args.skip]
    return {
        "workers": workers,
        "images_per_s": round(sum(r["images_per_s"] for r in timed) / len(timed), 3),
        "data_seconds_per_iter": round(sum(r["data_seconds"] for r in timed) / len(timed), 3),
        "iterations_timed": args.iterations - args.skip,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--preset", default="nuclei_lite0")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--skip", type=int, default=10)
    parser.add_argument("--log-period", type=int, default=10)
    parser.add_argument("--set", action="append", default=[], help="extra --set k=v")
    parser.add_argument("--json", default=str(REPO / "benchmarks/results/loader_workers.json"))
    args = parser.parse_args(argv)
    args.set = [x for kv in args.set for x in ("--set", kv)]
    rows = [measure(args, w) for w in args.workers]
    for row in rows:
        print(json.dumps(row))
    write_json(args.json, {"preset": args.preset, "rows": rows}, sort_keys=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
