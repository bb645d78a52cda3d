"""AdelaiDet checkpoint -> our network -> `model.pt`: the `convert` command as functions.

The reading, renaming and checking live in `interop/adelaidet.py` (which builds nothing); this
module chains them with `factory.build_network` and `checkpoint_io.save_model_file`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from blendmask.checkpoint_io import save_model_file
from blendmask.config import Config
from blendmask.factory import build_network
from blendmask.interop.adelaidet import (
    ConversionReport,
    adelaidet_config,
    load_adelaidet_state,
    read_checkpoint_with_notes,
)
from blendmask.io import resolve_device
from blendmask.presets import load_config


def convert_adelaidet_model(
    path: str | Path,
    preset: str,
    *,
    allow_partial: bool = False,
    num_classes: int | None = None,
    overrides: list[str] | None = None,
    trust_pickle: bool = False,
) -> tuple[Config, nn.Module, ConversionReport]:
    """As `convert_adelaidet`, returning the loaded network (eval mode) instead of its state."""
    path = Path(path)
    state, notes = read_checkpoint_with_notes(path, trust_pickle=trust_pickle)
    cfg = adelaidet_config(
        load_config(preset, None, list(overrides or [])),
        state,
        source=str(path),
        num_classes=num_classes,
        allow_partial=allow_partial,
    )
    model = build_network(cfg, load_pretrained=False)
    report = load_adelaidet_state(
        model, state, cfg=cfg, source=str(path), notes=notes, allow_partial=allow_partial
    )
    return cfg, model.eval(), report


def convert_adelaidet(
    path: str | Path,
    preset: str,
    *,
    allow_partial: bool = False,
    num_classes: int | None = None,
    overrides: list[str] | None = None,
    trust_pickle: bool = False,
) -> tuple[Config, dict[str, Tensor], ConversionReport]:
    """Convert an AdelaiDet BlendMask checkpoint into our config + state dict.

    Args:
        path: the AdelaiDet `.pth` / `.pkl` (see `interop.adelaidet.read_adelaidet_checkpoint`).
        preset: the preset of the same architecture (`ADELAIDET_PRESETS`); its data settings
            (test size) are kept.
        allow_partial: load what fits, skip missing / unexpected / mis-shaped keys (listed in
            the report) instead of raising.
        num_classes: C, foreground classes. Default: read from `cls_logits`; a different value
            needs `allow_partial` (the classifier and the semantic head are then skipped).
        overrides: `a.b=value` config overrides applied to the preset before building.
        trust_pickle: see `read_adelaidet_checkpoint`.

    Returns:
        (config with the MSRA input conventions and the class count, our state dict including
        the pixel_mean / pixel_std buffers, report).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable file, inconsistent num_classes, or (strict) any missing,
            unexpected or mis-shaped key: one message naming the file and the keys.
    """
    cfg, model, report = convert_adelaidet_model(
        path,
        preset,
        allow_partial=allow_partial,
        num_classes=num_classes,
        overrides=overrides,
        trust_pickle=trust_pickle,
    )
    return cfg, {k: v.detach() for k, v in model.state_dict().items()}, report


@dataclass
class ConvertedModel:
    """What `convert_to_model_file` wrote: the config, the network (CPU) and the report."""

    cfg: Config
    model: nn.Module
    report: ConversionReport

    @property
    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.model.parameters())


def convert_to_model_file(
    path: str | Path,
    preset: str,
    out: str | Path,
    *,
    device: str = "cpu",
    allow_partial: bool = False,
    num_classes: int | None = None,
    overrides: list[str] | None = None,
    trust_pickle: bool = False,
) -> ConvertedModel:
    """Convert, run the network once on a blank image on `device`, then write `out`.

    Raises:
        ValueError: as `convert_adelaidet`, or the network gives non-finite outputs (nothing is
            written then).
    """
    dev = resolve_device(device)
    cfg, model, report = convert_adelaidet_model(
        path,
        preset,
        allow_partial=allow_partial,
        num_classes=num_classes,
        overrides=overrides,
        trust_pickle=trust_pickle,
    )
    with torch.no_grad():
        outputs = model.to(dev)(torch.zeros(1, 3, 64, 64, device=dev))
    checked = [
        *outputs[:5],
        *([outputs.panoptic_logits] if outputs.panoptic_logits is not None else []),
    ]
    if not all(bool(torch.isfinite(t).all()) for t in checked):
        raise ValueError(f"{path}: the converted network gives non-finite outputs")
    model = model.cpu()
    save_model_file(out, cfg, model)
    return ConvertedModel(cfg=cfg, model=model, report=report)
