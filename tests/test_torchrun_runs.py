"""`train`, `eval` and `predict` under torchrun beyond one process group: workers SIGKILLed
and restarted by torchrun (`--max-restarts`), and two c10d "nodes" on this machine.

The reference is one uninterrupted launch of one node with two processes. If the elastic run's
weights differ from it, a restarted group did not resume from last.pt (or resumed from a torn
one, or repeated / skipped an update); a duplicate or missing record means a restarted `eval` /
`predict` counted an image twice or lost one. If the two-node run differs, a rank read the
wrong share of the data or the gradients were not averaged across the nodes. Before the fix of
runtime/rendezvous.py a restarted group could read the dead workers' addresses from the
torchrun agent's store: its connect was refused (a wasted restart) or it hung for hours.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.models import write_dense_model
from helpers.panoptic import ground_truth_from_prediction
from helpers.processes import run_in_session
from helpers.serve import free_port
from helpers.torchrun import torchrun_nodes, write_worker

from blendmask.checkpoint_io import save_model_file
from blendmask.cli.main import main
from blendmask.data.panoptic import CocoPanopticDataset
from blendmask.factory import build
from blendmask.presets import get_preset

pytestmark = pytest.mark.slow

ITERATIONS = 6  # evaluations at 4 (periodic) and 6 (the end); last.pt at 2 and 4


def _train(out: Path, data: dict) -> list[str]:
    return [
        "train", "--preset", "tiny", "--device", "cpu", "--out", str(out),
        "--train-json", str(data["train_json"]), "--train-images", str(data["train_images"]),
        "--val-json", str(data["val_json"]), "--val-images", str(data["val_images"]),
        "--max-iter", str(ITERATIONS), "--batch-size", "4", "--seed", "5", "--num-workers", "0",
        "--set", "solver.checkpoint_period=2", "--set", "solver.eval_period=4",
    ]  # fmt: skip


def _eval(out: Path, data: dict) -> list[str]:
    return [
        "eval", "--weights", str(data["dense"]), "--json", str(data["val_json"]),
        "--images", str(data["val_images"]), "--device", "cpu", "--num-workers", "0",
        "--out", str(out),
    ]  # fmt: skip


def _predict(out: Path, data: dict) -> list[str]:
    return [
        "predict", "--weights", str(data["dense"]), str(data["val_images"]), "--out", str(out),
        "--device", "cpu", "--no-overlays", "--coco",
    ]  # fmt: skip


def _panoptic_eval(out: Path, panoptic: dict) -> list[str]:
    return [
        "eval", "--weights", str(panoptic["weights"]), "--panoptic-json", str(panoptic["json"]),
        "--panoptic-images", str(panoptic["png"]), "--images", str(panoptic["images"]),
        "--device", "cpu", "--out", str(out),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, shapes_dataset: dict) -> dict:
    root = tmp_path_factory.mktemp("torchrun_runs")
    categories = json.loads(Path(shapes_dataset["val_json"]).read_text())["categories"]
    dense = root / "dense.pt"  # a model with detections, so that eval / predict compare some
    write_dense_model(dense, [c["id"] for c in categories], [c["name"] for c in categories])
    return {**shapes_dataset, "dense": dense, "root": root, "worker": write_worker(root)}


def _launch(data: dict, name: str, commands, **kwargs) -> str:
    outs = torchrun_nodes(data["worker"], commands, **kwargs)
    text = "\n".join(p.stdout for p in outs)
    assert all(p.returncode == 0 for p in outs), f"{name}:\n{text[-6000:]}"
    return text


def _commands(out: dict[str, Path], data: dict, panoptic: dict) -> list[list[str]]:
    """train, eval, predict and the panoptic eval of the runs compared with each other."""
    commands = [_train(out["train"], data), _eval(out["eval"], data)]
    return [*commands, _predict(out["predict"], data), _panoptic_eval(out["panoptic"], panoptic)]


@pytest.fixture(scope="module")
def reference(data: dict, panoptic: dict) -> dict:
    """One node, two processes, nothing killed: train, eval, predict and the panoptic eval in
    one launch (each launch starts torch in every process: seconds on a busy machine)."""
    out = {k: data["root"] / f"ref_{k}" for k in ("train", "eval", "predict", "panoptic")}
    log = _launch(data, "reference", _commands(out, data, panoptic))
    return {**out, "log": log}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "model.pt", weights_only=True)["model"]


def _assert_same_weights(run: Path, ref: Path) -> None:
    mine, theirs = _weights(run), _weights(ref)
    assert mine.keys() == theirs.keys()
    different = [k for k in mine if not torch.equal(mine[k], theirs[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    keep = ("seconds", "data_seconds", "images_per_s")
    return [{k: v for k, v in json.loads(x).items() if k not in keep} for x in lines]


def _predictions(run: Path) -> list[dict]:
    lines = (run / "predictions.jsonl").read_text().splitlines()
    return sorted((json.loads(x) for x in lines), key=lambda r: r["file_name"])


def _metrics(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    del metrics["seconds"]
    return metrics


def _eval_outputs(run: Path) -> tuple[dict, list]:
    return _metrics(run), json.loads((run / "results.json").read_text())


def test_killed_workers_are_restarted_and_training_ends_equal(data, reference):
    rng = random.Random()
    seed = rng.randrange(10**6)
    rng.seed(seed)
    # attempt 0: a random rank at a random step before the first evaluation (iteration 4);
    # 1: rank 0 while it writes last.pt (its temp file full, not renamed); 2: a random rank as
    # the periodic evaluation starts. Attempt 3 finishes.
    kills = {
        "0": {"rank": rng.randrange(2), "at": "iteration", "n": rng.randrange(2, 5)},
        "1": {"rank": 0, "at": "checkpoint", "n": 1},
        "2": {"rank": rng.randrange(2), "at": "evaluation", "n": 1},
    }
    run = data["root"] / f"elastic_train_{seed}"
    log = _launch(data, f"kills {kills}", [_train(run, data)], max_restarts=3, kills=kills)
    (data["root"] / "elastic_train.log").write_text(log)
    assert log.count("test: killing rank") == 3, log[-4000:]
    assert "resuming from" in log, log[-4000:]
    _assert_same_weights(run, reference["train"])
    # metrics.jsonl: every iteration and evaluation once, with the uninterrupted run's losses
    assert _records(run) == _records(reference["train"]), kills
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]  # torn files removed


def test_killed_eval_and_predict_recover_without_duplicates_or_gaps(data, reference):
    # one launch: attempt 0 loses rank 0 in predict; attempt 1 resumes predict, then loses
    # rank 1 in eval; attempt 2 resumes predict (nothing left) and runs eval again
    kills = {"0": {"rank": 0, "at": "predict", "n": 1}, "1": {"rank": 1, "at": "eval", "n": 1}}
    run_eval, run_predict = data["root"] / "elastic_eval", data["root"] / "elastic_predict"
    commands = [_predict(run_predict, data), _eval(run_eval, data)]
    log = _launch(data, "predict, eval", commands, max_restarts=2, kills=kills)
    assert "test: killing rank 0 at predict" in log and "test: killing rank 1 at eval" in log
    assert _eval_outputs(run_eval) == _eval_outputs(reference["eval"])

    records, ref_records = _predictions(run_predict), _predictions(reference["predict"])
    # every image once, with the uninterrupted run's detections ...
    assert [r["file_name"] for r in records] == [r["file_name"] for r in ref_records]
    # ... under the same ids: the pending images take their positions, as the first run gave
    assert records == ref_records


def test_two_nodes_equal_one_node_with_two_processes(data, panoptic, reference):
    out = {k: data["root"] / f"nodes_{k}" for k in ("train", "eval", "predict", "panoptic")}
    commands = _commands(out, data, panoptic)
    log = _launch(data, "two nodes", commands, nodes=2, procs_per_node=1)
    # every rank says where it sits, once per process group (train, eval, predict, PQ)
    for rank in (0, 1):
        assert log.count(f"process group: rank {rank}/2, node {rank}/2") == 4, log[-4000:]
    _assert_same_weights(out["train"], reference["train"])
    assert _records(out["train"]) == _records(reference["train"])
    assert _eval_outputs(out["eval"]) == _eval_outputs(reference["eval"])
    assert _predictions(out["predict"]) == _predictions(reference["predict"])
    assert _metrics(out["panoptic"]) == _metrics(reference["panoptic"])
    # only rank 0 wrote: the reference's files and nothing else
    for k in out:
        assert sorted(p.name for p in out[k].iterdir()) == sorted(
            p.name for p in reference[k].iterdir()
        )


@pytest.fixture(scope="module")
def panoptic(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`shapes --panoptic` val images (3: an uneven split over two ranks), a seeded random tiny
    panoptic model that gives thing and stuff segments, and a ground truth made from its own
    predictions, perturbed (`ground_truth_from_prediction`): some segments match, some not."""
    root = tmp_path_factory.mktemp("panoptic_runs")
    argv = ["shapes", "--out", str(root / "data"), "--train", "1", "--val", "3"]
    assert main([*argv, "--image-size", "64", "--panoptic", "--seed", "1"]) == 0
    ann = root / "data" / "annotations"
    shapes_json, images = ann / "panoptic_val.json", root / "data" / "images" / "val"
    dataset = CocoPanopticDataset(shapes_json, ann / "panoptic_val", images)
    cfg = get_preset("tiny")
    cfg.model.fcos.num_classes = dataset.num_classes
    p = cfg.model.panoptic
    p.enabled, p.num_stuff_classes, p.conv_dims = True, len(dataset.stuff_names), 32
    p.stuff_area_limit = 64  # the default 4096 px is a whole 64 px image
    cfg.data.category_names = list(dataset.category_names)
    cfg.data.category_ids = list(dataset.contiguous_to_category_id)
    cfg.data.stuff_names, cfg.data.stuff_ids = (
        list(dataset.stuff_names),
        list(dataset.stuff_category_ids),
    )
    torch.manual_seed(0)
    model, _, _ = build(cfg.validate(), load_pretrained=False)
    with torch.no_grad():  # scores ~0.5 (a random head's are ~0.01): things pass the merge's 0.45
        model.head.cls_logits.bias.fill_(0.0)
        model.head.bbox_pred.bias.fill_(1.5)
    weights = root / "model.pt"
    save_model_file(weights, cfg, model)
    predicted = root / "predicted"
    argv = ["predict", "--weights", str(weights), str(images), "--out", str(predicted)]
    assert main([*argv, "--device", "cpu", "--no-overlays"]) == 0
    gt_json = ground_truth_from_prediction(predicted, shapes_json, root / "gt")
    gt = CocoPanopticDataset(gt_json, root / "gt" / "panoptic", images)  # checks the json ...
    for index in range(len(gt)):
        gt.segment_ids(index)  # ... and each PNG
    kinds = {c.name: c.isthing for c in gt.data.categories.values()}
    return {
        "json": gt_json, "png": root / "gt" / "panoptic", "images": images, "weights": weights,
        "kinds": kinds, "root": root,
    }  # fmt: skip


