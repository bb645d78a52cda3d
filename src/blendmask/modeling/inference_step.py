"""The one inference step: network (sparse top layer, no semantic logits; the flip views of
`modeling/test_time.py` merged when the post-processor asks for them) -> post-processor.

`Predictor`, `blendmask eval`, `explain` and the torchvision adapter call `infer` (or, for the
network's outputs alone, `network_outputs`), after `data/preprocess.py`.
"""

from __future__ import annotations

import contextlib

from torch import Tensor, nn

from blendmask.modeling.postprocess import BlendMaskPostProcessor
from blendmask.modeling.precision_gate import float32_outputs
from blendmask.modeling.test_time import flip_views, flipped_input, merge_views
from blendmask.runtime.precision import InferencePath
from blendmask.structures import BlendMaskOutputs as Outputs
from blendmask.structures import Detections, ImageBatch


def infer(
    model: nn.Module,
    postprocessor: BlendMaskPostProcessor,
    batch: ImageBatch,
    orig_sizes: list[tuple[int, int]],
    path: InferencePath | None = None,
) -> list[Detections]:
    """The one inference step: network -> post-processor, detections at `orig_sizes`.

    Inference needs neither the dense attention map (the post-processor evaluates the top layer
    only at the kept detections) nor the semantic logits, so the network skips both. `path`
    (default fp32) may run the network in bf16 autocast; the post-processor runs in fp32. With
    the post-processor's `test_flip` / `test_vflip` the network also runs on the mirrored
    batches, merged before post-processing (`modeling/test_time.py`; without them: one run).
    """
    outputs = network_outputs(model, postprocessor, batch, path)
    return postprocessor(outputs, batch.image_sizes, orig_sizes)


def network_outputs(
    model: nn.Module,
    postprocessor: BlendMaskPostProcessor,
    batch: ImageBatch,
    path: InferencePath | None = None,
) -> Outputs:
    """`infer`'s network part: the outputs the post-processor reads (sparse top layer, no
    semantic logits), the flip views merged when the post-processor asks for them."""
    outputs = _network(model, batch.tensor, batch.image_sizes, path)
    views = flip_views(*(getattr(postprocessor, k, False) for k in ("test_flip", "test_vflip")))
    if len(views) > 1:
        runs = [((), outputs)]
        for dims in views[1:]:
            mirrored = flipped_input(model, batch.tensor, batch.image_sizes, dims)
            runs.append((dims, _network(model, mirrored, None, path)))
        outputs = merge_views(runs, postprocessor.blender.attn_size)
    return outputs


def _network(
    model: nn.Module,
    images: Tensor,
    image_sizes: list[tuple[int, int]] | None,
    path: InferencePath | None,
) -> Outputs:
    with path.autocast(images.device) if path else contextlib.nullcontext():
        outputs = model(images, image_sizes, dense_attentions=False, with_sem=False)
    if path is not None and path.dtype != "fp32":
        outputs = float32_outputs(outputs)
    return outputs
