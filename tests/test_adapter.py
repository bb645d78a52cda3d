"""The torchvision adapter keeps torchvision's contract: the same training loop runs with
`maskrcnn_resnet50_fpn` and with `TorchvisionDetector`, only the constructor differs; and each
point of the contract (num_classes, weights / from_checkpoint, keywords, float images, soft
masks, target checks) has its own test."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision
from torch import Tensor

from blendmask import TorchvisionDetector
from blendmask.adapter import TargetError
from blendmask.data.coco import CocoDataset

SIZE = 128  # the shapes images are 128 x 128; min_size = max_size = 128 keeps them so
NUM_CLASSES = 5  # torchvision counts the background: the 4 shapes + 1


class ShapesDetection(torch.utils.data.Dataset):
    """The shapes set as a torchvision detection dataset: float [0, 1] image, target with
    1-based labels (references/detection's CocoDetection gives the same)."""

    def __init__(self, coco: CocoDataset) -> None:
        self.coco = coco

    def __len__(self) -> int:
        return len(self.coco)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        image, target = self.coco[index]
        return image.float() / 255, {
            "boxes": target["boxes"],
            "labels": target["labels"] + 1,
            "masks": target["masks"],
            "image_id": torch.tensor(target["image_id"]),
        }


def collate_fn(batch: list) -> tuple:
    return tuple(zip(*batch))  # references/detection/utils.py


def references_loop(model: torch.nn.Module, loader: torch.utils.data.DataLoader) -> tuple:
    """references/detection/engine.py's `train_one_epoch` (2 iterations) and `evaluate`."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.005, momentum=0.9, weight_decay=1e-4)
    model.train()
    for images, targets in itertools.islice(loader, 2):
        images = list(image for image in images)
        targets = [{k: v for k, v in t.items()} for t in targets]
        loss_dict = model(images, targets)
        losses = sum(loss for loss in loss_dict.values())
        assert math.isfinite(losses.item()), loss_dict
        optimizer.zero_grad()
        losses.backward()
        optimizer.step()
    model.eval()
    images, _ = next(iter(loader))
    with torch.no_grad():
        outputs = model(list(images))
    return loss_dict, images, outputs


CONSTRUCTORS: dict[str, Callable[..., torch.nn.Module]] = {
    # Fewer proposals and sampled RoIs than torchvision's defaults (2000 / 1000 and 512)
    # keep its box and mask heads at a CPU test's size.
    "maskrcnn_resnet50_fpn": lambda **kw: torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        rpn_post_nms_top_n_train=200,
        rpn_post_nms_top_n_test=100,
        box_batch_size_per_image=64,
        **kw,
    ),
    "TorchvisionDetector": lambda **kw: TorchvisionDetector(preset="tiny", **kw),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONSTRUCTORS))
def test_torchvision_training_loop_runs_with_either_model(name, shapes_dataset):
    torch.manual_seed(0)
    dataset = ShapesDetection(
        CocoDataset(shapes_dataset["train_json"], shapes_dataset["train_images"])
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=collate_fn)
    model = CONSTRUCTORS[name](
        num_classes=NUM_CLASSES,
        min_size=SIZE,
        max_size=SIZE,
        box_score_thresh=0.0,
        box_detections_per_img=10,
    )
    loss_dict, images, outputs = references_loop(model, loader)
    assert all(v.dim() == 0 and v.requires_grad for v in loss_dict.values())
    assert isinstance(outputs, list) and len(outputs) == len(images)
    for image, out in zip(images, outputs):
        assert set(out) == {"boxes", "labels", "scores", "masks"}
        d, (h, w) = out["boxes"].shape[0], image.shape[-2:]
        assert d > 0
        assert out["boxes"].shape == (d, 4) and out["boxes"].dtype == torch.float32
        assert out["scores"].shape == (d,) and out["scores"].dtype == torch.float32
        assert out["labels"].shape == (d,) and out["labels"].dtype == torch.int64
        assert 1 <= int(out["labels"].min()) and int(out["labels"].max()) < NUM_CLASSES
        assert out["masks"].shape == (d, 1, h, w) and out["masks"].dtype == torch.float32
        assert 0 <= float(out["masks"].min()) and float(out["masks"].max()) <= 1


# --------------------------------------------------------------------------------------------
# Construction: num_classes, keywords, weights / from_checkpoint, from_config


def tiny(**kwargs) -> TorchvisionDetector:
    return TorchvisionDetector(preset="tiny", **kwargs)


def test_num_classes_counts_the_background():
    model = tiny(num_classes=3)
    assert model.num_classes == 3 and model.cfg.model.fcos.num_classes == 2
    assert model.model.head.cls_logits.out_channels == 2
    assert tiny().num_classes == 4  # the tiny preset's 3 classes + the background
    with pytest.raises(ValueError, match="counts the background.*got 1"):
        tiny(num_classes=1)


def test_keywords_set_the_inference_settings_and_sizes():
    model = tiny(
        box_score_thresh=0.3,
        box_nms_thresh=0.4,
        box_detections_per_img=7,
        min_size=(96, 112),
        max_size=200,
    )
    post = model.postprocessor
    assert (post.score_thresh, post.nms_thresh, post.post_nms_topk) == (0.3, 0.4, 7)
    assert model.min_sizes == [96, 112] and model.max_size == 200
    assert model.cfg.data.min_size_test == 112  # evaluation: the last size, as torchvision
    with pytest.raises(ValueError, match="inference_th_test"):
        tiny(box_score_thresh=1.5)


def detections(model: TorchvisionDetector, images: list[Tensor]) -> list[dict[str, Tensor]]:
    model.eval()
    with torch.no_grad():
        return model(images)


def test_weights_and_from_checkpoint_load_a_saved_model(tmp_path: Path):
    torch.manual_seed(0)
    model = tiny(num_classes=3, box_score_thresh=0.0, min_size=64, max_size=96)
    path = tmp_path / "model.pt"
    model.save(path)
    images = [torch.rand(3, 60, 80)]
    want = detections(model, images)
    for loaded in (TorchvisionDetector(weights=path), TorchvisionDetector.from_checkpoint(path)):
        assert loaded.num_classes == 3 and loaded.training  # nn.Module's default mode
        got = detections(loaded, images)
        assert all(torch.equal(got[0][k], want[0][k]) for k in want[0])
    assert TorchvisionDetector(weights=path, box_score_thresh=0.5).postprocessor.score_thresh == 0.5
    with pytest.raises(ValueError, match="'num_classes' expected value 3 but got 5"):
        TorchvisionDetector(weights=path, num_classes=5)
    with pytest.raises(ValueError, match="weights_backbone"):
        TorchvisionDetector(weights=path, weights_backbone=path)


def test_from_config_keeps_working():
    import blendmask

    cfg = blendmask.get_preset("tiny")
    model = TorchvisionDetector.from_config(cfg, box_score_thresh=0.2)
    assert model.num_classes == cfg.model.fcos.num_classes + 1
    assert model.min_sizes == [cfg.data.min_size_test] and model.postprocessor.score_thresh == 0.2


def test_a_resnet_body_without_imagenet_weights_warns(caplog):
    with caplog.at_level("WARNING", logger="blendmask"):
        tiny()
    assert "random weights" in caplog.text and "weights_backbone" in caplog.text


# --------------------------------------------------------------------------------------------
# Images: float [0, 1] only


def test_uint8_images_raise_torchvision_s_type_error():
    image = torch.zeros(3, 40, 50, dtype=torch.uint8)
    transform = torchvision.models.detection.transform.GeneralizedRCNNTransform(
        64, 64, [0.0] * 3, [1.0] * 3
    )
    with pytest.raises(TypeError) as theirs:
        transform([image])
    model = tiny().eval()
    with pytest.raises(TypeError) as ours:
        model([image])
    assert str(ours.value) == str(theirs.value)
    assert "floating type (in range [0, 1])" in str(ours.value)


@pytest.mark.parametrize(
    "image, what",
    [
        (torch.full((3, 40, 50), 200.0), r"\[200, 200\].*divide a 0-255 image by 255"),
        (torch.full((3, 40, 50), -1.5), r"\[-1.5, -1.5\].*do not normalise"),
        (torch.full((3, 40, 50), math.nan), "NaN"),
        (torch.zeros(40, 50), "3d tensors of shape"),
        (torch.zeros(1, 40, 50), "RGB"),
    ],
)
def test_other_images_are_refused_with_a_reason(image, what):
    with pytest.raises(ValueError, match=what):
        tiny().eval()([image])


def test_a_batched_tensor_is_a_list_of_images():
    model = tiny(box_score_thresh=0.0).eval()
    batch = torch.rand(2, 3, 48, 64)
    with torch.no_grad():
        pairs = zip(model(batch), model(list(batch)))
        assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in pairs)


# --------------------------------------------------------------------------------------------
# Outputs: masks are probabilities, as Mask R-CNN's


def test_masks_are_probabilities_at_the_image_size():
    torch.manual_seed(0)
    model = tiny(box_score_thresh=0.0)
    image = torch.rand(3, 60, 80)
    out = detections(model, [image])[0]
    masks = out["masks"]
    assert masks.dim() == 4 and masks.shape[1:] == (1, 60, 80) and masks.shape[0] > 0
    assert masks.dtype == torch.float32 and 0 <= masks.min() and masks.max() <= 1
    assert ((masks > 0) & (masks < 1)).any()  # soft, not {0, 1}
    # Thresholded at 0.5 they are the binary masks every other path returns.
    batch, sizes = blendmask_batch(model, image)
    from blendmask.modeling.inference_step import infer

    with torch.no_grad():
        det = infer(model.model, model.postprocessor, batch, sizes)[0]
    assert torch.equal(masks[:, 0] >= 0.5 - 1e-6, det.masks)
    assert torch.equal(out["labels"], det.labels + 1)


def blendmask_batch(model: TorchvisionDetector, image: Tensor):
    from blendmask.data.preprocess import preprocess

    return preprocess([image], model.min_sizes[-1], model.max_size)


# --------------------------------------------------------------------------------------------
# Targets: checked as torchvision checks them, before anything runs


def target(**changes) -> dict[str, Tensor]:
    masks = torch.zeros(1, 40, 50, dtype=torch.uint8)
    masks[0, 10:30, 5:25] = 1
    base = {
        "boxes": torch.tensor([[5.0, 10.0, 25.0, 30.0]]),
        "labels": torch.tensor([2]),
        "masks": masks,
    }
    return {**base, **changes}


def train_step(model: torch.nn.Module, targets: list) -> dict[str, Tensor]:
    model.train()
    return model([torch.rand(3, 40, 50) for _ in targets], targets)


@pytest.fixture(scope="module")
def maskrcnn() -> torch.nn.Module:
    return torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=3, min_size=40, max_size=50
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"boxes": torch.tensor([[5.0, 10.0, 5.0, 30.0]])},  # zero width
        {"boxes": torch.tensor([5.0, 10.0, 25.0, 30.0])},  # not [N, 4]
    ],
)
def test_box_errors_are_torchvision_s(bad, maskrcnn):
    targets = [target(), target(**bad)]
    with pytest.raises(AssertionError) as theirs:
        train_step(maskrcnn, targets)
    with pytest.raises(TargetError) as ours:
        train_step(tiny(num_classes=3), targets)
    assert str(theirs.value).rstrip(".") in str(ours.value)
    assert "for target at index 1" in str(ours.value)


@pytest.mark.parametrize(
    "bad, error, message",
    [
        ({"labels": torch.tensor([0])}, TargetError, r"label 0 \(the background\).*1\.\.2"),
        ({"labels": torch.tensor([3])}, TargetError, r"label 3 .*num_classes=3.*1 to 2.*=4"),
        ({"labels": torch.tensor([1, 2])}, TargetError, r"labels.*shape \[1\]"),
        ({"labels": torch.tensor([1], dtype=torch.int32)}, TypeError, "int64"),
        ({"boxes": torch.tensor([[5, 10, 25, 30]])}, TypeError, "float type"),
        ({"boxes": torch.tensor([[5.0, math.nan, 25.0, 30.0]])}, TargetError, "non-finite"),
        ({"masks": torch.zeros(1, 20, 25, dtype=torch.uint8)}, TargetError, r"\[1, 40, 50\]"),
        ({"masks": None}, TargetError, "masks to be of type Tensor"),
    ],
)
def test_bad_targets_are_refused_naming_the_target(bad, error, message):
    with pytest.raises(error, match=message) as info:
        train_step(tiny(num_classes=3), [target(), target(**bad)])
    assert "target at index 1" in str(info.value)


def test_missing_or_mismatched_targets_are_refused():
    model = tiny(num_classes=3)
    without_masks = {k: v for k, v in target().items() if k != "masks"}
    with pytest.raises(TargetError, match="masks key"):
        train_step(model, [without_masks])
    with pytest.raises(TargetError, match="2 images and 1 targets"):
        model.train()([torch.rand(3, 40, 50)] * 2, [target()])
    with pytest.raises(ValueError, match="targets should not be none") as info:
        model.train()([torch.rand(3, 40, 50)])
    assert isinstance(info.value, AssertionError)  # as torchvision's torch._assert


def test_images_of_different_sizes_train_and_come_back_at_their_size():
    """(Moved from test_api.py.) Two sizes in one batch, as torchvision allows."""
    torch.manual_seed(0)
    model = tiny(box_score_thresh=0.0)
    images = [torch.rand(3, 60, 80), torch.rand(3, 70, 50)]
    masks = [torch.zeros(1, 60, 80, dtype=torch.uint8), torch.zeros(1, 70, 50, dtype=torch.uint8)]
    masks[0][0, 10:40, 20:60] = 1
    masks[1][0, 5:30, 5:45] = 1
    boxes = [torch.tensor([[20.0, 10.0, 60.0, 40.0]]), torch.tensor([[5.0, 5.0, 45.0, 30.0]])]
    labels = [torch.tensor([1]), torch.tensor([3])]
    targets = [{"boxes": b, "labels": c, "masks": m} for b, c, m in zip(boxes, labels, masks)]
    model.train()
    losses = model(images, targets)
    assert set(losses) >= {"loss_fcos_cls", "loss_mask"}
    sum(losses.values()).backward()
    out = detections(model, images)
    assert out[0]["masks"].shape[1:] == (1, 60, 80) and out[1]["masks"].shape[1:] == (1, 70, 50)
    assert min(int(o["labels"].min()) for o in out) >= 1  # 0 is the background


def test_an_image_without_objects_trains():
    model = tiny(num_classes=3)
    empty = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros(0, 40, 50, dtype=torch.uint8),
    }
    losses = train_step(model, [target(), empty])
    total = sum(losses.values())
    assert math.isfinite(total.item())
    total.backward()
