"""The CUDA paths: AMP training, the Predictor on a GPU against the CPU, and `eval` under
torchrun with NCCL. Marked `cuda` (`pytest -m cuda`, run by benchmarks/gpu_check.sh) and
skipped without a CUDA device.

If AMP training fails, the GradScaler / autocast path is broken; if the GPU's detections are not
the CPU's (within float tolerance), a kernel or a device transfer differs between devices; if
the NCCL eval fails or differs, the object gathers do not work on GPU process groups.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from helpers.models import write_dense_model
from helpers.processes import run_in_session

from blendmask.cli import main
from blendmask.predictor import Predictor

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _shapes_model(path: Path, shapes_dataset: dict) -> Path:
    categories = json.loads(Path(shapes_dataset["val_json"]).read_text())["categories"]
    write_dense_model(path, [c["id"] for c in categories], [c["name"] for c in categories])
    return path


def test_amp_training_on_cuda(tmp_path, shapes_dataset):
    out = tmp_path / "run"
    argv = ["train", "--preset", "tiny", "--device", "cuda", "--out", str(out)]
    argv += ["--train-json", str(shapes_dataset["train_json"])]
    argv += ["--train-images", str(shapes_dataset["train_images"])]
    argv += ["--max-iter", "4", "--batch-size", "2", "--seed", "0", "--set", "solver.amp=true"]
    assert main(argv) == 0
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["iteration"] == 4
    # the GradScaler ran: its state is empty when AMP is off
    assert last["scaler"] and last["scaler"]["scale"] > 0
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["type"] == "train"]
    assert train
    for record in train:
        for key, value in record.items():
            if isinstance(value, float):
                assert math.isfinite(value), (key, record)


def _box_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(A, B) largest coordinate difference between boxes a (A, 4) and b (B, 4)."""
    return (a[:, None, :] - b[None, :, :]).abs().amax(dim=-1)


def test_predictor_on_cuda_matches_cpu(tmp_path, shapes_dataset):
    weights = _shapes_model(tmp_path / "model.pt", shapes_dataset)
    image = sorted(Path(shapes_dataset["val_images"]).glob("*.png"))[0]
    # full float32 on the GPU (TF32 convolutions would differ from the CPU by ~1e-3)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        cpu = Predictor.from_checkpoint(weights, device="cpu", score_threshold=None)(image)[0]
        on_gpu = Predictor.from_checkpoint(weights, device="cuda", score_threshold=None)
        gpu = on_gpu(image)[0]  # detections come back on the CPU
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    assert next(on_gpu.model.parameters()).device.type == "cuda"
    assert len(cpu) == len(gpu) > 10
    descending = [torch.sort(d.scores, descending=True).values for d in (gpu, cpu)]
    torch.testing.assert_close(*descending, atol=1e-3, rtol=0)
    # Near-equal scores may swap places: match each of the CPU's best half to the closest GPU
    # box of the same class (the dense model's boxes are a stride, 8 px, apart; the classes
    # share boxes) and compare the masks.
    best = cpu.scores.argsort(descending=True)[: len(cpu) // 2]
    distance = _box_distance(cpu.boxes[best], gpu.boxes)
    distance[cpu.labels[best][:, None] != gpu.labels[None, :]] = float("inf")
    nearest = distance.argmin(dim=1)
    assert distance.min(dim=1).values.max() < 0.5
    cpu_masks, gpu_masks = cpu.masks[best], gpu.masks[nearest]
    # pixels at the 0.5 mask threshold may flip: at most 1% of the masks' pixels differ
    differing = int((cpu_masks ^ gpu_masks).sum())
    assert differing <= 0.01 * int((cpu_masks | gpu_masks).sum()), differing


def _eval(command: list[str], out: Path, weights: Path, shapes_dataset: dict) -> dict:
    argv = ["eval", "--weights", str(weights), "--json", str(shapes_dataset["val_json"])]
    argv += ["--images", str(shapes_dataset["val_images"]), "--device", "cuda"]
    argv += ["--num-workers", "0", "--out", str(out)]
    proc = run_in_session([*command, *argv], timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    del metrics["seconds"]
    return metrics


def test_nccl_eval_matches_one_process(tmp_path, shapes_dataset):
    """torchrun over the GPUs (one process on a single-GPU machine: the NCCL group of one
    still carries the gather and the broadcast) against a plain process. Both run in fresh
    processes so that neither inherits cuDNN settings of the tests before."""
    weights = _shapes_model(tmp_path / "model.pt", shapes_dataset)
    nproc = min(2, torch.cuda.device_count())
    one = _eval([sys.executable, "-m", "blendmask"], tmp_path / "one", weights, shapes_dataset)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    torchrun += ["--nproc_per_node", str(nproc), "-m", "blendmask"]
    many = _eval(torchrun, tmp_path / "many", weights, shapes_dataset)
    assert many.keys() == one.keys()
    assert many == pytest.approx(one, abs=1e-6)
    assert one["bbox_AP50"] > 0  # the comparison is not 0 == 0
    one_results = json.loads((tmp_path / "one" / "results.json").read_text())
    many_results = json.loads((tmp_path / "many" / "results.json").read_text())
    assert [r["image_id"] for r in many_results] == [r["image_id"] for r in one_results]
