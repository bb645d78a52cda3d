"""ONNX export of the BlendMask network, its onnxruntime check, and an onnxruntime predictor.

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
given, so `OnnxPredictor(path)` needs nothing else.

Glossary: N images, P points over all FPN levels (level-major, P3 first), C foreground classes,
K bases, M attention size, H/W padded input size, h/w an image's resized size, H0/W0 original.
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from blendmask.config import Config
from blendmask.modeling.blendmask import compute_points
from blendmask.structures import BlendMaskOutputs, Detections

INPUT_NAMES = ("images", "image_sizes")
OUTPUT_NAMES = ("cls_logits", "bbox_reg", "ctrness", "attentions", "bases")
CONFIG_METADATA_KEY = "blendmask_config"
STRIDES_METADATA_KEY = "blendmask_fpn_strides"
SIZE_DIVISIBILITY = 32


def _require(module: str) -> Any:
    """Import `onnx` / `onnxruntime`, or say which extra installs it."""
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(
            f"{module} is not installed; install the `onnx` extra: pip install 'blendmask[onnx]'"
        ) from None


class ExportableBlendMask(nn.Module):
    """The network with tensors in and a tuple of tensors out, for tracing.

    A wrapper, so `BlendMask.forward` stays untouched (STYLE.md): it drops the outputs that are
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


