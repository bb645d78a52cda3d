"""The two measures `ablations.py` takes of every trained run besides COCO AP: CPU time per
image and how instance-specific the attentions are."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

SCORE_THRESHOLD = 0.3  # detections compared by the specificity measure (the Predictor default)
TOP_PER_IMAGE = {"shapes": 10, "nuclei": 20}
TIMED_IMAGES = 10  # time per image: median over the first val images (the CPU is shared)


def time_per_image(
    predictor: Any, images: list[torch.Tensor], clock: Any = time.process_time
) -> float:
    """Median seconds of one `predict_tensors` call (resize, network, post-processing,
    pasting) over the images, after one untimed warm-up call. The default clock is this
    process's CPU time: with one thread it is the compute cost, and unlike wall time it does
    not grow when other jobs take the shared cores."""
    predictor.predict_tensors([images[0]])
    times = []
    for image in images:
        start = clock()
        predictor.predict_tensors([image])
        times.append(clock() - start)
    return statistics.median(times)


def measure_specificity(predictor: Any, images: list[torch.Tensor], top: int) -> dict[str, Any]:
    """`attention_specificity` of the best `top` detections (score >= SCORE_THRESHOLD) of
    every image, with the blender's own normalised attentions (`explain_image`)."""
    from blendmask.explain import explain_image
    from blendmask.metrics.attention import attention_specificity
    from blendmask.predictor import Predictor

    # A Predictor that keeps only the compared detections, so that explain_image pastes no more.
    predictor = Predictor(
        predictor.cfg,
        predictor.model,
        predictor.postprocessor,
        predictor.device,
        score_threshold=SCORE_THRESHOLD,
        max_detections=top,
    )
    weights = [
        explain_image(predictor, image, top=top, score_threshold=SCORE_THRESHOLD).attention_weights
        for image in images
    ]
    return attention_specificity(weights).to_dict()
