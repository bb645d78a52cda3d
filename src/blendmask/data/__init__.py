"""Data: the COCO-format dataset, transforms, batching, training samplers and synthetic shapes."""

from blendmask.data.batching import collate, pad_images
from blendmask.data.coco import CocoDataset
from blendmask.data.preprocess import preprocess, to_image_tensor
from blendmask.data.samplers import GroupedBatchSampler, TrainingSampler
from blendmask.data.shapes import SHAPE_CLASSES, write_shapes_dataset
from blendmask.data.transforms import (
    Compose,
    RandomHorizontalFlip,
    ResizeShortestEdge,
    get_output_size,
    resize_image,
)
from blendmask.io import load_image

__all__ = [
    "SHAPE_CLASSES",
    "CocoDataset",
    "Compose",
    "GroupedBatchSampler",
    "RandomHorizontalFlip",
    "ResizeShortestEdge",
    "TrainingSampler",
    "collate",
    "get_output_size",
    "load_image",
    "pad_images",
    "preprocess",
    "resize_image",
    "to_image_tensor",
    "write_shapes_dataset",
]
