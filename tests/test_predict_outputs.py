"""What predict makes of one image's detections (`prediction/predict_outputs.py`), at its cost:

- each image's masks are pasted once for its record, its mask files and its overlay;
- the id map needs no full-image temporaries beyond its uint16 result (numpy memory traced).
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import torch
from PIL import Image

import blendmask.prediction.predict_outputs as predict_outputs
import blendmask.structures.paste as paste_module
from blendmask.factory import build
from blendmask.prediction.predict import predict_images
from blendmask.prediction.predict_outputs import id_map
from blendmask.predictor import Predictor
from blendmask.presets import get_preset
from blendmask.structures import Detections
from blendmask.structures.paste import paste_masks


def test_each_image_is_pasted_once(tmp_path, monkeypatch):
    """Fails if the record (RLE), the instance mask files or the overlay paste the masks again
    (each pass costs D windows of matmuls: three of them cost more than the network)."""
    torch.manual_seed(0)
    cfg = get_preset("tiny")
    cfg.model.fcos.inference_th_test = 0.0
    cfg = cfg.validate()
    model, _, post = build(cfg, load_pretrained=False)
    predictor = Predictor(cfg, model, post, "cpu", score_threshold=0.0)
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(folder / f"{k}.png")
    calls = []
    original = paste_module.paste_mask_windows

    def counted(*args, **kwargs):
        calls.append(args[0].shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(paste_module, "paste_mask_windows", counted)
    summary = predict_images(
        weights=None,
        predictor=predictor,
        inputs=[folder],
        out=tmp_path / "out",
        score_threshold=0.0,
        save_masks="instances",
        coco=True,
    )
    assert summary["detections"] > 0 and (tmp_path / "out" / "overlays" / "0.png").is_file()
    assert len(calls) == 2, calls  # one pass per image


def test_id_map_needs_no_full_image_temporaries(monkeypatch):
    """Fails if the id map goes through full-image int32 / int64 arrays (at 10000 x 10000:
    ~2 GB more than the 200 MB uint16 map; issue: 2.64 GB for one image)."""
    # Bands of ~33 rows here, as a 10000-wide image has 420 of 2**22 pixels.
    monkeypatch.setattr(predict_outputs, "_ID_BAND_PIXELS", 2**14, raising=False)
    height, width, count = 600, 500, 40
    generator = torch.Generator().manual_seed(0)
    corner = torch.rand(count, 2, generator=generator) * torch.tensor([width * 0.7, height * 0.7])
    size = (0.1 + 0.2 * torch.rand(count, 2, generator=generator)) * torch.tensor([width, height])
    boxes = torch.cat([corner, corner + size], 1)
    det = Detections(
        boxes,
        torch.rand(count, generator=generator),
        torch.zeros(count, dtype=torch.int64),
        mask_probs=torch.rand(count, 14, 14, generator=generator),
        image_size=(height, width),
    )
    tracemalloc.start()
    try:
        ids = id_map(det)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # brute force: each detection's pasted mask, the most confident painted last
    expected = np.zeros((height, width), np.int64)
    masks = paste_masks(det.mask_probs, det.boxes, (height, width)).numpy()
    for k in det.scores.argsort(stable=True).tolist():
        expected[masks[k]] = k + 1
    assert np.array_equal(ids, expected) and ids.dtype == np.uint16
    assert peak <= 3 * height * width, peak  # the uint16 map plus a band of lookups
