"""The blender explained on one image: bases, attentions and blended masks (BlendMask Sec. 3.2,
Eq. 1-4; the pictures of the paper's Fig. 1 and Fig. 3).

For the top detections of an image the figure shows the four steps of the blender:

- the K bases of the bottom module over the whole image (stride 4);
- Eq. 1: the K bases cropped to the detection's box with RoIAlign (R x R);
- Eq. 2-3: the detection's K x M x M attention resized to R x R and normalised with a softmax
  over K (so the K maps sum to 1 at every pixel; with K = 1 the blender uses a sigmoid and so
  does the figure; with the FCIS assembly the maps are the fixed one-hot cells);
- Eq. 4: the blended mask, sigmoid(sum_k attention_k * cropped base_k);
- how instance-specific the attentions are: the distance between the attention maps of every
  two detections (`metrics/attention.py`; 0: the same maps, 1: different bases everywhere).

`explain_image` collects these tensors (an `Explanation`) from the blender itself
(`modeling/blender.py`: `pool_bases`, `attention_weights`) and the post-processor; this module
only draws them: `draw_explanation` / `explain_figure` make the figure, `save_explanation` writes
the PNG. The `blendmask explain --weights W IMAGE --out PNG` command is `cli/explain.py`.

Glossary: K bases, M attention size, R bottom (RoI) resolution, D explained detections,
h/w resized (network input) size, hb/wb bases size inside the padding, H0/W0 original size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from blendmask.atomic import atomic_write
from blendmask.data.transforms import resize_masks, resize_to
from blendmask.input_images import load_input_image
from blendmask.metrics.attention import pairwise_distances
from blendmask.modeling.blender import attention_weights, pool_bases
from blendmask.modeling.inference_step import network_outputs
from blendmask.modeling.test_time import rescored
from blendmask.predictor import Predictor
from blendmask.structures import Detections
from blendmask.visualization import class_name, draw_detections, to_uint8_image

# The longest side of the detections panel's picture, in pixels: the figure shows no more (it
# is ~1800 px wide at the default dpi), and drawing a larger image only costs memory.
PANEL_MAX_SIDE = 2048

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.gridspec import GridSpec
    from matplotlib.image import AxesImage


@dataclass
class Explanation:
    """The blender's intermediate results for the top detections of one image.

    image (Tensor[3, h, w]): the resized network input (float RGB in [0, 1], no padding).
    detections (Detections): the final detections (original-image pixels), at most `top`
        above the threshold: the same ones unless clipping to the image emptied a box.
    bases (Tensor[K, hb, wb]): the bases inside the padding, hb = ceil(h / 4).
    boxes (Tensor[D, 4]): xyxy in resized-input pixels, unclipped (what the blender pools).
    scores (Tensor[D]), labels (Tensor[D]): by decreasing score.
    attention_weights (Tensor[D, K, R, R]): attention after resizing and softmax over K (Eq. 2-3).
    pooled_bases (Tensor[D, K, R, R]): the bases cropped to each box (Eq. 1).
    masks (Tensor[D, R, R]): the blended mask probabilities (Eq. 4, after the sigmoid).
    class_names (list[str]): names of the contiguous labels (may be empty).
    """

    image: Tensor
    detections: Detections
    bases: Tensor
    boxes: Tensor
    scores: Tensor
    labels: Tensor
    attention_weights: Tensor
    pooled_bases: Tensor
    masks: Tensor
    class_names: list[str]


@torch.no_grad()
def explain_image(
    predictor: Predictor, image: Any, *, top: int = 4, score_threshold: float = 0.0
) -> Explanation:
    """Run `predictor` on one image and keep the blender's intermediate tensors.

    Args:
        predictor: a `blendmask.Predictor` (its config sizes, network and post-processor).
        image: one image as `blendmask.data.preprocess.preprocess` takes it (path, PIL image,
            H x W x 3 array, uint8 or float [0, 1] RGB Tensor[3, H0, W0]); resized and padded
            there, as the Predictor does.
        top: explain at most this many detections, the best first.
        score_threshold: and only those with at least this score.

    Returns:
        an `Explanation` (tensors on the CPU).
    """
    if top < 0:
        raise ValueError(f"top: expected a number of detections >= 0, got {top}")
    post = predictor.postprocessor
    spec = post.blender
    batch, orig_sizes = predictor.preprocess([image])
    # the network as `predict` runs it: the flip views merged when the model asks for them
    outputs = network_outputs(predictor.model, post, batch)

    det = post.detect(outputs, batch.image_sizes)[0]
    # the final scores and order, as the post-processor's (rescored by the masks)
    probs = post.blend(outputs.bases, [det["boxes"]], [det["attentions"]])[0]
    det, probs = rescored(det, probs, post.mask_threshold, post.mask_score_power)
    keep = (det["scores"] >= score_threshold).nonzero().flatten()[:top]
    boxes = det["boxes"][keep].float()
    attentions = det["attentions"][keep].float()
    bases = outputs.bases.float()  # (1, K, Hb, Wb)
    pooled_bases = pool_bases(bases, [boxes], spec)
    weights = attention_weights(attentions, spec, num_bases=bases.shape[1])
    masks = probs[keep]

    # The final detections come in the same order; the post-processor only drops the boxes
    # that clipping to the image empties.
    final = post(outputs, batch.image_sizes, orig_sizes)[0].to("cpu")
    # Box-local, as the post-processor gives them: pasting (`.masks`) costs D x H0 x W0 bytes.
    final = final.filter(score=score_threshold)[:top]
    h, w = batch.image_sizes[0]
    stride = spec.bases_stride
    return Explanation(
        image=batch.tensor[0, :, :h, :w].cpu(),
        detections=final,
        # ceil(h / 4) x ceil(w / 4): the bases that see the image, not the padding
        bases=bases[0, :, : -(-h // stride), : -(-w // stride)].cpu(),
        boxes=boxes.cpu(),
        scores=det["scores"][keep].cpu(),
        labels=det["labels"][keep].cpu(),
        attention_weights=weights.cpu(),
        pooled_bases=pooled_bases.cpu(),
        masks=masks.float().cpu(),
        class_names=list(predictor.cfg.data.category_names),
    )


def draw_explanation(expl: Explanation, *, original_image: Tensor | None = None) -> Figure:
    """The figure of an `Explanation` (matplotlib, Agg canvas, no pyplot state).

    Row 0: the image with the detections, large. Row 1: the K bases, each above the column of
    its crops, with a colour bar (one symmetric scale per base, shared by its crops). One row
    per detection: the box's image crop, K attention maps (viridis, 0..1), K cropped bases, and
    the blended mask probability (gray, 0..1); the first detection row carries the colour bars
    of the attentions and of the mask.

    Each attention axes has the label "attention/{detection}/{base}" (`Axes.get_label()`), so
    tests and users can find the maps shown; each colour bar is reachable from its image
    (`AxesImage.colorbar`).

    Args:
        original_image (Tensor[3, H0, W0]): uint8 or float [0, 1] RGB, the image the
            detections refer to; default the resized input (then the overlay skips the masks
            whose size differs).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    num_bases = expl.bases.shape[0]
    num_dets = expl.boxes.shape[0]
    cols = 2 + 2 * num_bases
    # The detections panel gets ~2.6 rows' height: it is the picture a reader looks at first.
    ratios = [2.6, 1.0] + [1.0] * num_dets
    fig = Figure(figsize=(1.6 * cols, 1.7 * sum(ratios) + 0.5))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(len(ratios), cols, height_ratios=ratios)
    _draw_detections_panel(fig.add_subplot(grid[0, :]), expl, original_image)
    # One symmetric colour scale per base, shared by the whole map and its crops, so a crop
    # reads as the same values as the base it came from.
    limits = [float(expl.bases[k].abs().max().clamp(min=1e-6)) for k in range(num_bases)]
    first = 2 + num_bases - 1  # column of the first cropped base
    for k in range(num_bases):
        ax = fig.add_subplot(grid[1, first + k])
        image = ax.imshow(expl.bases[k].numpy(), cmap="RdBu_r", vmin=-limits[k], vmax=limits[k])
        ax.set_title(f"base {k + 1}", fontsize=7)
        ax.axis("off")
        _colorbar(fig, ax, image)
    _draw_attention_distances(fig.add_subplot(grid[1, 0]), expl)
    note = fig.add_subplot(grid[1, 1:first])
    note.axis("off")
    note.text(
        0.5,
        0.5,
        "bases of the bottom module (stride 4) ->\neach column below crops its base (Eq. 1)",
        ha="center",
        va="center",
        fontsize=8,
    )
    for i in range(num_dets):
        _draw_detection_row(fig, grid, 2 + i, i, expl, limits)
    fig.suptitle(
        "BlendMask blender: cropped bases (Eq. 1) x softmax attentions (Eq. 2-3) -> mask (Eq. 4)",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def _colorbar(fig: Figure, ax: Axes, image: AxesImage) -> None:
    """A thin colour bar just right of `ax`, not taking space from its picture."""
    cax = ax.inset_axes([1.04, 0.0, 0.07, 1.0])
    bar = fig.colorbar(image, cax=cax)
    bar.ax.tick_params(labelsize=5, length=2, pad=1)


def _draw_attention_distances(ax: Axes, expl: Explanation) -> None:
    """The attention distance (`metrics/attention.py`) between every two explained
    detections, 0 (same maps) to 1 (different bases at every pixel). A matrix near 0 means the
    top layer gives every instance the same attention: the blender is then a fixed mixture of
    the bases. No colour bar: the values are written in the cells."""
    ax.set_label("attention-distances")
    count = expl.attention_weights.shape[0]
    if count < 2:
        ax.axis("off")
        ax.text(0.5, 0.5, "attention distance:\nneeds 2 detections", ha="center", fontsize=6)
        return
    distances = pairwise_distances(expl.attention_weights).float()
    ax.imshow(distances.numpy(), cmap="magma", vmin=0, vmax=1)
    for i, row in enumerate(distances.tolist()):
        for j, value in enumerate(row):
            colour = "black" if value > 0.5 else "white"
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=5, color=colour)
    ticks = list(range(count))
    ax.set_xticks(ticks, labels=[str(t + 1) for t in ticks], fontsize=5)
    ax.set_yticks(ticks, labels=[str(t + 1) for t in ticks], fontsize=5)
    pairs = distances[torch.ones(count, count, dtype=torch.bool).triu(diagonal=1)]
    ax.set_title(f"attention distance\nmean {float(pairs.mean()):.2f}", fontsize=6)


