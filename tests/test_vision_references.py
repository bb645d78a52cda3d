"""torchvision's references/detection evaluation, unmodified, scores `TorchvisionDetector`'s masks.

`engine.evaluate` picks its IoU types with `isinstance(model, MaskRCNN)`: a detector that fails
the check gets box AP only, silently. The references' own engine.py / coco_eval.py /
coco_utils.py / utils.py are read from a pytorch/vision checkout, never from this repository:
the folder named by $BLENDMASK_TV_REFERENCES, else third_party/vision_references/ (git-ignored;
`make vision-references VISION=path/to/vision` fills it). Without them that test skips.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from helpers.self_ground_truth import SIZE, write_ground_truth, write_model
from torchvision.models.detection import KeypointRCNN, MaskRCNN
from torchvision.transforms import functional as F

from blendmask import TorchvisionDetector
from blendmask.evaluation.evaluate import evaluate_model_file

REFERENCES_ENV = "BLENDMASK_TV_REFERENCES"
CHECKOUT = Path(__file__).resolve().parents[1] / "third_party" / "vision_references"
NEEDED = ("engine.py", "coco_eval.py", "coco_utils.py", "utils.py")
# Top-level module names the references use; set aside while they are imported.
MODULE_NAMES = ("engine", "coco_eval", "coco_utils", "utils", "transforms", "presets")


@pytest.fixture(scope="module")
def references() -> Iterator[dict[str, ModuleType]]:
    """engine, coco_utils and utils of references/detection, imported from their folder."""
    folder = Path(os.environ.get(REFERENCES_ENV) or CHECKOUT)
    missing = [name for name in NEEDED if not (folder / name).is_file()]
    if missing:
        pytest.skip(f"torchvision references/detection not found in {folder} (no {missing[0]})")
    saved = {name: sys.modules.pop(name) for name in MODULE_NAMES if name in sys.modules}
    sys.path.insert(0, str(folder))
    try:
        yield {name: importlib.import_module(name) for name in ("engine", "coco_utils", "utils")}
    finally:
        sys.path.remove(str(folder))
        for name in MODULE_NAMES:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(tmp_path_factory.mktemp("model") / "model.pt")


@pytest.mark.slow
def test_is_a_mask_rcnn_for_isinstance_without_its_modules(model_file):
    model = TorchvisionDetector(weights=model_file)
    # references/detection's `_get_iou_types`: bbox + segm, not keypoints
    assert isinstance(model, MaskRCNN) and not isinstance(model, KeypointRCNN)
    # ... and nothing of Mask R-CNN was built: its parameters are BlendMask's alone
    assert not any(hasattr(model, name) for name in ("backbone", "rpn", "roi_heads", "transform"))
    own = TorchvisionDetector(weights=model_file).model.state_dict()
    assert {k.removeprefix("model.") for k in model.state_dict()} >= set(own)
    assert all(k.startswith(("model.", "criterion.")) for k in model.state_dict())
    model.eval()
    out = model([torch.rand(3, SIZE, SIZE)])[0]
    assert out["masks"].shape[1:] == (1, SIZE, SIZE)


def test_references_evaluate_scores_masks_as_blendmask_eval(references, model_file, tmp_path):
    engine, coco_utils, utils = references["engine"], references["coco_utils"], references["utils"]
    folder = tmp_path / "images"
    gt = write_ground_truth(model_file, folder, image_ids=[17, 3, 42])

    def to_float(image: Any, target: Any) -> tuple[Any, Any]:
        return F.to_tensor(image), target  # float RGB in [0, 1], as the references give

    convert = coco_utils.ConvertCocoPolysToMask()
    dataset = coco_utils.CocoDetection(
        str(folder), str(gt), transforms=lambda im, t: to_float(*convert(im, t))
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, collate_fn=utils.collate_fn)
    model = TorchvisionDetector(weights=model_file)
    evaluator = engine.evaluate(model, loader, device=torch.device("cpu"))
    assert sorted(evaluator.coco_eval) == ["bbox", "segm"]  # masks were scored
    ours = evaluate_model_file(
        weights=model_file,
        json_path=gt,
        images=folder,
        out=tmp_path / "eval",
        device="cpu",
        num_workers=0,
    )
    # COCOeval.stats: AP, AP50, AP75 first; maxDets 100 and the model's own 0.0 score floor on
    # both sides, so the numbers are the same, not merely close.
    theirs = {
        f"{iou_type}_{name}": float(evaluator.coco_eval[iou_type].stats[k])
        for iou_type in ("bbox", "segm")
        for k, name in enumerate(("AP", "AP50", "AP75"))
    }
    assert theirs["segm_AP"] > 0.2, theirs
    for key, value in theirs.items():
        assert value == pytest.approx(ours[key], abs=1e-6), (key, theirs, ours)
