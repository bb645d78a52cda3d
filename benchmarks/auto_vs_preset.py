"""`--preset auto` against a hand preset on data made by `blendmask shapes`: the demo's data
(256 px images, objects up to half the image) and a variant of another character (`--variant
small`: 512 px images, objects up to 1/8 of the image, 4x smaller relative to the image).

For each seed the two presets train at the same time, one thread each, for `--minutes`
(each run's own time budget, its final evaluation included), so that background load hits
both alike. Reported per run: mask / box AP of the final evaluation (at each run's own
maxDets), the iterations, and the test scale and FPN levels the preset used.

    python benchmarks/auto_vs_preset.py --variant demo --seeds 0 1 --minutes 9 \
        --json benchmarks/results/auto_vs_preset_demo.json
    python benchmarks/auto_vs_preset.py --variant small --seeds 0 1 --minutes 9 \
        --json benchmarks/results/auto_vs_preset_small.json

Runs already in the JSON are kept; `--force` redoes them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from common import cpu_flags, cpu_model, print_checks, run_side_by_side, saved_runs, write_json

REPO = Path(__file__).resolve().parents[1]
# name: (shapes arguments, the hand preset it is compared with)
VARIANTS = {
    "demo": (["--image-size", "256"], "shapes_lite0"),
    "small": (["--image-size", "512", "--max-object", "0.125"], "shapes_lite0"),
}


def make_data(args: argparse.Namespace) -> Path:
    if args.data_root:
        return Path(args.data_root)
    root = Path(args.out) / f"data_{args.variant}"
    if not (root / "annotations" / "instances_val.json").is_file():
        extra, _ = VARIANTS[args.variant]
        subprocess.run(
            [sys.executable, "-m", "blendmask", "shapes", "--out", str(root), "--train",
             str(args.train), "--val", "100", "--seed", "0", *extra],
            check=True, cwd=REPO,
        )  # fmt: skip
    return root


def command(data: Path, preset: str, out: Path, seed: int, minutes: float) -> list[str]:
    a, i = data / "annotations", data / "images"
    return [
        sys.executable, "-m", "blendmask", "train", "--preset", preset,
        "--train-json", str(a / "instances_train.json"), "--train-images", str(i / "train"),
        "--val-json", str(a / "instances_val.json"), "--val-images", str(i / "val"),
        "--out", str(out), "--seed", str(seed), "--minutes", str(minutes), "--no-resume",
    ]  # fmt: skip


def summary(out: Path, preset: str, seed: int) -> dict[str, Any]:
    import torch

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if r.get("type") == "eval"][-1]
    cfg = torch.load(out / "model.pt", map_location="cpu", weights_only=True)["config"]
    return {
        "preset": preset,
        "seed": seed,
        "iterations": final["iteration"],
        "segm_AP": round(final["segm_AP"], 4),
        "segm_AP75": round(final["segm_AP75"], 4),
        "bbox_AP": round(final["bbox_AP"], 4),
        "test_scale": cfg["data"]["test_scale"],
        "min_size_test": cfg["data"]["min_size_test"],
        "fpn_strides": cfg["model"]["fcos"]["fpn_strides"],
        "max_detections": cfg["model"]["fcos"]["post_nms_topk_test"],
    }


def run_pair(args: argparse.Namespace, data: Path, seed: int) -> list[dict[str, Any]]:
    """auto and the hand preset side by side, one thread each."""
    hand = args.hand or VARIANTS[args.variant][1]
    outs = {p: Path(args.out) / f"{args.variant}_seed{seed}_{p}" for p in ("auto", hand)}
    jobs = {p: (command(data, p, out, seed, args.minutes), out) for p, out in outs.items()}
    run_side_by_side({f"{p} seed {seed}": job for p, job in jobs.items()}, REPO)
    return [summary(out, p, seed) for p, out in outs.items()]


def verdict(runs: list[dict[str, Any]], hand: str) -> dict[str, Any]:
    by = {(r["seed"], r["preset"]): r for r in runs}
    seeds = sorted({s for s, p in by if (s, "auto") in by and (s, hand) in by})
    if not seeds:
        return {}
    mean = {
        p: round(sum(by[s, p]["segm_AP"] for s in seeds) / len(seeds), 4) for p in ("auto", hand)
    }
    return {
        "seeds": seeds,
        "mean segm_AP": mean,
        "auto - hand": round(mean["auto"] - mean[hand], 4),
        "auto within 0.02 of hand or better": mean["auto"] >= mean[hand] - 0.02,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="demo")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--minutes", type=float, default=9.0)
    parser.add_argument("--train", type=int, default=1000, help="training images to make")
    parser.add_argument("--out", default=str(REPO / "runs" / "auto_vs_preset"))
    parser.add_argument("--json", help="default: results/auto_vs_preset_<variant>.json here")
    parser.add_argument("--hand", help="the hand preset (default: the variant's)")
    parser.add_argument("--data-root", help="a dataset in the COCO layout instead of making one")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    results = Path(__file__).resolve().parent / "results"
    path = Path(args.json or results / f"auto_vs_preset_{args.variant}.json")
    hand = args.hand or VARIANTS[args.variant][1]
    runs = [] if args.force else saved_runs(path)
    data = make_data(args)
    for seed in args.seeds:
        if any(r["seed"] == seed for r in runs):
            continue
        print(f"{args.variant}: seed {seed}, auto and {hand}, {args.minutes} min", flush=True)
        runs += run_pair(args, data, seed)
        report = {
            "variant": args.variant,
            "shapes_arguments": VARIANTS[args.variant][0],
            "minutes": args.minutes,
            "threads_per_run": 1,
            "cpu": cpu_model(),
            "cpu_flags": cpu_flags(),
            "runs": runs,
            "checks": verdict(runs, hand),
        }
        write_json(path, report, sort_keys=False)
        print(json.dumps(runs[-2:]), flush=True)
    print_checks(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