def _draw_detections_panel(ax: Axes, expl: Explanation, original_image: Tensor | None) -> None:
    """The image with the explained detections (`draw_detections`), on `ax`."""
    background = original_image if original_image is not None else expl.image
    dets = expl.detections
    if max(background.shape[-2:]) > PANEL_MAX_SIDE and tuple(dets.image_size) == tuple(
        background.shape[-2:]
    ):
        # The panel shows ~2000 pixels at most: draw at that size, not at the original's
        # (an 8000 x 8000 overlay and matplotlib's float copies of it took gigabytes).
        background, dets = _shrink_for_display(background, dets, PANEL_MAX_SIDE)
    if tuple(dets.image_size) != tuple(background.shape[-2:]):
        # Only the resized input to draw on: draw the blender's own boxes (resized-input
        # pixels, clipped as the post-processor clips them) and masks instead.
        height, width = background.shape[-2:]
        boxes = expl.boxes.clone()
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        dets = Detections(
            boxes,
            expl.scores,
            expl.labels,
            mask_probs=expl.masks,
            image_size=(int(height), int(width)),
        )
    overlay = draw_detections(background, dets, class_names=expl.class_names)
    ax.imshow(overlay.permute(1, 2, 0).numpy())
    ax.axis("off")
    ax.set_title("detections" if len(expl.boxes) else "no detections", fontsize=9)


