"""Import official AdelaiDet BlendMask checkpoints (no detectron2, no CUDA extensions needed).

BlendMask (Chen et al., CVPR 2020) was published with weights trained by AdelaiDet on detectron2
(`configs/BlendMask/README.md`: R_50_1x, R_50_3x, R_101_3x, R_101_dcni3_5x, 550_R_50_3x,
RT_R_50_4x_syncbn_shtw and its bn-head variant). Such a file maps onto our modules by an
explicit rename table; facts in docs/reference.md §5.

    blendmask convert --adelaidet R_50_1x.pth --preset R_50_1x --out r50.pt

The steps, each a function of this package (the command, `blendmask.convert`, chains
them with `factory.build_network` and writes the model file):

1. `read_adelaidet_checkpoint` (adelaidet_files.py): the tensors under AdelaiDet's names.
2. `adelaidet_config` (here): a new Config for a preset's network with the checkpoint's class
   count and the MSRA input conventions the weights were trained with (BGR, 0-255, mean
   [103.53, 116.28, 123.675], std 1, stride in the 1x1 conv).
3. `load_adelaidet_state` (here): renames every key with `ADELAIDET_RENAMES` (adelaidet_keys.py;
   one table for every preset family), compares key sets and shapes with the network built from
   that Config and loads. Strict by default: the missing, unexpected and mis-shaped keys are
   counted and the first of each named in one ValueError, with the presets that fit the file.
   `allow_partial` loads what fits and skips the rest, like detectron2's loader (how
   fine-tuning with another class count works).

Lenient on purpose, as PyTorch / detectron2 loading: a BatchNorm's `num_batches_tracked`
missing from the file is set to 0, and one the model has no place for (FrozenBN) is dropped;
both only count batches and never change outputs.

Nothing here builds a network or writes a file: this package only reads, renames and checks.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from blendmask.config import MSRA_PIXEL_MEAN, MSRA_PIXEL_STD, Config
from blendmask.interop.adelaidet_arch import (
    Architecture,
    checkpoint_architecture,
    config_architecture,
    matching_presets,
)
from blendmask.interop.adelaidet_files import read_adelaidet_checkpoint, read_checkpoint_with_notes
from blendmask.interop.adelaidet_keys import (
    ADELAIDET_PRESETS,
    ADELAIDET_RENAMES,
    COCO_CATEGORIES,
    COCO_STUFF_CATEGORIES,
    OWN_BUFFERS,
    adelaidet_to_blendmask_key,
    blendmask_to_adelaidet_key,
)
from blendmask.modeling.state_dict import (
    StateDictReport,
    compare_state_dict,
    load_state_dict_checked,
)

CLS_KEY = "proposal_generator.fcos_head.cls_logits.weight"
SEM_SEG_KEY = "panoptic_module.predictor.weight"  # [S + 1, conv_dims, 1, 1]


def _both_names(theirs: str, ours: str) -> str:
    return theirs if theirs == ours else f"{theirs}  (our {ours})"


@dataclass
class ConversionReport:
    """What a conversion did. Keys: `loaded`/`missing` are ours, `unexpected` AdelaiDet's.

    Fields:
        source: the checkpoint file.
        preset: the preset the model was built from.
        num_classes: C of the built model (foreground classes).
        loaded: our keys filled from the checkpoint.
        missing: our keys the checkpoint lacks (left at their init with allow_partial).
        unexpected: checkpoint keys (AdelaiDet names) with no place in the model.
        mismatched: (AdelaiDet key, our key, checkpoint shape, model shape) of skipped tensors.
        notes: what else was done (prefix stripped, BN counters filled, ...).
        architecture: read off the checkpoint's keys.
        fit: the shared key / shape comparison, in our names, the lists above come from.
        their_names: our key -> the checkpoint key it was renamed from.
    """

    source: str
    preset: str
    num_classes: int
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, str, tuple[int, ...], tuple[int, ...]]] = field(
        default_factory=list
    )
    notes: list[str] = field(default_factory=list)
    architecture: Architecture | None = None
    fit: StateDictReport | None = None
    their_names: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """True when every model tensor came from the checkpoint and nothing was left over."""
        return not (self.missing or self.unexpected or self.mismatched)

    def problems(self) -> str:
        """Per non-empty list (missing, unexpected, mis-shaped), an indented line with its count
        and first keys under AdelaiDet's names (and ours where they differ); empty if complete."""
        if self.fit is None:
            return ""
        unexpected = set(self.fit.unexpected)

        def shown(ours: str) -> str:
            theirs = self.their_names.get(ours) or blendmask_to_adelaidet_key(ours)
            return theirs if ours in unexpected else _both_names(theirs, ours)

        return "\n".join(f"  {line}" for line in self.fit.problem_lines(name=shown))

    def summary(self) -> str:
        """A few lines for the command line."""
        lines = [
            f"{self.source}: {len(self.loaded)} tensors loaded into preset {self.preset} "
            f"({self.num_classes} classes)"
        ]
        skipped = len(self.missing) + len(self.unexpected) + len(self.mismatched)
        if skipped:
            lines.append(f"partial load, skipped {skipped} key{'s' if skipped > 1 else ''}:")
            lines.append(self.problems())
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def msra_conventions(cfg: Config) -> Config:
    """A copy of `cfg` with the input conventions of every AdelaiDet model (detectron2
    defaults, docs/reference.md §1.2) and no ImageNet file (the checkpoint holds the whole network)."""
    out = copy.deepcopy(cfg)
    m = out.model
    m.input_format = "BGR"
    m.input_scale = 255.0
    m.pixel_mean = list(MSRA_PIXEL_MEAN)
    m.pixel_std = list(MSRA_PIXEL_STD)
    m.backbone.stride_in_1x1 = True
    m.backbone.weights = ""
    return out