def test_sharded_panoptic_eval_equals_one_process(panoptic, reference):
    one, two = panoptic["root"] / "one", reference["panoptic"]  # two: the reference's 2 ranks
    assert main(_panoptic_eval(one, panoptic)) == 0  # (one thread, as each torchrun worker)
    assert reference["log"].count(f"wrote {two / 'metrics.json'}") == 1  # rank 0 alone wrote
    m = _metrics(one)
    assert m == _metrics(two)  # PQ, SQ, RQ, per class: the very floats of one process
    # not a trivial equality: the segments of every image counted once (a lost or doubled
    # shard changes the counts), matched ones among them whose IoUs (< 1) make PQ's sums
    assert m["images"] == 3 and 0 < m["PQ"] < 1 and 0 < m["SQ"] < 1, m
    for isthing in (True, False):
        counts = [c for name, c in m["per_class"].items() if panoptic["kinds"][name] == isthing]
        assert sum(c["TP"] for c in counts) > 1 and sum(c["FN"] + c["FP"] for c in counts) > 0, m
    assert sorted(p.name for p in two.iterdir()) == ["metrics.json"]


def test_slurm_script_torchrun_command_trains_on_cpu(data, tmp_path):
    """Wrong if the torchrun line of scripts/slurm_train.sbatch (what `srun` starts on each
    node) does not train: run here as its one node with two CPU processes."""
    script = Path(__file__).parents[1] / "scripts" / "slurm_train.sbatch"
    out = tmp_path / "run"
    env = {**os.environ, "DRY_RUN": "1", "GPUS_PER_NODE": "2", "SLURM_NNODES": "1"}
    env.update(PORT=str(free_port()), OUT=str(out))
    env["TRAIN_ARGS"] = (
        f"--preset tiny --train-json {data['train_json']} --train-images {data['train_images']}"
        " --max-iter 2 --batch-size 4 --num-workers 0"
    )
    line = subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert line[0] == "torchrun" and "c10d" in line and "--max-restarts" in line
    proc = run_in_session([sys.executable, "-m", "torch.distributed.run", *line[1:]], timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert torch.load(out / "last.pt", weights_only=True)["iteration"] == 2
