"""Does the assembler's lead over the blender (docs/ablations.md, Table 1 on shapes) survive a
longer schedule? Trains the shapes blender baseline, the FCIS assembler and the assembler with
learned attention under `ablations.py`'s budget with `--factor` times the iterations (the lr
step moves with them; warm-up, batch and learning rate stay), each run exactly as
`ablations.py` runs it (`run_one`: train, COCO eval, CPU time, attention specificity).

Writes benchmarks/results/ablations_longer.json (resumable: a recorded run is not trained
again) and prints each configuration's row of docs/ablations.md's tables at the tables' budget
(from ablations.json) and at the longer schedule.

    python benchmarks/ablations_longer.py --factor 4 --seeds 0 1 --jobs 2
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablations import BUDGET, Ablation, ablations, run_key, run_one  # noqa: E402
from ablations_report import by_config, metrics_table  # noqa: E402
from ablations_store import RESULTS, add_record, read_results  # noqa: E402
from common import REPO  # noqa: E402

LONGER = REPO / "benchmarks" / "results" / "ablations_longer.json"
NAMES = {
    "base": "blender (K = 4, M = 7)",
    "fcis": "assembler (K = 16, M = 4, fixed one-hot)",
    "fcis_learned": "assembler, learned attention",
}


def longer_budget(factor: int) -> dict[str, Any]:
    """The shapes budget with `factor` times the iterations and the lr step at the same
    fraction of the run."""
    b = dict(BUDGET["shapes"])
    b["iterations"] = b["iterations"] * factor
    b["lr_steps"] = [step * factor for step in b["lr_steps"]]
    return b


def _train(ablation: Ablation, seed: int, factor: int) -> tuple[str, dict[str, Any]]:
    import torch

    torch.set_num_threads(1)  # as ablations.py: one thread per run, runs side by side
    budget = longer_budget(factor)
    start = time.time()
    record = run_one(ablation, seed, budget, REPO / "runs" / f"ablations_x{factor}")
    record["wall_seconds"] = round(time.time() - start, 1)
    key = run_key(ablation, seed)
    add_record(key, record, {"shapes": budget, "factor": factor, "threads": 1}, LONGER)
    return key, record


def _summary(factor: int) -> str:
    """Markdown in the layout of docs/ablations.md's tables: each configuration at the
    tables' budget and at `factor` times its iterations."""
    groups = by_config(read_results(RESULTS))
    groups |= {f"{k}@{factor}x": v for k, v in by_config(read_results(LONGER)).items()}
    iterations = BUDGET["shapes"]["iterations"]
    rows = [
        (f"{label}, {n} iterations", f"shapes/{name}{suffix}")
        for name, label in NAMES.items()
        for n, suffix in ((iterations, ""), (iterations * factor, f"@{factor}x"))
    ]
    return "\n".join(metrics_table(rows, groups))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factor", type=int, default=4, help="times the 300 iterations")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side (1 thread each)")
    args = parser.parse_args(argv)
    recorded = read_results(LONGER)
    if recorded.get("budget", {}).get("factor", args.factor) != args.factor:
        raise SystemExit(f"{LONGER} holds runs of another --factor; move it away first")
    by_name = {a.name: a for a in ablations() if a.dataset == "shapes"}
    plan = [
        (by_name[name], seed)
        for seed in args.seeds
        for name in NAMES
        if run_key(by_name[name], seed) not in recorded["runs"]
    ]
    # spawn: each run in a fresh process, as ablations.py's workers (no forked torch state).
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        futures = [pool.submit(_train, a, seed, args.factor) for a, seed in plan]
        for future in concurrent.futures.as_completed(futures):
            key, record = future.result()
            print(f"{key}: mask AP {record['metrics']['segm_AP']:.3f}", flush=True)
    print(_summary(args.factor))
    return 0


if __name__ == "__main__":
    sys.exit(main())
