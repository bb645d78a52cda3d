"""ONNX export of the BlendMask network and its onnxruntime check (`onnx_predictor.py` runs
the exported file).

What is exported is the network of BlendMask Sec. 3 / Fig. 2 up to its raw outputs: backbone,
FPN, FCOS towers (Sec. 3.1), the top layer's attentions and the bottom module's bases
(Sec. 3.2). Selection, NMS, the blender (Sec. 3.2, Eq. 1-4) and pasting stay in PyTorch
(`BlendMaskPostProcessor`): they are data-dependent (number of detections) and cheap.

The graph (ONNX opset 17 by default, traced with the TorchScript exporter):

    inputs   images       float32 [N, 3, H, W]  RGB in [0, 1], zero padded at the bottom/right,
                                                H and W multiples of 32
             image_sizes  int64   [N, 2]        (h, w) of each image inside the padding
    outputs  cls_logits   float32 [N, P, C]     classification logits
             bbox_reg     float32 [N, P, 4]     ltrb in units of each point's stride
             ctrness      float32 [N, P]        centerness logits
             attentions    float32 [N, P, K*M*M] attention logits
             bases        float32 [N, K, H/4, W/4]

N, H and W are dynamic axes (P follows H and W). The FCOS points are not outputs: they depend
only on the padded size and the FPN strides, and `fcos_points` recomputes them with the
network's formula. The auxiliary semantic head is training-only and is left out.
The ONNX file's metadata holds the resolved config (`blendmask_config`, YAML) when it is
given, so `OnnxPredictor(path)` (export/onnx_predictor.py) needs nothing else.

Glossary: N images, P points over all FPN levels (level-major, P3 first), C foreground classes,
K bases, M attention size, H/W padded input size, h/w an image's resized size, H0/W0 original.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from blendmask.atomic import refuse_link
from blendmask.config import Config

INPUT_NAMES = ("images", "image_sizes")
OUTPUT_NAMES = ("cls_logits", "bbox_reg", "ctrness", "attentions", "bases")
CONFIG_METADATA_KEY = "blendmask_config"
STRIDES_METADATA_KEY = "blendmask_fpn_strides"
SIZE_DIVISIBILITY = 32


def require_module(module: str) -> Any:
    """Import `onnx` / `onnxruntime`, or say which extra installs it."""
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(
            f"{module} is not installed; install the `onnx` extra: pip install 'blendmask[onnx]'"
        ) from None


class ExportableBlendMask(nn.Module):
    """The network with tensors in and a tuple of tensors out, for tracing.

    A wrapper, so `BlendMask.forward` stays the one forward of training and eval: it drops the outputs that are
    not part of the graph (points, strides and level sizes, which `fcos_points` recomputes;
    the training-only semantic logits).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, ...]:
        """images (Tensor[N, 3, H, W]): float RGB in [0, 1], padded to multiples of 32.
        image_sizes (Tensor[N, 2]): int64 (h, w) inside the padding; the network zeroes the
        padding after normalising, as the reference.

        Returns (cls_logits, bbox_reg, ctrness, attentions, bases), see the module docstring.
        """
        out = self.model(images, image_sizes)
        return out.cls_logits, out.bbox_reg, out.ctrness, out.attentions, out.bases


def check_size(height: int, width: int) -> None:
    for name, value in (("height", height), ("width", width)):
        if int(value) <= 0 or int(value) % SIZE_DIVISIBILITY:
            raise ValueError(
                f"export {name}: expected a positive multiple of {SIZE_DIVISIBILITY}, got {value}"
            )


def refuse_deformable(model: nn.Module, what: str = "ONNX export") -> None:
    """ValueError when the model has deformable convolutions: torchvision's deform_conv2d has
    no ONNX op (TorchScript keeps it as the torchvision op)."""
    from torchvision.ops import DeformConv2d

    if any(isinstance(m, DeformConv2d) for m in model.modules()):
        raise ValueError(
            f"{what}: the model has deformable convolutions (model.backbone.deform_interval "
            "> 0); torchvision's deform_conv2d has no ONNX op"
        )


