"""Inference post-processing: FCOS decoding, top-k, NMS (FCOS Sec. 3), the top layer at the
kept locations (`attentions_at`), the blender at test time (BlendMask Sec. 3.2) and pasting
into the original image (on demand: `Detections` keeps the R x R masks and their boxes).

Numbers and quirks in docs/reference.md §4 (selection), §1.8 (blending) and §1.9 (pasting):
- candidates are (location, class) pairs with cls * ctr > 0.05 (or cls > 0.05 when
  `thresh_with_ctr` is off), at most `pre_nms_topk` per level and image, by cls * ctr;
- score = sqrt(cls * ctr) in both cases (the reference multiplies by ctr after thresholding);
- boxes (x - l*s, y - t*s, x + r*s, y + b*s) are not clipped before NMS or RoI pooling;
- class-aware NMS at 0.6, then the top 100 with a kthvalue threshold (ties may keep more);
- masks are blended on the unclipped boxes, then boxes are rescaled to the original image,
  clipped, emptied ones dropped, and the masks pasted into the clipped boxes at `>= 0.5`.

Shapes: N images, L levels, P points, C foreground classes, K bases, M attention size,
R bottom resolution, D detections of one image, h/w resized unpadded size, H0/W0 original size,
C_t top-layer input channels, Hl/Wl level size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms

from ..structures import BlenderSpec, BlendMaskOutputs, Detections
from .blender import merge_bases, pool_bases
from .test_time import rescored


def top_k_per_group(scores: Tensor, groups: Tensor, k: int) -> Tensor:
    """Indices of the `k` highest scores within every group, without sorting all candidates.

    Equal to a stable descending sort by score followed by a stable sort by group and the
    first `k` of each group: ties at a group's k-th score keep the lowest indices, and each
    group is listed by decreasing score, ties by increasing index. Each group costs one
    `topk` plus a sort of at most `k` entries instead of two argsorts of all Q candidates
    (1.8 M at score threshold 0 and 800 x 1333).

    Args:
        scores (Tensor[Q]): candidate scores.
        groups (Tensor[Q]): int64 group id (>= 0) of each candidate (here its FPN level).
        k: keep at most this many per group.

    Returns:
        Tensor[Q']: indices into `scores`, grouped by increasing group id, each group by
        decreasing score.
    """
    empty = torch.zeros((0,), dtype=torch.int64, device=scores.device)
    if scores.numel() == 0 or k <= 0:
        return empty
    # detect() passes candidates in location order, so the groups (levels) are contiguous
    # runs: slice them. Any other order takes one mask + nonzero per group.
    contiguous = bool((groups[1:] >= groups[:-1]).all())
    counts = torch.bincount(groups).tolist()  # one host sync; nonzero below syncs anyway
    kept = []
    start = 0
    for g, count in enumerate(counts):
        if count == 0:
            continue
        if contiguous:
            offset, idx = start, None
            group_scores = scores[start : start + count]
            start += count
        else:
            offset, idx = 0, (groups == g).nonzero().squeeze(1)  # increasing index
            group_scores = scores[idx]
        if count > k:
            values, sel = group_scores.topk(k)
            at_least = group_scores >= values[-1]
            if int(at_least.sum()) > k:
                # Ties straddle the cut: of the candidates tied with the k-th score, the
                # lowest indices fill the remaining slots (as a stable sort would).
                sel = at_least.nonzero().squeeze(1)
                above = group_scores[sel] > values[-1]
                sel = sel[above | (torch.cumsum(~above, 0) <= k - int(above.sum()))]
            # increasing index first, so the stable sort below orders ties by index
            sel = sel.sort().values
        else:
            sel = torch.arange(count, device=scores.device)
        order = sel[torch.argsort(group_scores[sel], descending=True, stable=True)]
        kept.append(order + offset if idx is None else idx[order])
    return torch.cat(kept) if kept else empty


def decode_boxes(bbox_reg: Tensor, points: Tensor, strides: Tensor, point: Tensor) -> Tensor:
    """ltrb of the chosen locations -> xyxy in input pixels, unclipped (docs/reference.md §4
    step 3): (x - l*s, y - t*s, x + r*s, y + b*s). The one decoding of the post-processor and
    the end-to-end export, so both round the same way.

    bbox_reg (Tensor[N, P, 4]) in stride units, points (Tensor[P, 2]), strides (Tensor[P]),
    point (Tensor[N, D]) int64 index in P -> Tensor[N, D, 4].
    """
    reg = bbox_reg.float().gather(1, point[..., None].expand(-1, -1, 4))
    reg = reg * strides[point][..., None].float()
    xy = points[point].float()
    return torch.cat([xy - reg[..., :2], xy + reg[..., 2:]], dim=2)


def rescale_boxes(boxes: Tensor, image_sizes: Tensor, orig_sizes: Tensor) -> Tensor:
    """Input pixels -> original pixels, clipped to the image (detectron2's
    `detector_postprocess`, docs/reference.md §1.9 1-2). The one rescaling of the
    post-processor and the end-to-end export: the scale is a float32 quotient of the sizes
    in both, so their boxes agree to the last bit.

    boxes (Tensor[N, D, 4]), image_sizes / orig_sizes (Tensor[N, 2]) (h, w) -> Tensor[N, D, 4].
    """
    orig = orig_sizes.float()
    scale = orig / image_sizes.float()  # (N, 2): (h0 / h, w0 / w)
    x = (boxes[..., 0::2] * scale[:, None, 1:2]).clamp(min=0)
    y = (boxes[..., 1::2] * scale[:, None, 0:1]).clamp(min=0)
    x = torch.minimum(x, orig[:, None, 1:2])
    y = torch.minimum(y, orig[:, None, 0:1])
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


def nonempty_boxes(boxes: Tensor) -> Tensor:
    """Tensor[..., 4] xyxy -> bool Tensor[...]: width > 0 and height > 0, as detectron2's
    `Boxes.nonempty()` (threshold 0): a clipped box is dropped only when it is empty, however
    thin (docs/reference.md §1.9 2)."""
    return (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])


def attentions_at(
    bbox_towers: tuple[Tensor, ...],
    weight: Tensor,
    bias: Tensor | None,
    image_inds: Tensor,
    point_inds: Tensor,
) -> Tensor:
    """The top layer (3x3 conv, padding 1) evaluated only at the given locations.

    Equal to `top_layer(bbox_towers[l])[n, :, y, x]` for each (n, point) up to float rounding
    (one matmul over the 3 x 3 patches instead of a conv), but costs O(D * C_t * 9 * K*M*M)
    instead of a dense conv over every level. The network leaves the top layer unevaluated
    with `dense_attentions=False`; the post-processor and the end-to-end export
    (`export/end_to_end.py`) call this for their kept detections. Traceable: level sizes are
    read from the towers' shapes (one gather per level), so a trace holds for any input size.

    Args:
        bbox_towers (tuple[Tensor[N, C_t, Hl, Wl], ...]): per level, the top layer's input.
        weight (Tensor[K*M*M, C_t, 3, 3]), bias (Tensor[K*M*M] | None): the top layer.
        image_inds (Tensor[D]): int64 image of each location.
        point_inds (Tensor[D]): int64 index in P (level-major, row-major within a level).

    Returns:
        Tensor[D, K*M*M]: attention logits.
    """
    device = point_inds.device
    # Offsets of the 3 x 3 neighbourhood in padded coordinates, row-major (weight's order).
    dy = torch.arange(3, device=device).repeat_interleave(3)
    dx = torch.arange(3, device=device).repeat(3)
    patches = None
    start = 0
    for tower in bbox_towers:
        height, width = tower.shape[-2], tower.shape[-1]
        local = point_inds - start
        inside = (local >= 0) & (local < height * width)
        local = torch.where(inside, local, torch.zeros_like(local))
        y, x = local // width, local % width
        # (D, 9) rows of the (N*(Hl+2)*(Wl+2), C_t) table below, image-major
        flat = (
            image_inds[:, None] * ((height + 2) * (width + 2))
            + (y[:, None] + dy) * (width + 2)
            + (x[:, None] + dx)
        )
        # Zero padding of 1, as the conv's: (N, C_t, Hl+2, Wl+2) -> (N*(Hl+2)*(Wl+2), C_t)
        table = F.pad(tower, (1, 1, 1, 1)).permute(0, 2, 3, 1).reshape(-1, tower.shape[1])
        gathered = table[flat]  # (D, 9, C_t)
        # Exact zeros for the other levels' locations: the sum leaves each patch untouched.
        gathered = torch.where(inside[:, None, None], gathered, torch.zeros_like(gathered))
        patches = gathered if patches is None else patches + gathered
        start = start + height * width
    if patches is None:
        raise ValueError("attentions_at: no bbox tower levels")
    # (D, 9, C_t) -> (D, C_t, 9) -> (D, C_t*9), the order of weight.view(O, C_t*9); flatten,
    # not reshape(-1, ...): onnxruntime's Reshape refuses a -1 next to a zero-size axis.
    patches = patches.transpose(1, 2).flatten(1)
    feats = patches @ weight.reshape(weight.shape[0], -1).t().to(patches.dtype)
    if bias is not None:
        feats = feats + bias.to(feats.dtype)
    return feats


def candidate_threshold(score_threshold: float | None, base: float | None) -> float | None:
    """The candidate threshold (`score_thresh`) that lets detections scoring down to
    `score_threshold` through, when the model's own (`base`) would not; None: keep `base`.

    Candidates need cls * ctr > threshold and score = sqrt(cls * ctr), so a score of `s`
    needs s**2, less a little for float rounding (`Detections.filter` drops anything under
    `s` again). `Predictor` and serve's ONNX backend lower it alike."""
    if score_threshold is None or base is None or score_threshold * score_threshold >= base:
        return None
    return score_threshold * score_threshold * (1 - 1e-4)


class BlendMaskPostProcessor(nn.Module):
    """Raw BlendMaskOutputs -> `Detections` per image, in original-image pixels.

    `detect` (selection and NMS) and `blend` (R x R mask probabilities) are public so the
    explanation / visualisation code can reuse the intermediate results.

    Args:
        blender: the blender's settings for `pool_bases` / `merge_bases` (R, M, pooling,
            interpolation, FCIS assembly); the criterion gets the same value.
        mask_threshold: pasted probabilities `>=` this are foreground (`paste_masks`).
        classes: keep only candidates of these 0-based labels (None: all), before top-k and
            NMS, so the detections budget (`post_nms_topk`) goes to them.
        mask_score_power / test_flip / test_vflip: the test-time refinements of
            `modeling/test_time.py` (off: the reference); `inference_step.infer` reads them.

    The knobs (`score_thresh`, `nms_thresh`, `post_nms_topk`, `classes`, ...) are plain
    attributes read at each call; `blendmask.Predictor` sets them on its own copy.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        score_thresh: float = 0.05,
        pre_nms_topk: int = 1000,
        nms_thresh: float = 0.6,
        post_nms_topk: int = 100,
        thresh_with_ctr: bool = True,
        blender: BlenderSpec = BlenderSpec(),
        mask_threshold: float = 0.5,
        classes: tuple[int, ...] | None = None,
        mask_score_power: float = 0.0,
        test_flip: bool = False,
        test_vflip: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.score_thresh = score_thresh
        self.pre_nms_topk = pre_nms_topk
        self.nms_thresh = nms_thresh
        self.post_nms_topk = post_nms_topk
        self.thresh_with_ctr = thresh_with_ctr
        self.blender = blender
        self.mask_threshold = mask_threshold
        self.classes = classes
        self.mask_score_power = mask_score_power
        self.test_flip, self.test_vflip = test_flip, test_vflip

    @torch.no_grad()
    def detect(self, outputs: BlendMaskOutputs, image_sizes: list[tuple[int, int]]) -> list[dict]:
        """Candidate selection, box decoding and NMS (docs/reference.md §4, steps 1-4).

        Args:
            outputs: raw network outputs.
            image_sizes: (h, w) resized unpadded size of every image (only its count is used:
                boxes are not clipped here, as the reference).

        Returns:
            per image a dict, detections sorted by decreasing score:
            "boxes" (Tensor[D, 4]): xyxy in resized input pixels, unclipped;
            "scores" (Tensor[D]): sqrt(cls * ctr);
            "labels" (Tensor[D]): int64 in [0, C);
            "point_inds" (Tensor[D]): int64 index of the location in P (for its attention);
            "levels" (Tensor[D]): int64 FPN level of the location (0 = P3);
            "attentions" (Tensor[D, K*M*M]): the location's attention logits.
        """
        num_images = outputs.cls_logits.shape[0]
        if len(image_sizes) != num_images:
            raise ValueError(f"expected {num_images} image sizes, got {len(image_sizes)}")
        device = outputs.cls_logits.device
        level_of_point = torch.repeat_interleave(
            torch.arange(len(outputs.num_points_per_level), device=device),
            torch.as_tensor(list(outputs.num_points_per_level), device=device),
        )
        cls = outputs.cls_logits.float().sigmoid()  # (N, P, C)
        ctr = outputs.ctrness.float().sigmoid()  # (N, P)
        cls_ctr = cls * ctr[..., None]
        # THRESH_WITH_CTR: the threshold applies to cls * ctr (before the sqrt); otherwise to
        # cls alone. Ranking and the final score use cls * ctr either way.
        candidates = (cls_ctr if self.thresh_with_ctr else cls) > self.score_thresh
        if self.classes is not None:
            wanted = torch.zeros(cls.shape[-1], dtype=torch.bool, device=device)
            wanted[list(self.classes)] = True
            candidates &= wanted

        results = []
        for i in range(num_images):
            point_inds, labels = candidates[i].nonzero(as_tuple=True)
            scores = cls_ctr[i, point_inds, labels]
            levels = level_of_point[point_inds]
            keep = top_k_per_group(scores, levels, self.pre_nms_topk)
            point_inds, labels, scores, levels = (
                point_inds[keep],
                labels[keep],
                scores[keep],
                levels[keep],
            )
            boxes = decode_boxes(
                outputs.bbox_reg[i : i + 1], outputs.points, outputs.strides, point_inds[None]
            )[0]
            scores = scores.sqrt()

            keep = batched_nms(boxes, scores, labels, self.nms_thresh)  # by decreasing score
            if keep.numel() > self.post_nms_topk > 0:
                # kthvalue threshold as the reference: ties with the 100th score are all kept.
                kth = torch.kthvalue(scores[keep], keep.numel() - self.post_nms_topk + 1).values
                keep = keep[scores[keep] >= kth]
            results.append(
                {
                    "boxes": boxes[keep],
                    "scores": scores[keep],
                    "labels": labels[keep],
                    "point_inds": point_inds[keep],
                    "levels": levels[keep],
                    "attentions": self._attentions(outputs, i, point_inds[keep]),
                }
            )
        return results

    @staticmethod
    def _attentions(outputs: BlendMaskOutputs, image: int, point_inds: Tensor) -> Tensor:
        """Attention logits (Tensor[D, K*M*M]) of the kept locations of one image."""
        if outputs.attentions is not None:
            return outputs.attentions[image, point_inds]
        if outputs.bbox_towers is None or outputs.top_layer_params is None:
            raise ValueError("outputs hold neither attentions nor bbox_towers + top_layer_params")
        weight, bias = outputs.top_layer_params
        # Only this image's towers: the gather tables stay one image large.
        towers = tuple(t[image : image + 1] for t in outputs.bbox_towers)
        return attentions_at(towers, weight, bias, torch.zeros_like(point_inds), point_inds)

    @torch.no_grad()
    def blend(self, bases: Tensor, boxes: list[Tensor], attentions: list[Tensor]) -> list[Tensor]:
        """R x R mask probabilities of every detection (docs/reference.md §1.8, inference).

        Args:
            bases (Tensor[N, K, Hb, Wb]): the network's bases.
            boxes (list[Tensor[D_i, 4]]): unclipped xyxy in resized input pixels.
            attentions (list[Tensor[D_i, K*M*M]]): attention logits.

        Returns:
            list[Tensor[D_i, R, R]]: sigmoid of the blended logits.
        """
        counts = [b.shape[0] for b in boxes]
        if sum(counts) == 0:
            r = self.blender.resolution
            return [bases.new_zeros((0, r, r)) for _ in counts]
        pooled_bases = pool_bases(bases.float(), boxes, self.blender)
        logits = merge_bases(pooled_bases, torch.cat(attentions).float(), self.blender)
        return list(logits.sigmoid().split(counts))

    @torch.no_grad()
    def forward(
        self,
        outputs: BlendMaskOutputs,
        image_sizes: list[tuple[int, int]],
        orig_sizes: list[tuple[int, int]] | None = None,
    ) -> list[Detections]:
        """Detections per image, in original-image pixels.

        Args:
            outputs: raw network outputs.
            image_sizes: (h, w) resized unpadded size of every image.
            orig_sizes: (H0, W0) to rescale to; defaults to `image_sizes`.

        Returns:
            list[Detections]: masks bool[D, H0, W0], held box-local (`mask_probs` R x R in
            each clipped box) and pasted on first access to `.masks`
            (`Detections.mask_windows` reads them one detection at a time).
        """
        if orig_sizes is None:
            orig_sizes = image_sizes
        if len(orig_sizes) != len(image_sizes):
            raise ValueError(f"got {len(image_sizes)} image sizes but {len(orig_sizes)} orig sizes")
        dets = self.detect(outputs, image_sizes)
        probs = self.blend(
            outputs.bases, [d["boxes"] for d in dets], [d["attentions"] for d in dets]
        )
        results = []
        for det, prob, (h, w), (h0, w0) in zip(dets, probs, image_sizes, orig_sizes):
            h0, w0 = int(h0), int(w0)
            det, prob = rescored(det, prob, self.mask_threshold, self.mask_score_power)
            # detectron2's detector_postprocess: scale, clip, drop empty, then paste.
            sizes = torch.tensor([[h, w], [h0, w0]], device=det["boxes"].device)
            boxes = rescale_boxes(det["boxes"][None], sizes[:1], sizes[1:])[0]
            nonempty = nonempty_boxes(boxes)
            if not bool(nonempty.any()):
                results.append(Detections.empty(h0, w0, device=boxes.device))
                continue
            # Quirk kept: the mask was blended on the unclipped box but is pasted into the
            # clipped one (docs/reference.md §1.9, 4). Pasting waits until the masks are read:
            # (D, H0, W0) masks of a large image would need D x H0 x W0 bytes at once.
            results.append(
                Detections(
                    boxes=boxes[nonempty],
                    scores=det["scores"][nonempty],
                    labels=det["labels"][nonempty],
                    mask_probs=prob[nonempty],
                    image_size=(h0, w0),
                    mask_threshold=self.mask_threshold,
                )
            )
        return results
