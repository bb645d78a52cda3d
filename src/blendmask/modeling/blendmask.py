"""The BlendMask network: normalise, backbone + FPN, FCOS head, top layer, bottom module.

BlendMask (Chen et al., CVPR 2020) Sec. 3 / Fig. 2: a detector tower (FCOS, Sec. 3.1), a top
layer predicting K x M x M attentions per location (Sec. 3.2, "top layer"), and a bottom module
predicting K bases at stride 4 (Sec. 3.2, "bottom module"). The blender (Sec. 3.2, Eq. 1-4)
is pure functions in blender.py; losses and post-processing are separate modules, so
`BlendMask.forward` returns the same kind of raw `BlendMaskOutputs` in train and eval mode.

Reference facts reproduced (docs/reference.md §1.1, 1.5, 1.6): the top layer is one 3x3 conv
shared by all levels, applied to the **bbox-tower** output (the share tower when the cls/bbox
towers are empty), init normal(0.01), bias 0; points are (j*s + s//2, i*s + s//2) in row-major
order per level; levels are concatenated P3 first.

Glossary: N images, L levels, P points over all levels (level-major, P3 first), C foreground
classes, K bases, M attention size, H/W padded input size (multiple of 32), Hl/Wl level size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..structures import BlendMaskOutputs
from .basis_module import DeepLabBasis
from .fcos_head import FCOSHead
from .fpn import FPN

INPUT_FORMATS = ("BGR", "RGB")


def make_top_layer(*, in_channels: int, num_bases: int, attn_size: int) -> nn.Conv2d:
    """The top layer: conv3x3 in_channels -> K*M*M, init normal(0.01), bias 0 (reference)."""
    conv = nn.Conv2d(in_channels, num_bases * attn_size * attn_size, 3, padding=1)
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)
    return conv


def _is_exporting() -> bool:
    """True while tracing / exporting: no Python-side caches or shape checks then."""
    return bool(
        torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()
    )


def compute_points(
    level_sizes: list[tuple[int, int]], strides: list[int], device: torch.device
) -> tuple[Tensor, Tensor]:
    """FCOS locations of every level, level-major, row-major inside a level.

    level_sizes: (Hl, Wl) per level; strides: s per level.
    Returns points (Tensor[P, 2]): float (x, y) = (j*s + s//2, i*s + s//2) in input pixels,
    and strides (Tensor[P]): float stride of each point's level.
    """
    points, point_strides = [], []
    for (h, w), s in zip(level_sizes, strides, strict=True):
        xs = torch.arange(w, dtype=torch.float32, device=device) * s + s // 2
        ys = torch.arange(h, dtype=torch.float32, device=device) * s + s // 2
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        # (Hl, Wl) x 2 -> (Hl*Wl, 2), x first
        level_points = torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)
        points.append(level_points)
        point_strides.append(torch.full_like(level_points[:, 0], float(s)))
    return torch.cat(points, dim=0), torch.cat(point_strides, dim=0)


def _flatten(per_level: list[Tensor]) -> Tensor:
    """[(N, Ch, Hl, Wl)] -> (N, P, Ch), level-major."""
    # (N, Ch, Hl, Wl) -> (N, Hl, Wl, Ch) -> (N, Hl*Wl, Ch)
    flat = [x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1]) for x in per_level]
    return torch.cat(flat, dim=1)


def inside_images(
    image_sizes: list[tuple[int, int]],
    shape: tuple[int, int],
    device: torch.device,
    mirrored: tuple[int, ...] = (),
) -> Tensor:
    """Tensor[N, 1, H, W] bool: True on each image of a padded batch of `shape` (H, W), False
    in the padding. The images sit at the top left, or, mirrored along `mirrored` (-1 left-right,
    -2 upside down: the batch flipped as a whole), at the right / bottom edge."""
    height, width = shape
    sizes = torch.as_tensor(image_sizes, dtype=torch.int64, device=device).view(-1, 2)
    rows = torch.arange(height, device=device)[None, :, None]
    cols = torch.arange(width, device=device)[None, None, :]
    heights, widths = sizes[:, 0, None, None], sizes[:, 1, None, None]
    in_rows = rows >= height - heights if -2 in mirrored else rows < heights
    in_cols = cols >= width - widths if -1 in mirrored else cols < widths
    return (in_rows & in_cols)[:, None]  # (N, H, 1) & (N, 1, W)


class BlendMask(nn.Module):
    """The network: images -> BlendMaskOutputs (raw tensors, same fields in train and eval).

    Args:
        body: returns [C3, C4, C5] (ResNetBody / EfficientNetLite0Body).
        fpn: FPN on [C3, C4, C5].
        head: FCOSHead over all FPN levels.
        top_layer: maps a bbox-tower output (N, head.out_channels, Hl, Wl) to (N, K*M*M, Hl, Wl);
            an nn.Conv2d is (re-)initialised normal(0.01), bias 0, as the reference.
        basis_module: ProtoNet (called with the list of `basis_in_features`) or DeepLabBasis
            (called with (low, high) = the two `basis_in_features`).
        fpn_strides: stride of each FPN level (8, 16, ...), one per level.
        basis_in_features: names among c3, c4, c5, p3, ... that feed the basis module.
        input_format: channel order the weights expect (BGR for MSRA / AdelaiDet weights).
        input_scale: multiply the [0, 1] input by this (255 for MSRA weights, 1 for torchvision).
        pixel_mean / pixel_std: per channel, in `input_format` order and `input_scale` units.
        panoptic_module: optional semantic head on [P2, P3, P4, P5] (`panoptic.SemanticFPNHead`,
            BlendMask Sec. 4.4); needs an FPN built with P2 and a body giving C2 (`with_c2`).
            P2 feeds only this head; the instance outputs are unchanged.

    Module tree (state-dict prefixes): body, fpn, head, top_layer, basis_module, the optional
    panoptic_module, plus the buffers pixel_mean / pixel_std (Tensor[3, 1, 1]).
    """

    def __init__(
        self,
        *,
        body: nn.Module,
        fpn: FPN,
        head: FCOSHead,
        top_layer: nn.Module,
        basis_module: nn.Module,
        fpn_strides: list[int],
        basis_in_features: list[str] | None = None,
        input_format: str = "BGR",
        input_scale: float = 255.0,
        pixel_mean: list[float],
        pixel_std: list[float],
        panoptic_module: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if panoptic_module is not None and not fpn.has_p2:
            raise ValueError("panoptic_module: needs an FPN built with P2 (p2_in_channels > 0)")
        if basis_in_features is None:
            basis_in_features = ["p3", "p4", "p5"]
        if input_format not in INPUT_FORMATS:
            raise ValueError(f"input_format: expected one of {INPUT_FORMATS}, got {input_format!r}")
        if len(pixel_mean) != 3 or len(pixel_std) != 3:
            raise ValueError(
                f"pixel_mean / pixel_std: expected 3 values each, got {pixel_mean} / {pixel_std}"
            )
        if any(s <= 0 for s in pixel_std):
            raise ValueError(f"pixel_std: expected positive values, got {pixel_std}")
        num_levels = fpn.num_levels
        if len(fpn_strides) != num_levels or head.num_levels != num_levels:
            raise ValueError(
                f"fpn_strides: expected one stride per FPN level ({num_levels} levels, head built "
                f"for {head.num_levels}), got {fpn_strides}"
            )
        allowed = ["c3", "c4", "c5"] + [f"p{3 + i}" for i in range(num_levels)]
        unknown = [name for name in basis_in_features if name not in allowed]
        if unknown or not basis_in_features:
            raise ValueError(
                f"basis_in_features: expected names among {allowed}, got {basis_in_features}"
            )
        if isinstance(basis_module, DeepLabBasis) and len(basis_in_features) != 2:
            raise ValueError(
                f"basis_in_features: DeepLab bottom module takes (low, high), e.g. ['c3', 'c5'], "
                f"got {basis_in_features}"
            )
        self.body = body
        self.fpn = fpn
        self.head = head
        self.top_layer = top_layer
        self.basis_module = basis_module
        self.panoptic_module = panoptic_module
        if isinstance(top_layer, nn.Conv2d):
            nn.init.normal_(top_layer.weight, std=0.01)
            if top_layer.bias is not None:
                nn.init.zeros_(top_layer.bias)
        self.fpn_strides = list(fpn_strides)
        self.basis_in_features = list(basis_in_features)
        self.input_format = input_format
        self.input_scale = float(input_scale)
        self.register_buffer(
            "pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(3, 1, 1)
        )
        self.register_buffer(
            "pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(3, 1, 1)
        )
        # (level sizes, device) -> (points, strides); small, cleared when it grows.
        self._points_cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    def normalize(self, images: Tensor, image_sizes: list[tuple[int, int]] | None = None) -> Tensor:
        """images (Tensor[N, 3, H, W]): float RGB in [0, 1] -> the backbone's input.

        Channel order, scale and mean/std follow the weights' convention. The reference pads
        with 0 **after** normalising; our batches are padded with 0 before, so with
        `image_sizes` ((h, w) of each image inside the padding) the padding is zeroed again
        after normalising, as in the reference's input. Inside the image the values equal the
        reference's up to float rounding: it normalises 0-255 floats, we rescale [0, 1] floats
        by `input_scale` first.
        """
        x = images
        if self.input_format == "BGR":
            x = x[:, [2, 1, 0]]
        x = (x * self.input_scale - self.pixel_mean) / self.pixel_std
        if image_sizes is not None:
            if len(image_sizes) != x.shape[0]:
                raise ValueError(
                    f"image_sizes: expected {x.shape[0]} (h, w) pairs, got {len(image_sizes)}"
                )
            inside = inside_images(image_sizes, tuple(x.shape[-2:]), x.device)
            x = x * inside.to(x.dtype)
        return x

    def points(
        self, level_sizes: list[tuple[int, int]], device: torch.device
    ) -> tuple[Tensor, Tensor]:
        """Cached `compute_points` for the level sizes (computed fresh while exporting)."""
        if _is_exporting():
            return compute_points(level_sizes, self.fpn_strides, device)
        key = (tuple(level_sizes), str(device))
        if key not in self._points_cache:
            if len(self._points_cache) >= 32:  # multi-scale training: keep it small
                self._points_cache.clear()
            self._points_cache[key] = compute_points(level_sizes, self.fpn_strides, device)
        return self._points_cache[key]

    def forward(
        self,
        images: Tensor,
        image_sizes: list[tuple[int, int]] | None = None,
        *,
        dense_attentions: bool = True,
        with_sem: bool = True,
    ) -> BlendMaskOutputs:
        """images (Tensor[N, 3, H, W]): float RGB in [0, 1], H and W multiples of 32, zero padded
        at the bottom/right. image_sizes: optional (h, w) per image, see `normalize`.

        The two switches skip work that only training needs; the defaults compute everything
        (what the criterion needs), whatever `self.training` says:
        - `dense_attentions=False`: the top layer (a 3x3 conv to K*M*M channels, the largest
          single layer of the model at P3) is not run densely; the outputs carry its input and
          parameters instead and the post-processor evaluates it at the kept detections only
          (`postprocess.attentions_at`). The same attentions up to float rounding (a matmul
          instead of a conv), ~15% fewer FLOPs at 800 x 1333.
        - `with_sem=False`: no auxiliary semantic logits.

        Returns BlendMaskOutputs: cls_logits (N, P, C), bbox_reg (N, P, 4) in stride units,
        ctrness (N, P), attentions (N, P, K*M*M), bases (N, K, H/4, W/4), sem_logits
        (N, C+1, H/8, W/8) or None, points (P, 2), strides (P,), num_points_per_level, and
        panoptic_logits (N, S+1, H, W) for a panoptic network (None otherwise).
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images: expected a Tensor[N, 3, H, W], got {tuple(images.shape)}")
        if not _is_exporting() and (images.shape[-2] % 32 or images.shape[-1] % 32):
            raise ValueError(
                f"images: expected H and W padded to multiples of 32, got {tuple(images.shape)}"
            )
        x = self.normalize(images, image_sizes)
        panoptic_logits = None
        if self.panoptic_module is None:
            c_features = self.body(x)
            p_features = self.fpn(c_features)
        else:
            c2, *c_features = self.body(x, with_c2=True)
            p2, p_features = self.fpn.forward_with_p2(c2, c_features)
            panoptic_logits = self.panoptic_module([p2, *p_features[:3]])
        cls_logits, bbox_reg, ctrness, bbox_towers = self.head(p_features)
        attentions = [self.top_layer(t) for t in bbox_towers] if dense_attentions else None

        named = {f"c{3 + i}": f for i, f in enumerate(c_features)}
        named.update({f"p{3 + i}": f for i, f in enumerate(p_features)})
        basis_inputs = [named[name] for name in self.basis_in_features]
        if isinstance(self.basis_module, DeepLabBasis):
            bases, sem_logits = self.basis_module(*basis_inputs, with_sem=with_sem)
        else:
            bases, sem_logits = self.basis_module(basis_inputs, with_sem=with_sem)

        # shape entries, not int(): they stay symbolic while tracing for export
        level_sizes = [(f.shape[-2], f.shape[-1]) for f in cls_logits]
        points, strides = self.points(level_sizes, images.device)
        return BlendMaskOutputs(
            cls_logits=_flatten(cls_logits),
            bbox_reg=_flatten(bbox_reg),
            # (N, P, 1) -> (N, P)
            ctrness=_flatten(ctrness).squeeze(2),
            attentions=_flatten(attentions) if attentions is not None else None,
            bases=bases,
            sem_logits=sem_logits,
            points=points,
            strides=strides,
            num_points_per_level=tuple(h * w for h, w in level_sizes),
            bbox_towers=None if dense_attentions else tuple(bbox_towers),
            top_layer_params=None
            if dense_attentions
            else (self.top_layer.weight, self.top_layer.bias),
            panoptic_logits=panoptic_logits,
        )