def model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def supported_opsets() -> tuple[int, int]:
    """(lowest, highest) ONNX opset the installed torch's TorchScript exporter writes. torch
    has no public name for them; its `torch.onnx._constants` holds them (read defensively)."""
    try:
        from torch.onnx import _constants
    except ImportError:  # pragma: no cover - a torch that moved them: let the exporter judge
        return 1, 10**6
    low = getattr(_constants, "ONNX_MIN_OPSET", 1)
    high = getattr(
        _constants,
        "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET",
        getattr(_constants, "ONNX_MAX_OPSET", 10**6),
    )
    return int(low), int(high)


def check_opset(opset: int) -> int:
    """`opset`, or ValueError when the exporter cannot write it (torch's own error comes after
    the whole traced graph has been printed, and exits 1 through the CLI)."""
    low, high = supported_opsets()
    if not low <= opset <= high:
        raise ValueError(
            f"--opset {opset}: torch {torch.__version__} exports opsets {low} to {high}"
        )
    return opset


def onnx_export(module: nn.Module, args: tuple, path: str, **kwargs: Any) -> None:
    """torch.onnx.export with the TorchScript exporter; an opset it cannot write and
    unsupported ops become one line."""
    check_opset(kwargs.get("opset_version", 17))
    try:
        torch.onnx.export(module, args, path, dynamo=False, **kwargs)
    except torch.onnx.errors.UnsupportedOperatorError as exc:
        # The exporter's message ends with the whole TorchScript graph: keep the first line.
        first = str(exc).strip().splitlines()[0]
        raise ValueError(f"ONNX export: {first}") from None


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    height: int,
    width: int,
    opset: int = 17,
    dynamic: bool = True,
    cfg: Config | None = None,
) -> Path:
    """Trace the network at one (height, width) and write it as ONNX.

    Args:
        model: a `BlendMask` network (its train/eval mode is restored afterwards; the graph is
            always traced in eval mode).
        path: the .onnx file to write (folders are created).
        height, width: padded input size used for tracing, multiples of 32.
        opset: ONNX opset version.
        dynamic: batch, height and width as dynamic axes (otherwise fixed at 1 x H x W).
        cfg: the model's resolved config, stored in the file's metadata for `OnnxPredictor`.

    Returns:
        the written path.
    """
    check_size(height, width)
    refuse_deformable(model)
    onnx = require_module("onnx")
    path = Path(path)
    refuse_link(path)  # the exporters write by name: they would follow a link there
    path.parent.mkdir(parents=True, exist_ok=True)
    device = model_device(model)
    images = torch.rand(1, 3, height, width, device=device)
    image_sizes = torch.tensor([[height, width]], dtype=torch.int64, device=device)
    wrapper = ExportableBlendMask(model)
    was_training = model.training
    dynamic_axes = None
    if dynamic:
        points = {0: "batch", 1: "points"}
        dynamic_axes = {
            "images": {0: "batch", 2: "height", 3: "width"},
            "image_sizes": {0: "batch"},
            "cls_logits": points,
            "bbox_reg": points,
            "ctrness": points,
            "attentions": points,
            "bases": {0: "batch", 2: "bases_height", 3: "bases_width"},
        }
    try:
        # The exporter traces in eval mode and then calls train(mode) on the module it was
        # given, which recurses: a wrapper in its default train mode would leave the network
        # in train mode (BatchNorms on batch statistics). Hence eval() here and the restore
        # of the network's own mode below.
        wrapper.eval()
        with torch.no_grad(), warnings.catch_warnings():
            # Python-side shape checks in forward are traced as constants (they only raise);
            # the deprecation notice is about the TorchScript exporter we choose on purpose.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            onnx_export(
                wrapper,
                (images, image_sizes),
                str(path),
                input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES),
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
            )
    finally:
        model.train(was_training)

    _write_metadata(onnx, path, list(getattr(model, "fpn_strides", [])), cfg)
    return path


def _write_metadata(onnx: Any, path: Path, strides: list[int], cfg: Config | None) -> None:
    """Store the FPN strides and the resolved config in the file, for `OnnxPredictor`."""
    proto = onnx.load(str(path))
    metadata = {STRIDES_METADATA_KEY: json.dumps(strides)}
    if cfg is not None:
        metadata[CONFIG_METADATA_KEY] = cfg.to_yaml()
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = (
        "BlendMask network: images float32[N,3,H,W] RGB [0,1] padded to /32, image_sizes "
        "int64[N,2] -> cls_logits[N,P,C], bbox_reg[N,P,4] (stride units), ctrness[N,P], "
        "attentions[N,P,K*M*M], bases[N,K,H/4,W/4]"
    )
    onnx.save(proto, str(path))


