"""Accuracy sanity check of bf16 training (`solver.precision=bf16`): the losses and gradients of
one step under bf16 autocast against fp32, from the same weights and batch.

Not the issue's full gate (AP at equal iterations, two seeds): a quick check that autocast does
not change what the step optimises. Reported per loss: the relative difference; for the
gradient: the cosine similarity of all trainable parameters' gradients together and the worst
single parameter's (with its name), and the relative difference of the gradient norms.

    python benchmarks/bf16_train_check.py [--preset R_50_1x] [--size 512 832] [--batch 2] \
        [--json benchmarks/results/bf16_train_check.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from train_step import synthetic_batch  # noqa: E402


def losses_and_grads(
    model: torch.nn.Module, criterion: torch.nn.Module, batch: Any, precision: str
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    from blendmask.training.step import training_autocast, training_losses

    images, sizes, targets = batch
    model.zero_grad(set_to_none=True)
    with training_autocast(torch.device("cpu"), precision):
        losses = training_losses(model, criterion, images, sizes, targets)
    sum(losses.values()).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: float(v) for k, v in losses.items()}, grads


def compare(
    ref: tuple[dict[str, float], dict[str, torch.Tensor]],
    got: tuple[dict[str, float], dict[str, torch.Tensor]],
) -> dict[str, Any]:
    (ref_losses, ref_grads), (losses, grads) = ref, got
    rel = {k: abs(losses[k] - v) / max(abs(v), 1e-12) for k, v in ref_losses.items()}
    a = torch.cat([ref_grads[n].flatten() for n in ref_grads])
    b = torch.cat([grads[n].flatten() for n in ref_grads])
    cos = torch.nn.functional.cosine_similarity
    per_param = {
        n: float(cos(ref_grads[n].flatten(), grads[n].flatten(), dim=0))
        for n in ref_grads
        if ref_grads[n].norm() > 0
    }
    worst = min(per_param, key=per_param.get)
    return {
        "loss_relative_difference": rel,
        "gradient_cosine": float(cos(a, b, dim=0)),
        "gradient_norm_relative_difference": float((b.norm() - a.norm()).abs() / a.norm()),
        "worst_parameter": {"name": worst, "cosine": per_param[worst]},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="R_50_1x")
    p.add_argument("--size", type=int, nargs=2, default=[512, 832], metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--instances", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    device = common.setup(args.threads, "cpu")
    from blendmask.factory import build
    from blendmask.presets import get_preset

    cfg = get_preset(args.preset)
    images, targets = synthetic_batch(
        args.batch, *args.size, args.instances, cfg.model.fcos.num_classes
    )
    batch, sizes = common.pad_batch(images)
    torch.manual_seed(0)
    model, criterion, _ = build(cfg, load_pretrained=False)
    model.train()
    data = (batch, sizes, targets)
    fp32 = losses_and_grads(model, criterion, data, "fp32")
    bf16 = losses_and_grads(model, criterion, data, "bf16")
    result = {
        "machine": common.machine_info(args.threads, device),
        "settings": {"preset": args.preset, "size": args.size, "batch": args.batch},
        "fp32_losses": fp32[0],
        "bf16_losses": bf16[0],
        **compare(fp32, bf16),
    }
    common.write_json(args.json, result)
    for key in ("loss_relative_difference", "gradient_cosine", "worst_parameter"):
        print(f"{key}: {result[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
