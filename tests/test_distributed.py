"""Two-process training with torchrun on CPU (gloo): DistributedDataParallel keeps the ranks'
weights identical, each rank reads its own share of the data, and only rank 0 writes files.

If the weights differ, gradients were not averaged (no DDP, or a rank skipped an update); if the
rank-1 files appear, a non-zero rank wrote outputs."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch
from helpers.processes import run_in_session

from blendmask.evaluation.evaluate import METRIC_KEYS, evaluate_model_file
from blendmask.runtime.distributed import DistInfo, all_gather_objects, shard_indices

# Goes through the real command line (`blendmask.cli.main(["train", ...])`), with the loop
# (`run_training`) wrapped so each rank also saves the weights it ended with.
CHILD = textwrap.dedent(
    """
    import os, sys
    import torch
    torch.set_num_threads(1)
    from blendmask.training import loop
    from blendmask.cli import main

    original = loop.run_training

    def train_and_dump(cfg, **kwargs):
        result = original(cfg, **kwargs)
        rank = int(os.environ["RANK"])
        state = {k: v.detach().cpu() for k, v in result.model.state_dict().items()}
        torch.save(state, os.path.join(sys.argv[1], "..", f"rank{rank}.pt"))
        return result

    loop.run_training = train_and_dump
    out, train_json, train_images, val_json, val_images = sys.argv[1:6]
    sys.exit(main([
        "train", "--preset", "tiny", "--device", "cpu", "--out", out,
        "--train-json", train_json, "--train-images", train_images,
        "--val-json", val_json, "--val-images", val_images,
        "--max-iter", "3", "--batch-size", "4", "--seed", "5",
        "--set", "solver.checkpoint_period=2",
    ]))
    """
)


@pytest.mark.slow
def test_two_process_training_keeps_ranks_identical(tmp_path, shapes_dataset):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    out = tmp_path / "run"
    proc = run_in_session(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(script),
            str(out),
            str(shapes_dataset["train_json"]),
            str(shapes_dataset["train_images"]),
            str(shapes_dataset["val_json"]),
            str(shapes_dataset["val_images"]),
        ],
        timeout=280,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key

    # the model trained (not just broadcast at start) and the saved file is rank 0's
    saved = torch.load(out / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(saved[k], rank0[k]) for k in saved)
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["iteration"] == 3
    # 4 images per iteration over 2 processes = 2 per rank; the lr is the preset's scaled by
    # the linear rule (batch 2 -> 4)
    assert last["config"]["solver"]["ims_per_batch"] == 4
    assert "linear scaling rule" in proc.stdout

    # only rank 0 writes: exactly one line per iteration (metrics reduced over ranks)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines if r["type"] == "train"] == [1, 2, 3]
    # (.lock: rank 0's OutputLock, which keeps a second run out of the folder)
    # The final evaluation ran sharded over both ranks (evaluation/evaluate.py, the path of
    # `torchrun ... eval`): rank 0's record equals one process evaluating model.pt (one thread,
    # as each torchrun worker).
    (record,) = [r for r in lines if r["type"] == "eval"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = evaluate_model_file(
            weights=out / "model.pt",
            json_path=shapes_dataset["val_json"],
            images=shapes_dataset["val_images"],
            out=tmp_path / "eval",
            device="cpu",
            num_workers=0,
        )
    finally:
        torch.set_num_threads(threads)
    assert record["iteration"] == 3
    assert {k: record[k] for k in METRIC_KEYS} == {k: alone[k] for k in METRIC_KEYS}

    assert sorted(p.name for p in out.iterdir() if p.name != ".lock") == [
        "curves.png",
        "last.pt",
        "metrics.jsonl",
        "model.pt",
    ]


def test_shard_indices_partition_every_item_once_for_any_world_size():
    # More ranks than items included (world 12 over 0..5 items): those ranks get nothing.
    for num_items in range(0, 40):
        for world_size in range(1, 13):
            shards = [
                shard_indices(num_items, DistInfo(rank=r, world_size=world_size))
                for r in range(world_size)
            ]
            # a gap or an overlap would drop an image from evaluation or count it twice
            assert [i for shard in shards for i in shard] == list(range(num_items))
            sizes = [len(s) for s in shards]
            assert max(sizes) - min(sizes) <= 1, (num_items, world_size, sizes)


def test_shard_indices_refuses_impossible_input():
    with pytest.raises(ValueError, match="num_items"):
        shard_indices(-1, DistInfo())
    with pytest.raises(ValueError, match="rank 2 outside world size 2"):
        shard_indices(5, DistInfo(rank=2, world_size=2))


def test_all_gather_objects_is_identity_in_one_process():
    obj = {"results": [1, 2]}
    assert all_gather_objects(obj) == [obj]


GATHER_CHILD = textwrap.dedent(
    """
    import json, sys
    import torch
    from blendmask.runtime.distributed import (
        all_gather_objects, cleanup_distributed, init_distributed, shard_indices,
    )
    info, _ = init_distributed(torch.device("cpu"))
    mine = {"rank": info.rank, "items": shard_indices(7, info), "blob": "x" * 1000 * info.rank}
    gathered = all_gather_objects(mine)
    with open(f"{sys.argv[1]}/rank{info.rank}.json", "w") as f:
        json.dump(gathered, f)
    cleanup_distributed()
    """
)


@pytest.mark.slow
def test_all_gather_objects_over_three_gloo_processes(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(GATHER_CHILD)
    proc = run_in_session(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "3"]
        + [str(script), str(tmp_path)],
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    views = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(3)]
    # every rank sees every rank's object, in rank order (objects of different sizes)
    for view in views:
        assert [g["rank"] for g in view] == [0, 1, 2]
        assert [len(g["blob"]) for g in view] == [0, 1000, 2000]
        assert [i for g in view for i in g["items"]] == list(range(7))
    assert views[0] == views[1] == views[2]
