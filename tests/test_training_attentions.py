"""Training evaluates the top layer only at the positive locations (`dense_attentions=False`,
the criterion calls `attentions_at`). If these fail, the cheaper training step optimises
something other than the dense losses the reference defines."""

from __future__ import annotations

import pytest
import torch

from blendmask.factory import build
from blendmask.presets import get_preset


def _model_and_criterion(fixed_onehot: bool = False):
    cfg = get_preset("tiny")
    if fixed_onehot:  # the FCIS assembly (paper Table 1): K = M * M, attention values unused
        cfg.model.blender.fixed_onehot_attention = True
        cfg.model.basis_module.num_bases = cfg.model.blender.attn_size**2
    torch.manual_seed(0)
    model, criterion, _ = build(cfg)
    return model.train(), criterion


def _targets(num_classes: int, empty: bool = False) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    targets = []
    for h, w in [(96, 128), (80, 100)]:
        boxes = torch.tensor([[8.0, 10.0, 60.0, 70.0], [30.0, 5.0, 90.0, 40.0]])
        masks = torch.zeros((2, h, w), dtype=torch.uint8)
        masks[0, 12:68, 10:58] = 1
        masks[1, 6:38, 32:88] = 1
        labels = torch.randint(0, num_classes, (2,), generator=g)
        if empty:
            boxes, masks, labels = boxes[:0], masks[:0], labels[:0]
        targets.append({"boxes": boxes, "labels": labels, "masks": masks})
    return targets


def _losses_and_grads(model, criterion, targets, dense: bool):
    model.zero_grad(set_to_none=True)
    images = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    sizes = [(96, 128), (80, 100)]
    losses = criterion(model(images, sizes, dense_attentions=dense), targets)
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


@pytest.mark.parametrize("fixed_onehot", [False, True])
def test_sparse_attentions_give_the_dense_losses_and_gradients(fixed_onehot: bool) -> None:
    model, criterion = _model_and_criterion(fixed_onehot)
    targets = _targets(criterion.num_classes)
    dense_losses, dense_grads = _losses_and_grads(model, criterion, targets, dense=True)
    sparse_losses, sparse_grads = _losses_and_grads(model, criterion, targets, dense=False)
    assert dense_losses["loss_mask"] > 0
    assert dense_losses.keys() == sparse_losses.keys()
    for key in dense_losses:
        torch.testing.assert_close(sparse_losses[key], dense_losses[key], rtol=1e-5, atol=1e-6)
    # Every parameter that learns densely learns the same way sparsely (the top layer too).
    assert dense_grads.keys() == sparse_grads.keys()
    assert "top_layer.weight" in sparse_grads
    for name, grad in dense_grads.items():
        torch.testing.assert_close(sparse_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_sparse_attentions_without_positives_keep_the_top_layer_in_the_graph() -> None:
    """No gt anywhere: a zero mask loss whose graph still reaches the top layer (DDP needs a
    gradient for every parameter)."""
    model, criterion = _model_and_criterion()
    losses, grads = _losses_and_grads(
        model, criterion, _targets(criterion.num_classes, empty=True), dense=False
    )
    assert float(losses["loss_mask"]) == 0.0
    assert torch.count_nonzero(grads["top_layer.weight"]) == 0
    assert "top_layer.bias" in grads


def test_criterion_without_attentions_or_towers_says_what_it_needs() -> None:
    model, criterion = _model_and_criterion()
    out = model(torch.rand(2, 3, 96, 128), dense_attentions=False)._replace(bbox_towers=None)
    with pytest.raises(ValueError, match="dense_attentions"):
        criterion(out, _targets(criterion.num_classes))


def test_solver_precision_bf16_autocasts_the_training_forward(monkeypatch) -> None:
    """`solver.precision` (fp32 | bf16 | auto) reaches the loop's autocast on CPU; bf16 runs
    the convs in bfloat16 while the losses stay float32; auto takes the training probe's
    choice."""
    from types import SimpleNamespace

    from blendmask.config import ConfigError
    from blendmask.runtime.distributed import DistInfo
    from blendmask.training import loop, training_run
    from blendmask.training.step import training_losses

    cfg = get_preset("tiny")
    cfg.solver.precision = "bf16"
    cfg.validate()
    cpu, info = torch.device("cpu"), DistInfo(rank=0, world_size=1, local_rank=0)
    run = SimpleNamespace(scaler=None, device=cpu)
    run.precision, _ = training_run.resolve_precision(cfg, cpu, info)
    model, criterion = _model_and_criterion()
    conv = torch.nn.Conv2d(3, 4, 3)
    with loop._autocast(run):
        assert conv(torch.rand(1, 3, 8, 8)).dtype == torch.bfloat16
        losses = training_losses(
            model,
            criterion,
            torch.rand(2, 3, 96, 128),
            [(96, 128), (80, 100)],
            _targets(criterion.num_classes),
        )
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    cfg.solver.precision = "fp32"
    run.precision, note = training_run.resolve_precision(cfg, cpu, info)
    assert note == ""
    with loop._autocast(run):
        assert conv(torch.rand(1, 3, 8, 8)).dtype == torch.float32
    cfg.solver.precision = "auto"
    cfg.validate()
    for probed in ("bf16", "fp32"):
        times = {"fp32_channels_last": 1.0, "bf16_channels_last": 0.5}
        monkeypatch.setattr(
            training_run, "training_precision", lambda dev, channels, p=probed, t=times: (p, t)
        )
        chosen, note = training_run.resolve_precision(cfg, cpu, info)
        assert chosen == probed and f"-> {probed}" in note and "500.0 ms" in note
    cfg.solver.precision = "fp16"
    with pytest.raises(ConfigError, match="solver.precision"):
        cfg.validate()