def _shrink_for_display(
    image: Tensor, dets: Detections, max_side: int
) -> tuple[Tensor, Detections]:
    """`image` (Tensor[3, H0, W0]) resized so its longer side is `max_side`, and `dets` at that
    size: box-local masks are pasted at the new size (boxes scaled), dense ones resized."""
    height, width = image.shape[-2:]
    factor = max_side / max(height, width)
    size = (max(1, round(height * factor)), max(1, round(width * factor)))
    scale = torch.tensor([size[1] / width, size[0] / height] * 2)
    boxes = dets.boxes.float() * scale
    if dets.has_dense_masks:
        masks = resize_masks(dets.masks.to(torch.uint8), size).bool()
        small = Detections(boxes, dets.scores, dets.labels, masks)
    else:
        small = Detections(
            boxes,
            dets.scores,
            dets.labels,
            mask_probs=dets.mask_probs,
            image_size=size,
            mask_threshold=dets.mask_threshold,
        )
    return resize_to(image, size), small


def _draw_detection_row(
    fig: Figure, grid: GridSpec, row: int, i: int, expl: Explanation, limits: list[float]
) -> None:
    """Row `row` of the figure: detection `i`'s crop, attentions, cropped bases and mask."""
    num_bases = expl.bases.shape[0]
    axes = [fig.add_subplot(grid[row, c]) for c in range(2 + 2 * num_bases)]
    for ax in axes:
        ax.axis("off")
    height, width = expl.image.shape[-2:]
    x0, y0, x1, y1 = expl.boxes[i].tolist()
    xa, xb = min(max(int(x0), 0), width - 1), min(max(int(round(x1)), 1), width)
    ya, yb = min(max(int(y0), 0), height - 1), min(max(int(round(y1)), 1), height)
    crop = expl.image[:, ya : max(yb, ya + 1), xa : max(xb, xa + 1)]
    axes[0].imshow(to_uint8_image(crop).permute(1, 2, 0).numpy())
    label = class_name(int(expl.labels[i]), expl.class_names)
    axes[0].set_title(f"{i + 1}: {label} {float(expl.scores[i]):.2f}", fontsize=7)
    for k in range(num_bases):
        ax = axes[1 + k]
        attention = ax.imshow(expl.attention_weights[i, k].numpy(), cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"attention {k + 1}", fontsize=6)
        ax.set_label(f"attention/{i}/{k}")
        ax = axes[1 + num_bases + k]
        ax.imshow(expl.pooled_bases[i, k].numpy(), cmap="RdBu_r", vmin=-limits[k], vmax=limits[k])
        ax.set_title(f"cropped base {k + 1}", fontsize=6)
    mask = axes[-1].imshow(expl.masks[i].numpy(), cmap="gray", vmin=0, vmax=1)
    axes[-1].set_title("blended mask", fontsize=7)
    if i == 0:
        # The scales are the same on every row: one bar each, on the first.
        if num_bases:
            _colorbar(fig, axes[num_bases], attention)
        _colorbar(fig, axes[-1], mask)