def open_session(path: str | Path, providers: Sequence[str] | None = None) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ONNX file not found")
    ort = require_module("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(
            str(path), options, providers=list(providers or ["CPUExecutionProvider"])
        )
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ValueError(f"{path}: not a readable ONNX model ({exc})") from None


def run_session(session: Any, images: Tensor, image_sizes: Sequence[Sequence[int]]) -> list:
    inputs = {i.name for i in session.get_inputs()}
    if inputs != set(INPUT_NAMES):
        raise ValueError(
            f"ONNX model: expected inputs {list(INPUT_NAMES)} (a blendmask export), "
            f"got {sorted(inputs)}"
        )
    feed = {
        "images": np.ascontiguousarray(images.detach().cpu().float().numpy()),
        "image_sizes": np.asarray(image_sizes, dtype=np.int64).reshape(-1, 2),
    }
    return session.run(list(OUTPUT_NAMES), feed)


@torch.no_grad()
def check_onnx(
    model: nn.Module,
    path: str | Path,
    images: Tensor,
    *,
    image_sizes: Sequence[tuple[int, int]] | None = None,
    atol: float = 1e-4,
) -> dict[str, float]:
    """Run the ONNX file in onnxruntime (CPU) and the network in PyTorch on the same batch.

    Args:
        model: the exported network (run in eval mode; its mode is restored).
        path: the .onnx file.
        images (Tensor[N, 3, H, W]): float RGB in [0, 1], H and W multiples of 32.
        image_sizes: (h, w) of each image inside the padding; default the full padded size.
        atol: allowed max abs difference of an output whose values are at most 1 in
            magnitude; for larger outputs `atol * max |output|` (float32 rounding grows with
            the values: random-init ResNet-50 bases reach ~500).

    Returns:
        {output name: max abs difference}.

    Raises:
        RuntimeError: an output's shape differs or its difference is above the tolerance.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected a Tensor[N, 3, H, W], got {tuple(images.shape)}")
    check_size(int(images.shape[2]), int(images.shape[3]))
    if image_sizes is None:
        image_sizes = [(int(images.shape[2]), int(images.shape[3]))] * int(images.shape[0])
    session = open_session(path)
    was_training = model.training
    model.eval()
    try:
        device = model_device(model)
        expected = ExportableBlendMask(model)(
            images.to(device), torch.as_tensor(image_sizes, dtype=torch.int64, device=device)
        )
    finally:
        model.train(was_training)
    got = run_session(session, images, image_sizes)
    diffs: dict[str, float] = {}
    bad: dict[str, float] = {}
    for name, ref, value in zip(OUTPUT_NAMES, expected, got, strict=True):
        value = torch.from_numpy(value)
        if tuple(value.shape) != tuple(ref.shape):
            raise RuntimeError(
                f"{path}: output {name} has shape {tuple(value.shape)} in onnxruntime but "
                f"{tuple(ref.shape)} in PyTorch for input {tuple(images.shape)}"
            )
        if value.numel() == 0:
            diffs[name] = 0.0
            continue
        ref = ref.float().cpu()
        diffs[name] = float((value - ref).abs().max())
        tolerance = atol * max(1.0, float(ref.abs().max()))
        if not diffs[name] <= tolerance:  # also catches NaN
            bad[name] = tolerance
    if bad:
        raise RuntimeError(
            f"{path}: onnxruntime differs from PyTorch for input {tuple(images.shape)}: "
            + ", ".join(f"{k} by {diffs[k]:.3g} (allowed {tol:.3g})" for k, tol in bad.items())
        )
    return diffs


def default_export_size(cfg: Config) -> tuple[int, int]:
    """(height, width) of the config's test size: min_size_test x max_size_test, each rounded
    up to a multiple of 32 (a landscape image at the largest test size)."""

    def up(n: int) -> int:
        return -(-int(n) // SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY

    return up(cfg.data.min_size_test), up(cfg.data.max_size_test)