def _check_size(height: int, width: int) -> None:
    for name, value in (("height", height), ("width", width)):
        if int(value) <= 0 or int(value) % SIZE_DIVISIBILITY:
            raise ValueError(
                f"export {name}: expected a positive multiple of {SIZE_DIVISIBILITY}, got {value}"
            )


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _onnx_export(module: nn.Module, args: tuple, path: str, **kwargs: Any) -> None:
    """torch.onnx.export with the TorchScript exporter; unsupported ops become one line."""
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
    _check_size(height, width)
    from torchvision.ops import DeformConv2d

    if any(isinstance(m, DeformConv2d) for m in model.modules()):
        raise ValueError(
            "ONNX export: the model has deformable convolutions (model.backbone.deform_interval "
            "> 0); torchvision's deform_conv2d has no ONNX op"
        )
    onnx = _require("onnx")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    device = _model_device(model)
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
            _onnx_export(
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

    proto = onnx.load(str(path))
    strides = list(getattr(model, "fpn_strides", []))
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
    return path


def _session(path: str | Path, providers: Sequence[str] | None = None) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ONNX file not found")
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(
            str(path), options, providers=list(providers or ["CPUExecutionProvider"])
        )
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ValueError(f"{path}: not a readable ONNX model ({exc})") from None


def _run_session(session: Any, images: Tensor, image_sizes: Sequence[Sequence[int]]) -> list:
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
    _check_size(int(images.shape[2]), int(images.shape[3]))
    if image_sizes is None:
        image_sizes = [(int(images.shape[2]), int(images.shape[3]))] * int(images.shape[0])
    session = _session(path)
    was_training = model.training
    model.eval()
    try:
        device = _model_device(model)
        expected = ExportableBlendMask(model)(
            images.to(device), torch.as_tensor(image_sizes, dtype=torch.int64, device=device)
        )
    finally:
        model.train(was_training)
    got = _run_session(session, images, image_sizes)
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


def fcos_level_sizes(height: int, width: int, strides: Sequence[int]) -> list[tuple[int, int]]:
    """(Hl, Wl) of every FPN level for a padded input of height x width.

    Each stride-2 step (backbone stages, FPN top block: 3x3 convs with padding 1) maps n to
    ceil(n / 2), and nested ceilings of halvings equal ceil(n / s).
    """
    return [(math.ceil(height / s), math.ceil(width / s)) for s in strides]


def fcos_points(
    height: int, width: int, strides: Sequence[int]
) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    """The network's FCOS points for a padded size, without running the network (§1.6).

    Returns:
        points (Tensor[P, 2]): float (x, y) = (j*s + s//2, i*s + s//2), level-major, row-major
            inside a level; strides (Tensor[P]): float stride of each point;
            num_points_per_level (tuple[int, ...]).
    """
    level_sizes = fcos_level_sizes(height, width, strides)
    points, point_strides = compute_points(level_sizes, list(strides), torch.device("cpu"))
    return points, point_strides, tuple(h * w for h, w in level_sizes)


def outputs_from_onnx(
    arrays: Sequence[np.ndarray], height: int, width: int, strides: Sequence[int]
) -> BlendMaskOutputs:
    """onnxruntime outputs (in OUTPUT_NAMES order) of a height x width batch ->
    BlendMaskOutputs for the post-processor (sem_logits None, points recomputed)."""
    cls_logits, bbox_reg, ctrness, attentions, bases = (torch.from_numpy(a) for a in arrays)
    points, point_strides, counts = fcos_points(height, width, strides)
    if cls_logits.shape[1] != points.shape[0]:
        raise ValueError(
            f"ONNX outputs have {cls_logits.shape[1]} points for a {height}x{width} input but "
            f"FPN strides {list(strides)} give {points.shape[0]}: strides do not match the model"
        )
    return BlendMaskOutputs(
        cls_logits=cls_logits,
        bbox_reg=bbox_reg,
        ctrness=ctrness,
        attentions=attentions,
        bases=bases,
        sem_logits=None,
        points=points,
        strides=point_strides,
        num_points_per_level=counts,
    )


def read_onnx_config(path: str | Path) -> Config | None:
    """The config stored in an exported file's metadata, or None."""
    import yaml

    from blendmask.config import from_dict

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ONNX file not found")
    onnx = _require("onnx")
    # The weights are not needed to read the metadata.
    proto = onnx.load(str(path), load_external_data=False)
    for entry in proto.metadata_props:
        if entry.key == CONFIG_METADATA_KEY:
            return from_dict(yaml.safe_load(entry.value)).validate()
    return None


class OnnxPredictor:
    """Resize + onnxruntime network + PyTorch post-processor: the `Predictor` interface
    without the network code.

    >>> predictor = OnnxPredictor("model.onnx")      # config from the file's metadata
    >>> dets = predictor(["a.jpg"])                  # list[Detections] at original sizes

    Args:
        onnx_path: a file written by `export_onnx`.
        cfg: the model's config; default the one stored in the file.
        providers: onnxruntime execution providers (default CPU).
        batch_size: images per onnxruntime call.
    """

    def __init__(
        self,
        onnx_path: str | Path,
        cfg: Config | None = None,
        *,
        providers: Sequence[str] | None = None,
        batch_size: int = 1,
    ) -> None:
        from blendmask.factory import build_postprocessor

        self.path = Path(onnx_path)
        if cfg is None:
            cfg = read_onnx_config(self.path)
            if cfg is None:
                raise ValueError(
                    f"{self.path}: no blendmask config in the ONNX metadata; pass cfg="
                )
        if batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
        self.cfg = cfg
        self.session = _session(self.path, providers)
        self.postprocessor = build_postprocessor(cfg).eval()
        self.strides = list(cfg.model.fcos.fpn_strides)
        self.min_size = cfg.data.min_size_test
        self.max_size = cfg.data.max_size_test
        self.batch_size = batch_size

    def __call__(self, images: Any) -> list[Detections]:
        """images: one or a list of paths, PIL images, H x W x 3 uint8 arrays or float RGB
        Tensor[3, H, W] in [0, 1] (as `Predictor`)."""
        from blendmask.predictor import to_image_tensor

        if not isinstance(images, (list, tuple)):
            images = [images]
        results: list[Detections] = []
        for start in range(0, len(images), self.batch_size):
            chunk = [to_image_tensor(im) for im in images[start : start + self.batch_size]]
            results.extend(self.predict_tensors(chunk))
        return results

    def raw_outputs(
        self, images: Tensor, image_sizes: Sequence[tuple[int, int]]
    ) -> BlendMaskOutputs:
        """The network's outputs from onnxruntime for a padded batch.

        images (Tensor[N, 3, H, W]): float RGB in [0, 1], padded to multiples of 32.
        """
        height, width = int(images.shape[-2]), int(images.shape[-1])
        arrays = _run_session(self.session, images, image_sizes)
        return outputs_from_onnx(arrays, height, width, self.strides)

    @torch.inference_mode()
    def predict_tensors(self, images: list[Tensor]) -> list[Detections]:
        """Float RGB [0, 1] Tensor[3, H0, W0] at original size -> detections at original size."""
        from blendmask.data.batching import pad_images
        from blendmask.data.transforms import resize_image

        orig_sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
        resized = [resize_image(im, self.min_size, self.max_size) for im in images]
        batch = pad_images(resized, SIZE_DIVISIBILITY)
        outputs = self.raw_outputs(batch.tensor, batch.image_sizes)
        return self.postprocessor(outputs, batch.image_sizes, orig_sizes)


def default_export_size(cfg: Config) -> tuple[int, int]:
    """(height, width) of the config's test size: min_size_test x max_size_test, each rounded
    up to a multiple of 32 (a landscape image at the largest test size)."""

    def up(n: int) -> int:
        return -(-int(n) // SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY

    return up(cfg.data.min_size_test), up(cfg.data.max_size_test)


def add_export_args(parser: argparse.ArgumentParser) -> None:
    """ONNX export of a model file, checked in onnxruntime"""
    parser.add_argument("--weights", required=True, help="model file (model.pt)")
    parser.add_argument("--out", default="model.onnx", help="ONNX file to write")
    parser.add_argument(
        "--height", type=int, default=None, help="trace height (default: test size, /32)"
    )
    parser.add_argument(
        "--width", type=int, default=None, help="trace width (default: max test size, /32)"
    )
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument(
        "--static", action="store_true", help="fixed 1 x 3 x H x W input (no dynamic axes)"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])


def run_export(args: argparse.Namespace) -> int:
    from blendmask.factory import load_model_file
    from blendmask.io import resolve_device

    device = resolve_device(args.device)
    cfg, model, _, _ = load_model_file(args.weights, device)
    default_h, default_w = default_export_size(cfg)
    height = args.height or default_h
    width = args.width or default_w
    dynamic = not getattr(args, "static", False)
    path = export_onnx(
        model, args.out, height=height, width=width, opset=args.opset, dynamic=dynamic, cfg=cfg
    )
    print(f"wrote {path} (opset {args.opset}, traced at {height}x{width}, dynamic={dynamic})")
    generator = torch.Generator().manual_seed(0)
    sizes = [(height, width)]
    if dynamic:
        # A second, smaller size shows that the dynamic axes hold.
        sizes.append(
            (max(SIZE_DIVISIBILITY, height // 64 * 32), max(SIZE_DIVISIBILITY, width // 64 * 32))
        )
    for h, w in sizes:
        images = torch.rand(1, 3, h, w, generator=generator)
        diffs = check_onnx(model, path, images)
        text = ", ".join(f"{name} {diff:.2e}" for name, diff in diffs.items())
        print(f"onnxruntime vs PyTorch at {h}x{w}, max abs diff: {text}")
    return 0
