"""Where one training step spends its time: `torch.profiler` by module and by op, forward and
backward, for one of our presets (R_50_1x, batch 2, 800 x 1333 by default).

The step is the one `train_step.py` times (zero_grad, the training loop's forward
`training.step.training_losses`, backward, SGD step) on the same synthetic batch. Module scopes are `record_function` ranges opened by forward hooks; a
backward node is charged to the module whose forward op created it (matched by the autograd
sequence number), so "backward" of a module is the time of the gradient kernels of its own ops.
The criterion's parts (target assignment, detection, mask and semantic losses) are scoped by
wrapping them in this process only.

    python benchmarks/profile_train_step.py [--preset R_50_1x | --auto-json J] [--size 800 1333] \
        [--batch 2] [--steps 2] [--threads 2] [--precision fp32|bf16] [--top 20] [--out table.txt]
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from train_step import synthetic_batch  # noqa: E402

SCOPE = "module::"
BACKWARD = "autograd::engine::evaluate_function: "


def module_scopes(model: nn.Module, depth: int) -> dict[str, nn.Module]:
    """Modules named down to `depth` + 1 dots. Scopes are reported by their first `depth`
    components (`report_name`): the FCOS head runs its towers layer by layer, so
    head.cls_tower is only seen through head.cls_tower.0, .1, ..."""
    return {name: m for name, m in model.named_modules() if name and name.count(".") <= depth}


def report_name(scope: str, depth: int) -> str:
    return ".".join(scope.split(".")[:depth])


def add_scope_hooks(modules: dict[str, nn.Module]) -> None:
    """Open a `record_function` range around each module's forward."""
    for name, module in modules.items():
        ranges: list[Any] = []

        def pre(_m: nn.Module, _a: Any, name: str = name, ranges: list[Any] = ranges) -> None:
            r = record_function(SCOPE + name)
            r.__enter__()
            ranges.append(r)

        def post(_m: nn.Module, _a: Any, _o: Any, ranges: list[Any] = ranges) -> None:
            ranges.pop().__exit__(None, None, None)

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)


