"""Evaluation of a model: `blendmask eval` and the evaluation each training eval period.

- `evaluate.py`: COCO box / mask AP of a model on a COCO json (`evaluate_model`) and of a
  model file (`evaluate_model_file`, `blendmask eval --weights`);
- `evaluate_panoptic.py`: PQ of a panoptic model, and the panoptic results format;
- `request.py`: `EvalRequest`, the command's flags, and the post-processing ones it shares
  with `predict` (`PostprocessRequest`).

The metric maths (pycocotools wrappers, RLE, PQ, tables, plots) is one layer lower, in
`blendmask.metrics`, which knows nothing of models.
"""

from __future__ import annotations
