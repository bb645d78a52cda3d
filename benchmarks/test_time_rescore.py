"""The test-time refinements (`modeling/test_time.py`) on trained models: each `--weights`
file evaluated by `blendmask eval` with each `--setting` (a name and `--set` overrides of the
inference keys), so a model trained once is scored with and without mask rescoring and flip
views. Training is untouched: what changes is only how the same weights predict.

    python benchmarks/test_time_rescore.py --weights runs/a/model.pt runs/b/model.pt \
        --val-json D/annotations/instances_val.json --val-images D/images/val --max-det 450 \
        --setting plain model.blender.mask_score_power=0 data.test_flip=false \
        --setting auto model.blender.mask_score_power=2 data.test_flip=true \
        --json benchmarks/results/test_time_nuclei.json

A setting names every key it relies on: a model file keeps the values it was trained with
(an `auto` model predicts with rescoring and flips unless a setting turns them off).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import machine_info, write_json

REPO = Path(__file__).resolve().parents[1]
KEYS = ("segm_AP", "segm_AP50", "segm_AP75", "bbox_AP")


def evaluate(weights: str, overrides: list[str], args: argparse.Namespace, out: Path) -> dict:
    """`blendmask eval --weights W --set ...`: the metrics and the seconds it took."""
    cmd = [
        sys.executable, "-m", "blendmask", "eval", "--weights", weights,
        "--json", args.val_json, "--images", args.val_images, "--out", str(out),
        "--num-workers", "0", "--max-det", str(args.max_det),
    ]  # fmt: skip
    for setting in overrides:
        cmd += ["--set", setting]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"eval failed ({weights}, {overrides}):\n{proc.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    scores = {k: round(float(metrics[k]), 4) for k in KEYS}
    return {**scores, "seconds": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", nargs="+", required=True)
    parser.add_argument("--val-json", required=True)
    parser.add_argument("--val-images", required=True)
    parser.add_argument("--max-det", type=int, default=100)
    parser.add_argument(
        "--setting", nargs="+", action="append", required=True, metavar="NAME KEY=VALUE",
        help="a name and the --set overrides it evaluates with (repeat for each setting)",
    )  # fmt: skip
    parser.add_argument("--out", default=str(REPO / "runs" / "test_time_rescore"))
    parser.add_argument("--json", required=True, help="the results file to write")
    args = parser.parse_args(argv)
    settings = {name: overrides for name, *overrides in args.setting}
    runs: list[dict[str, Any]] = []
    for i, weights in enumerate(args.weights):
        for name, overrides in settings.items():
            metrics = evaluate(weights, overrides, args, Path(args.out) / f"model{i}_{name}")
            runs.append({"weights": weights, "setting": name, **metrics})
            print(json.dumps(runs[-1]), flush=True)
    means = {
        name: round(sum(r["segm_AP"] for r in runs if r["setting"] == name) / len(args.weights), 4)
        for name in settings
    }
    report = {
        "machine": machine_info(torch.get_num_threads(), torch.device("cpu")),
        "val": args.val_json,
        "settings": settings,
        "runs": runs,
        "mean segm_AP": means,
    }
    write_json(Path(args.json), report, sort_keys=False)
    print(json.dumps({"mean segm_AP": means}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
