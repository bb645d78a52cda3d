"""Prediction: `blendmask predict` as functions.

- `predict.py`: `predict_images`, the command over image files and folders (resumable,
  sharded under torchrun); `video.py`: the same over video files, frame by frame;
- `panoptic_predict.py`: the command for a panoptic model (PNG + segments per image);
- `predict_stream.py`: the input stream, the JSON-lines records and their part files;
- `predict_outputs.py`: what each image writes (masks, overlays, RLE records);
- `predict_settings.py`: OUT/settings.json, which a resumed run must match;
- `predict_ids.py`: COCO image ids for `--coco` results;
- `request.py`: `PredictRequest`, the command's flags as one frozen request.
"""

from __future__ import annotations