def scoped(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with record_function(SCOPE + name):
            return fn(*args, **kwargs)

    return wrapper


def scope_criterion(criterion: nn.Module) -> None:
    """Scope the criterion's parts (instance attributes and the module-level assignment)."""
    from blendmask.modeling import losses

    losses.assign_fcos_targets = scoped("criterion.assign_targets", losses.assign_fcos_targets)
    for part in ("_detection_losses", "_mask_loss", "_semantic_loss"):
        if hasattr(criterion, part):
            setattr(
                criterion, part, scoped("criterion." + part.strip("_"), getattr(criterion, part))
            )


def innermost_scope(event: Any, depth: int) -> str:
    """The deepest module scope enclosing a forward event, '(unscoped)' if none."""
    node = event
    while node is not None:
        if node.name.startswith(SCOPE):
            return report_name(node.name[len(SCOPE) :], depth)
        node = node.cpu_parent
    return "(unscoped)"


def by_module(events: list[Any], steps: int, depth: int) -> dict[str, dict[str, float]]:
    """Seconds per step of forward (self time of ops inside each scope, innermost wins) and
    backward (autograd nodes, charged to the scope of the forward op with the same sequence
    number) for each module."""
    table: dict[str, dict[str, float]] = defaultdict(lambda: {"forward": 0.0, "backward": 0.0})
    scope_of_seq: dict[int, str] = {}
    backward_nodes = []
    for ev in events:
        if ev.name.startswith(BACKWARD):
            backward_nodes.append(ev)
            continue
        in_backward = False
        node = ev.cpu_parent
        while node is not None:
            if node.name.startswith(BACKWARD):
                in_backward = True
                break
            node = node.cpu_parent
        if in_backward:
            continue
        scope = innermost_scope(ev, depth)
        if ev.sequence_nr >= 0 and ev.sequence_nr not in scope_of_seq:
            scope_of_seq[ev.sequence_nr] = scope
        # A scope's own self time is the Python between its ops: charged to it as well.
        table[scope]["forward"] += ev.self_cpu_time_total / 1e6 / steps
    for ev in backward_nodes:
        scope = scope_of_seq.get(ev.sequence_nr, "(unmatched)")
        table[scope]["backward"] += ev.cpu_time_total / 1e6 / steps
    return dict(table)


def format_tables(
    modules: dict[str, dict[str, float]],
    op_rows: list[tuple[str, float, int]],
    step_s: float,
    top: int,
) -> str:
    lines = [f"step: {step_s:.2f} s (mean wall time of the profiled steps)", ""]
    lines.append(f"{'module':40s} {'fwd s':>7s} {'bwd s':>7s} {'total':>7s} {'share':>6s}")
    rows = sorted(modules.items(), key=lambda kv: -(kv[1]["forward"] + kv[1]["backward"]))
    for name, t in rows[:top]:
        total = t["forward"] + t["backward"]
        lines.append(
            f"{name:40s} {t['forward']:7.2f} {t['backward']:7.2f} {total:7.2f} "
            f"{100 * total / step_s:5.1f}%"
        )
    lines += [
        "",
        f"{'op (self time; backward nodes by name)':60s} {'s':>7s} {'calls':>6s} {'share':>6s}",
    ]
    for name, seconds, calls in op_rows[:top]:
        lines.append(f"{name[:60]:60s} {seconds:7.2f} {calls:6d} {100 * seconds / step_s:5.1f}%")
    return "\n".join(lines) + "\n"


def build(args: argparse.Namespace) -> tuple[Callable[[], None], nn.Module, nn.Module]:
    from blendmask.factory import build as build_model
    from blendmask.presets import get_preset
    from blendmask.training.step import training_losses

    if args.auto_json:  # the `auto` preset derived from this training json
        from blendmask.training.auto_preset import auto_config

        cfg, _ = auto_config(args.auto_json)
    else:
        cfg = get_preset(args.preset)
    height, width = args.size
    images, targets = synthetic_batch(
        args.batch, height, width, args.instances, cfg.model.fcos.num_classes
    )
    torch.manual_seed(0)
    model, criterion, _ = build_model(cfg, load_pretrained=False)
    model.train()
    batch, sizes = common.pad_batch(images)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-5, momentum=0.9, weight_decay=1e-4)
    device = torch.device("cpu")

    def step() -> None:
        with record_function(SCOPE + "optimizer.zero_grad"):
            optimizer.zero_grad(set_to_none=True)
        with common.autocast(device, args.precision):
            if args.dense_attentions:  # the training forward before the sparse top layer
                x = batch.contiguous(memory_format=torch.channels_last)
                loss_dict = criterion(model(x, sizes), targets)
            else:
                loss_dict = training_losses(model, criterion, batch, sizes, targets)
        loss = sum(loss_dict.values())
        loss.backward()
        with record_function(SCOPE + "optimizer.step"):
            optimizer.step()

    return step, model, criterion


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="R_50_1x")
    p.add_argument("--auto-json", default=None, help="profile --preset auto for this json")
    p.add_argument("--size", type=int, nargs=2, default=[800, 1333], metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--instances", type=int, default=4)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="fp32", choices=list(common.PRECISIONS))
    p.add_argument("--depth", type=int, default=2, help="module name depth of the scopes")
    p.add_argument(
        "--dense-attentions",
        action="store_true",
        help="run the top layer densely (the training step before it ran at the positives only)",
    )
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", type=Path, default=None, help="also write the tables here")
    args = p.parse_args(argv)
    common.setup(args.threads, "cpu")
    step, model, criterion = build(args)
    step()  # warm-up: allocator, oneDNN primitive caches
    add_scope_hooks({**module_scopes(model, args.depth), "criterion": criterion})
    scope_criterion(criterion)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        step_s = (time.perf_counter() - start) / args.steps
    events = list(prof.events())
    modules = by_module(events, args.steps, args.depth)
    ops = [
        (e.key, e.self_cpu_time_total / 1e6 / args.steps, e.count // args.steps)
        for e in prof.key_averages()
        if not e.key.startswith(SCOPE)
    ]
    ops.sort(key=lambda row: -row[1])
    header = (
        f"{'auto of ' + args.auto_json if args.auto_json else args.preset}, batch {args.batch} at {args.size[0]}x{args.size[1]}, {args.precision}, "
        f"{'dense' if args.dense_attentions else 'sparse'} top layer, "
        f"{args.threads} threads, {common.cpu_model()}, torch {torch.__version__}\n"
    )
    text = header + format_tables(modules, ops, step_s, args.top)
    print(text, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