def explain_figure(
    predictor: Predictor, image: Any, *, top: int = 4, score_threshold: float = 0.0
) -> Figure:
    """`explain_image` + `draw_explanation`: the figure for one image (see the module docs)."""
    # Decoded once (the fewest copies of a large image, and the Predictor's size limit), then
    # passed on as a tensor.
    image_t = load_input_image(image, predictor.max_image_pixels)
    expl = explain_image(predictor, image_t, top=top, score_threshold=score_threshold)
    return draw_explanation(expl, original_image=image_t)


def save_explanation(
    weights_or_predictor: str | Path | Predictor,
    image: Any,
    out_png: str | Path,
    *,
    top: int = 4,
    device: str = "cpu",
    score_threshold: float | None = None,
    dpi: int = 110,
) -> Path:
    """Write the explanation figure of `image` to `out_png` (".png" added when it has no
    suffix, as matplotlib does).

    Args:
        weights_or_predictor: a model file (`model.pt`) or a `blendmask.Predictor`.
        image: an image path (or anything `Predictor` accepts).
        device: for a model file only.
        score_threshold: explain detections scoring at least this (None: every candidate of
            the model). For a model file it is the Predictor's `score_threshold`, so that
            below the candidate threshold it lowers that too (0: the top candidates however
            low, as `predict --conf 0`).
    Returns:
        the PNG path written (folders created).
    """
    if isinstance(weights_or_predictor, (str, Path)):
        predictor = Predictor.from_checkpoint(
            weights_or_predictor, device=device, score_threshold=score_threshold
        )
    else:
        predictor = weights_or_predictor
    fig = explain_figure(predictor, image, top=top, score_threshold=score_threshold or 0.0)
    out_png = Path(out_png)
    if not out_png.suffix:  # savefig would add it: return the name it writes
        out_png = out_png.with_name(out_png.name + ".png")
    fmt = out_png.suffix.lstrip(".").lower()
    # Whole or not at all, never through a link (`atomic_write`).
    atomic_write(out_png, lambda f: fig.savefig(f, format=fmt, dpi=dpi))
    return out_png