def adelaidet_config(
    cfg: Config,
    state: dict[str, Tensor],
    *,
    source: str,
    num_classes: int | None = None,
    allow_partial: bool = False,
) -> Config:
    """The Config of the network an AdelaiDet checkpoint loads into; `cfg` is not changed.

    Args:
        cfg: the preset's config (with any overrides); its data settings (test size) are kept.
        state: the checkpoint's tensors (AdelaiDet names), for the class count.
        source: the checkpoint file, for messages.
        num_classes: C, foreground classes. Default: read from `cls_logits`; a different value
            needs `allow_partial` (the classifier and the semantic head are then skipped).
        allow_partial: see `load_adelaidet_state`.

    Returns:
        A validated copy of `cfg` with the class count, the MSRA input conventions and, for 80
        classes, COCO's category names and ids (results then carry COCO ids).

    Raises:
        ValueError: not a ResNet body, or a class count the file does not have (strict).
    """
    if not cfg.model.backbone.name.startswith("resnet"):
        raise ValueError(
            f"preset {cfg.preset}: AdelaiDet checkpoints need a ResNet body, the preset builds "
            f"{cfg.model.backbone.name} (AdelaiDet presets: {', '.join(ADELAIDET_PRESETS)})"
        )
    file_classes = int(state[CLS_KEY].shape[0]) if CLS_KEY in state else None
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes: expected >= 1, got {num_classes}")
    if num_classes is None:
        num_classes = file_classes or cfg.model.fcos.num_classes
    elif file_classes is not None and num_classes != file_classes and not allow_partial:
        raise ValueError(
            f"{source}: {CLS_KEY} has {file_classes} classes but {num_classes} were asked for; "
            "pass --allow-partial to skip the classifier and the semantic head (fine-tuning)"
        )
    out = msra_conventions(cfg)
    out.model.fcos.num_classes = num_classes
    if num_classes == len(COCO_CATEGORIES) and not out.data.category_names:
        # The published models are COCO's: results then carry COCO category ids.
        out.data.category_names = [name for name, _ in COCO_CATEGORIES]
        out.data.category_ids = [cid for _, cid in COCO_CATEGORIES]
    if out.model.panoptic.enabled and SEM_SEG_KEY in state:
        # The semantic head's class count is the file's (S stuff + the "thing" class).
        out.model.panoptic.num_stuff_classes = int(state[SEM_SEG_KEY].shape[0]) - 1
        if out.model.panoptic.num_stuff_classes == len(COCO_STUFF_CATEGORIES):
            if not out.data.stuff_names:
                out.data.stuff_names = [name for name, _ in COCO_STUFF_CATEGORIES]
                out.data.stuff_ids = [cid for _, cid in COCO_STUFF_CATEGORIES]
    return out.validate()


def _arch_hint(arch: Architecture, cfg: Config, preset: str) -> str:
    want = config_architecture(cfg)
    if arch == want:
        return ""
    fits = matching_presets(arch)
    hint = f"  the checkpoint is a {arch.describe()};\n  preset {preset} builds a {want.describe()}"
    if fits:
        hint += f"\n  presets that fit the checkpoint: {', '.join(fits)}"
    return hint + "\n"


