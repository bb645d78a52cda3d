"""The blender explained on one image: bases, attentions and blended masks (BlendMask Sec. 3.2,
Eq. 1-4; the pictures of the paper's Fig. 1 and Fig. 3).

For the top detections of an image the figure shows the four steps of the blender:

- the K bases of the bottom module over the whole image (stride 4);
- Eq. 1: the K bases cropped to the detection's box with RoIAlign (R x R);
- Eq. 2-3: the detection's K x M x M attention resized to R x R and normalised with a softmax
  over K (so the K maps sum to 1 at every pixel; with K = 1 the blender uses a sigmoid and so
  does the figure; with the FCIS assembly the maps are the fixed one-hot cells);
- Eq. 4: the blended mask, sigmoid(sum_k attention_k * cropped base_k).

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

from blendmask.structures import Detections

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from blendmask.predictor import Predictor


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
    from blendmask.data.preprocess import preprocess
    from blendmask.modeling.blender import attention_weights, pool_bases

    if top < 0:
        raise ValueError(f"top: expected a number of detections >= 0, got {top}")
    post = predictor.postprocessor
    spec = post.blender
    batch, orig_sizes = preprocess(
        [image], predictor.min_size, predictor.max_size, device=predictor.device
    )
    outputs = predictor.model(batch.tensor, batch.image_sizes)

    det = post.detect(outputs, batch.image_sizes)[0]
    keep = (det["scores"] >= score_threshold).nonzero().flatten()[:top]
    boxes = det["boxes"][keep].float()
    attentions = det["attentions"][keep].float()
    bases = outputs.bases.float()  # (1, K, Hb, Wb)
    pooled_bases = pool_bases(bases, [boxes], spec)
    weights = attention_weights(attentions, spec, num_bases=bases.shape[1])
    masks = post.blend(outputs.bases, [boxes], [attentions])[0]

    # The final detections come in the same order; the post-processor only drops the boxes
    # that clipping to the image empties.
    final = post(outputs, batch.image_sizes, orig_sizes)[0].to("cpu")
    n_final = min(int((final.scores >= score_threshold).sum()), top)
    final = Detections(
        final.boxes[:n_final], final.scores[:n_final], final.labels[:n_final], final.masks[:n_final]
    )
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

    Row 0: the image with the detections, then the K bases. One row per detection: the box's
    image crop, K attention maps (viridis, 0..1), K cropped bases (same colour scale as the
    whole bases), and the blended mask probability (gray, 0..1).

    Each attention axes has the label "attention/{detection}/{base}" (`Axes.get_label()`), so
    tests and users can find the maps shown.

    Args:
        original_image (Tensor[3, H0, W0]): uint8 or float [0, 1] RGB, the image the
            detections refer to; default the resized input (then the overlay skips the masks
            whose size differs).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from blendmask.visualization import class_name, draw_detections, to_uint8_image

    num_bases = expl.bases.shape[0]
    num_dets = expl.boxes.shape[0]
    cols = 2 + 2 * num_bases if num_dets else 1 + num_bases
    rows = 1 + num_dets
    fig = Figure(figsize=(1.5 * cols, 1.6 * rows + 0.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")

    names = expl.class_names
    background = original_image if original_image is not None else expl.image
    dets = expl.detections
    if tuple(dets.masks.shape[-2:]) != tuple(background.shape[-2:]):
        dets = Detections(
            dets.boxes, dets.scores, dets.labels, dets.masks.new_zeros((0, *background.shape[-2:]))
        )
    overlay = draw_detections(background, dets, class_names=names)
    axes[0, 0].imshow(overlay.permute(1, 2, 0).numpy())
    axes[0, 0].set_title("detections" if num_dets else "no detections", fontsize=7)

    # One symmetric colour scale per base, shared by the whole map and its crops, so a crop
    # reads as the same values as the base it came from.
    limits = [float(expl.bases[k].abs().max().clamp(min=1e-6)) for k in range(num_bases)]
    for k in range(num_bases):
        ax = axes[0, 1 + k]
        ax.imshow(expl.bases[k].numpy(), cmap="RdBu_r", vmin=-limits[k], vmax=limits[k])
        ax.set_title(f"base {k + 1}", fontsize=7)

    height, width = expl.image.shape[-2:]
    for i in range(num_dets):
        row = axes[1 + i]
        x0, y0, x1, y1 = expl.boxes[i].tolist()
        xa, xb = min(max(int(x0), 0), width - 1), min(max(int(round(x1)), 1), width)
        ya, yb = min(max(int(y0), 0), height - 1), min(max(int(round(y1)), 1), height)
        crop = expl.image[:, ya : max(yb, ya + 1), xa : max(xb, xa + 1)]
        row[0].imshow(to_uint8_image(crop).permute(1, 2, 0).numpy())
        label = class_name(int(expl.labels[i]), names)
        row[0].set_title(f"{i + 1}: {label} {float(expl.scores[i]):.2f}", fontsize=7)
        for k in range(num_bases):
            ax = row[1 + k]
            ax.imshow(expl.attention_weights[i, k].numpy(), cmap="viridis", vmin=0, vmax=1)
            ax.set_title(f"attention {k + 1}", fontsize=6)
            ax.set_label(f"attention/{i}/{k}")
            ax = row[1 + num_bases + k]
            ax.imshow(
                expl.pooled_bases[i, k].numpy(), cmap="RdBu_r", vmin=-limits[k], vmax=limits[k]
            )
            ax.set_title(f"cropped base {k + 1}", fontsize=6)
        row[-1].imshow(expl.masks[i].numpy(), cmap="gray", vmin=0, vmax=1)
        row[-1].set_title("blended mask", fontsize=7)
    fig.suptitle(
        "BlendMask blender: cropped bases (Eq. 1) x softmax attentions (Eq. 2-3) -> mask (Eq. 4)",
        fontsize=8,
    )
    fig.tight_layout()
    return fig


def explain_figure(
    predictor: Predictor, image: Any, *, top: int = 4, score_threshold: float = 0.0
) -> Figure:
    """`explain_image` + `draw_explanation`: the figure for one image (see the module docs)."""
    from blendmask.data.preprocess import to_image_tensor

    image_t = to_image_tensor(image)
    expl = explain_image(predictor, image_t, top=top, score_threshold=score_threshold)
    return draw_explanation(expl, original_image=image_t)


def save_explanation(
    weights_or_predictor: str | Path | Predictor,
    image: Any,
    out_png: str | Path,
    *,
    top: int = 4,
    device: str = "cpu",
    score_threshold: float = 0.0,
    dpi: int = 110,
) -> Path:
    """Write the explanation figure of `image` to `out_png`.

    Args:
        weights_or_predictor: a model file (`model.pt`) or a `blendmask.Predictor`.
        image: an image path (or anything `Predictor` accepts).
        device: for a model file only.
    Returns:
        the PNG path (folders created).
    """
    from blendmask.predictor import Predictor

    if isinstance(weights_or_predictor, (str, Path)):
        predictor = Predictor.from_checkpoint(weights_or_predictor, device=device)
    else:
        predictor = weights_or_predictor
    fig = explain_figure(predictor, image, top=top, score_threshold=score_threshold)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=dpi)
    return out_png