def _rename_state(
    state: dict[str, Tensor], expected: dict[str, Tensor], notes: list[str]
) -> tuple[dict[str, Tensor], dict[str, str], list[str]]:
    """(the checkpoint under our names with BN batch counters made to fit, our name -> theirs,
    the counters that were filled with 0); what was done is added to `notes`."""
    renamed: dict[str, Tensor] = {}
    their_names: dict[str, str] = {}
    dropped = 0
    for theirs, tensor in state.items():
        ours = adelaidet_to_blendmask_key(theirs)
        if (
            ours not in expected
            and theirs.endswith(".num_batches_tracked")
            and ours.replace("num_batches_tracked", "running_mean") in expected
        ):
            dropped += 1  # FrozenBN has no batch counter
            continue
        renamed[ours] = tensor
        their_names[ours] = theirs
    filled = [k for k in expected if k.endswith(".num_batches_tracked") and k not in renamed]
    for key in filled:
        renamed[key] = torch.zeros_like(expected[key])
    if dropped:
        notes.append(f"dropped num_batches_tracked of {dropped} norms that are FrozenBN here")
    if filled:
        notes.append(f"set num_batches_tracked to 0 for {len(filled)} BatchNorms")
    cast = Counter(
        str(t.dtype).replace("torch.", "")
        for k, t in renamed.items()
        if k in expected and t.is_floating_point() and t.dtype != torch.float32
    )
    if cast:
        notes.append("cast to float32: " + ", ".join(f"{n} {d}" for d, n in cast.items()))
    return renamed, their_names, filled


def _does_not_fit(report: ConversionReport, cfg: Config) -> ValueError:
    fit = report.fit
    assert fit is not None
    panoptic = any(k.startswith("panoptic_module.") for k in report.unexpected)
    extra = (
        "  a panoptic checkpoint: convert it with a Panoptic_* preset; --allow-partial drops the "
        "semantic branch and P2, which do not feed the instance outputs\n"
        if panoptic
        else ""
    )
    assert report.architecture is not None
    return ValueError(
        f"{report.source}: does not fit preset {report.preset}: {fit.counts()} "
        f"key{'s' if fit.num_problems > 1 else ''} (pass --allow-partial to load what fits)\n"
        + _arch_hint(report.architecture, cfg, report.preset)
        + extra
        + report.problems()
    )


def load_adelaidet_state(
    model: nn.Module,
    state: dict[str, Tensor],
    *,
    cfg: Config,
    source: str,
    notes: list[str] | None = None,
    allow_partial: bool = False,
) -> ConversionReport:
    """Rename an AdelaiDet state dict to our names and load it into `model`.

    Args:
        model: the network built from `cfg` (`adelaidet_config`); changed in place.
        state: the checkpoint's tensors under AdelaiDet names (`read_adelaidet_checkpoint`).
        cfg: the Config the model was built from; names the preset in messages.
        source: the checkpoint file, for messages.
        notes: what reading the file did (`read_checkpoint_with_notes`); kept in the report.
        allow_partial: load what fits, skip missing / unexpected / mis-shaped keys (listed in
            the report; skipped model tensors keep their initialisation) instead of raising.

    Raises:
        ValueError: (strict) anything missing, unexpected or mis-shaped: one message naming the
            file, the counts, the first keys of each kind and the presets that fit the file.
    """
    notes = list(notes or [])
    expected = {k: v for k, v in model.state_dict().items() if k not in OWN_BUFFERS}
    renamed, their_names, filled = _rename_state(state, expected, notes)
    fit = compare_state_dict(expected, renamed, source=source)
    report = ConversionReport(
        source=source,
        preset=cfg.preset,
        num_classes=cfg.model.fcos.num_classes,
        loaded=[k for k in fit.loaded if k not in filled],
        missing=list(fit.missing),
        unexpected=[their_names[k] for k in fit.unexpected],
        mismatched=[
            (their_names[m.key], m.key, m.file_shape, m.model_shape) for m in fit.mismatched
        ],
        architecture=checkpoint_architecture(state),
        fit=fit,
        their_names=their_names,
    )
    if report.architecture.depth is not None:
        notes.append(f"checkpoint: {report.architecture.describe()}")
    report.notes = notes
    if not fit.complete and not allow_partial:
        raise _does_not_fit(report, cfg)
    # What fits is loaded; the rest (partial only) keeps the fresh initialisation.
    load_state_dict_checked(model, {k: renamed[k] for k in fit.loaded}, source=source, strict=False)
    return report


__all__ = [
    "ADELAIDET_PRESETS",
    "ADELAIDET_RENAMES",
    "COCO_CATEGORIES",
    "COCO_STUFF_CATEGORIES",
    "Architecture",
    "ConversionReport",
    "adelaidet_config",
    "adelaidet_to_blendmask_key",
    "blendmask_to_adelaidet_key",
    "checkpoint_architecture",
    "config_architecture",
    "load_adelaidet_state",
    "matching_presets",
    "msra_conventions",
    "read_adelaidet_checkpoint",
    "read_checkpoint_with_notes",
]
