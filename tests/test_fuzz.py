"""Property-based fuzzing (hypothesis) of the loaders that read files from outside:

- a COCO instances json: random structural mutations of tests/data/tiny_coco (keys deleted,
  values replaced by random json of any type, list items duplicated or dropped, RLE counts
  replaced by random strings of RLE characters), read as a training dataset (every item
  decoded) and scored as the ground truth of `eval --results`;
- image bytes: valid PNG / JPEG / TIFF / GIF / BMP files truncated, bit-flipped, spliced or
  replaced by random bytes, read with `load_image`;
- `model.pt` / `last.pt`: a valid payload with fields deleted or replaced by random values
  (nested dicts and lists, tensors with NaN, huge integers), or its bytes truncated, flipped or
  random, read with `read_model_file` / `read_training_state` and restored into a model;
- YAML config files: random documents (anchors, aliases, tags, duplicate keys) and nesting
  thousands deep, read with `load_config`.

The loaders must either load or raise the package's one error type (ValueError, or
FileNotFoundError for a file the json names that is not there); any other exception is a bug
in the loader. Every example runs under a hard per-example alarm, so a hang (the garbage-RLE
spin in pycocotools' IoU) fails the example instead of the suite. Part of `pytest -m faults`.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import signal
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn

from blendmask.checkpoint_io import read_model_file, save_model_file
from blendmask.config import ConfigError
from blendmask.data.coco import CocoDataset
from blendmask.io import load_image
from blendmask.metrics.results import evaluate_results_file
from blendmask.presets import get_preset, load_config
from blendmask.training import checkpoint as ckpt
from blendmask.training.optim import WarmupMultiStepSchedule, build_optimizer

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600, method="thread")]

TINY = Path(__file__).resolve().parent / "data" / "tiny_coco"
BASE_JSON: dict[str, Any] = json.loads((TINY / "annotations.json").read_text())
OUR_ERRORS = (ValueError, FileNotFoundError)
# Seconds one example may take before it counts as a hang (a normal one takes ~50 ms).
HANG_SECONDS = 10
FUZZ = settings(
    max_examples=150,
    deadline=2000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,  # the same examples on every run: a CI failure reproduces locally
    database=None,  # nothing to replay (derandomized), and no .hypothesis/ in the checkout
)


class Hang(BaseException):
    """An example ran past HANG_SECONDS (BaseException: no `except Exception` swallows it)."""


@contextlib.contextmanager
def hard_timeout(seconds: float) -> Iterator[None]:
    def on_alarm(signum: int, frame: Any) -> None:
        raise Hang(f"no result after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# -- COCO json --------------------------------------------------------------------------------

RLE_CHARS = "".join(chr(c) for c in range(48, 112))  # '0'..'o', the compressed-RLE alphabet
FIELD_NAMES = ["id", "image_id", "category_id", "bbox", "segmentation", "size", "counts",
               "width", "height", "file_name", "iscrowd", "area", "images", "annotations"]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-3, max_value=100),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.text(alphabet=RLE_CHARS, max_size=24),
    st.sampled_from(["garbage!!", "", "a.png", "\\h", "oooooooo0", "PPYo0"]),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=4), children, max_size=4),
    ),
    max_leaves=10,
)


def _pick(data: st.DataObject, node: Any) -> tuple[Any, Any]:
    """A random (container, key) in `node`, walking down from the root."""
    container, key = None, None
    while isinstance(node, (dict, list)) and node:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        container, key = node, data.draw(st.sampled_from(keys))
        node = node[key]
        # Stop here one time in six: most mutations land inside an image or annotation.
        if data.draw(st.integers(0, 5)) == 0:
            break
    return container, key


def _mutate(data: st.DataObject, root: dict[str, Any]) -> None:
    container, key = _pick(data, root)
    if container is None:
        return
    op = data.draw(st.sampled_from(["delete", "replace", "replace", "duplicate", "rle"]))
    if op == "delete":
        del container[key]
    elif op == "duplicate" and isinstance(container, list):
        container.append(copy.deepcopy(container[key]))
    elif op == "rle":
        annotations = root.get("annotations")
        if not isinstance(annotations, list) or not annotations:
            return  # an earlier mutation replaced or emptied them
        ann = data.draw(st.sampled_from(annotations))
        if isinstance(ann, dict) and isinstance(ann.get("segmentation"), dict):
            ann["segmentation"]["counts"] = data.draw(st.text(alphabet=RLE_CHARS, max_size=30))
    else:
        container[key] = data.draw(json_values)


def _load_everything(json_path: Path, work: Path) -> None:
    """What train and `eval --results` do with a json: every item, then COCOeval on it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dropped zero-size boxes are reported by a warning
        dataset = CocoDataset(json_path, TINY / "images")
        for index in range(len(dataset)):
            dataset[index]
    results = work / "results.json"
    results.write_text(json.dumps([{"image_id": 1, "category_id": 3, "bbox": [4, 2, 12, 10],
                                    "score": 0.9}]))  # fmt: skip
    evaluate_results_file(json_path, results, work / "out")


@pytest.mark.slow
@FUZZ
@given(data=st.data())
def test_fuzzed_coco_json_loads_or_raises_our_error(data):
    root = copy.deepcopy(BASE_JSON)
    for _ in range(data.draw(st.integers(1, 3))):
        _mutate(data, root)
    with tempfile.TemporaryDirectory() as tmp:
        json_path = Path(tmp) / "instances.json"
        json_path.write_text(json.dumps(root))
        with hard_timeout(HANG_SECONDS):
            try:
                _load_everything(json_path, Path(tmp))
                event("loaded")
            except OUR_ERRORS as e:
                event(type(e).__name__)  # --hypothesis-show-statistics: loaded vs rejected
                # Names the file at fault: the json, the results json, or an image.
                assert tmp in str(e) or str(TINY) in str(e), str(e)


# -- image bytes ------------------------------------------------------------------------------


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


_RGB = Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 10, 3), dtype=np.uint8))
SEED_IMAGES = [
    _encoded(_RGB, "PNG"),
    _encoded(_RGB, "JPEG"),
    _encoded(_RGB, "BMP"),
    _encoded(_RGB.convert("P"), "GIF"),
    _encoded(Image.fromarray(np.arange(120, dtype=np.uint16).reshape(12, 10) * 500), "PNG"),
    _encoded(Image.fromarray(np.linspace(0, 1, 120, dtype=np.float32).reshape(12, 10)), "TIFF"),
]


@st.composite
def image_bytes(draw: st.DrawFn) -> bytes:
    raw = bytearray(draw(st.sampled_from(SEED_IMAGES)))
    op = draw(st.sampled_from(["truncate", "flip", "splice", "random"]))
    if op == "truncate":
        return bytes(raw[: draw(st.integers(0, len(raw)))])
    if op == "flip":
        for _ in range(draw(st.integers(1, 8))):
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        return bytes(raw)
    if op == "splice":
        at = draw(st.integers(0, len(raw)))
        return bytes(raw[:at]) + draw(st.binary(max_size=64)) + bytes(raw[at:])
    return draw(st.binary(max_size=300))


@contextlib.contextmanager
def pixel_limit(pixels: int) -> Iterator[None]:
    """PIL's decompression-bomb limit lowered for the fuzzer: a flipped header byte can claim
    ~10^8 pixels, which load_image refuses above the limit but must decode below it; with a
    1 M limit each example stays fast on two CI cores while the refusal path is still hit."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


@FUZZ
@given(content=image_bytes())
def test_fuzzed_image_bytes_load_or_raise_our_error(content):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "image"
        path.write_bytes(content)
        with hard_timeout(HANG_SECONDS), pixel_limit(1_000_000), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's UserWarnings about the corrupt metadata
            try:
                image = load_image(path)
            except ValueError as e:
                assert str(path) in str(e)
            else:
                assert image.mode == "RGB" and image.width > 0 and image.height > 0


# -- model.pt / last.pt -----------------------------------------------------------------------

tensors = st.one_of(
    st.sampled_from(
        [
            torch.zeros(2),
            torch.tensor([float("nan")]),
            torch.ones(3, dtype=torch.uint8),
            torch.zeros((), dtype=torch.int64),
            torch.empty(0),
        ]
    ),  # fmt: skip
    st.lists(st.floats(width=32), max_size=5).map(lambda xs: torch.tensor(xs, dtype=torch.float32)),
)
payload_values = st.recursive(
    st.one_of(scalars, tensors, st.binary(max_size=8)),
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(st.text(max_size=12) | st.sampled_from(FIELD_NAMES), children, max_size=4),
    ),
    max_leaves=12,
)
CHECKPOINT_FIELDS = ["format_version", "iteration", "config", "model", "optimizer", "scheduler",
                     "scaler", "rng", "extra", "torch", "numpy", "python", "keys", "state",
                     "param_groups", "params", "solver", "data", "category_ids", "base_lrs"]  # fmt: skip


def _small_run() -> tuple[nn.Module, torch.optim.Optimizer, WarmupMultiStepSchedule]:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    optimizer = build_optimizer(model, base_lr=0.1)
    return model, optimizer, WarmupMultiStepSchedule(optimizer, max_iter=10, steps=[3])


def _base_payloads() -> dict[str, dict[str, Any]]:
    """What blendmask writes: a model.pt (the tiny config, with the small run's weights: the
    reader does not build the network, and 45 MB of resnet18 per example would be slow) and
    the last.pt of a small run."""
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        cfg = get_preset("tiny")
        model, optimizer, schedule = _small_run()
        save_model_file(Path(tmp) / "model.pt", cfg, model)
        model(torch.randn(5, 3)).sum().backward()
        optimizer.step()
        state = ckpt.training_state(model=model, optimizer=optimizer, scheduler=schedule,
                                    scaler=None, iteration=1, config=cfg.to_dict(),
                                    extra={"schedule": {"max_iter": 10, "steps": [3]}})  # fmt: skip
        ckpt.write_training_state(Path(tmp) / "last.pt", state)
        return {name: torch.load(Path(tmp) / name, weights_only=True)
                for name in ("model.pt", "last.pt")}  # fmt: skip


BASE_PAYLOADS = _base_payloads()


def _mutate_payload(data: st.DataObject, root: dict[str, Any]) -> None:
    container, key = _pick(data, root)
    if container is None:
        return
    op = data.draw(st.sampled_from(["delete", "replace", "replace", "add"]))
    if op == "delete":
        del container[key]
    elif op == "add" and isinstance(container, dict):
        container[data.draw(st.sampled_from(CHECKPOINT_FIELDS))] = data.draw(payload_values)
    else:
        container[key] = data.draw(payload_values)


def _read_and_restore(name: str, path: Path) -> None:
    """What predict and `train --resume` do with the file (restoring into a small run whose
    RNG states are put back afterwards)."""
    if name == "model.pt":
        read_model_file(path)
        return
    payload = ckpt.read_training_state(path)
    model, optimizer, schedule = _small_run()
    rng = ckpt.get_rng_state()
    try:
        ckpt.restore_training_state(payload, model=model, optimizer=optimizer,
                                    scheduler=schedule, scaler=None, source=path)  # fmt: skip
    finally:
        ckpt.set_rng_state(rng)


def _check_checkpoint(name: str, path: Path) -> None:
    with hard_timeout(HANG_SECONDS), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            _read_and_restore(name, path)
            event("loaded")
        except OUR_ERRORS as e:
            event(type(e).__name__)
            message = str(e)
            assert message.startswith(f"{path}: "), message
            assert "\n" not in message and len(message) < 1000, message


@pytest.mark.slow
@FUZZ
@given(data=st.data(), name=st.sampled_from(["model.pt", "last.pt"]))
def test_fuzzed_checkpoint_contents_load_or_raise_our_error(data, name):
    root = copy.deepcopy(BASE_PAYLOADS[name])
    if data.draw(st.integers(0, 9)) == 0:
        root = data.draw(payload_values)  # not even a dict
    else:
        for _ in range(data.draw(st.integers(1, 3))):
            _mutate_payload(data, root)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        torch.save(root, path)
        _check_checkpoint(name, path)


@st.composite
def checkpoint_bytes(draw: st.DrawFn) -> tuple[str, bytes]:
    name = draw(st.sampled_from(["model.pt", "last.pt"]))
    buffer = io.BytesIO()
    torch.save(BASE_PAYLOADS[name], buffer)
    raw = bytearray(buffer.getvalue())
    op = draw(st.sampled_from(["truncate", "flip", "random"]))
    if op == "truncate":
        return name, bytes(raw[: draw(st.integers(0, len(raw)))])
    if op == "flip":
        for _ in range(draw(st.integers(1, 8))):
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        return name, bytes(raw)
    prefix = draw(st.sampled_from([b"", b"PK\x03\x04", b"\x80\x02", b"\x80\x04\x95"]))
    return name, prefix + draw(st.binary(max_size=300))


@FUZZ
@given(content=checkpoint_bytes())
def test_fuzzed_checkpoint_bytes_load_or_raise_our_error(content):
    name, raw = content
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(raw)
        _check_checkpoint(name, path)


# -- YAML config files ------------------------------------------------------------------------

YAML_TOKENS = ["preset: tiny\n", "solver:\n", "data:\n", "model:\n", "  max_iter: 3\n",
               "  base_lr: ", "  min_size_train: ", "fpn:\n    out_channels: ", "&a ", "*a ",
               "&b ", "*b ", "<<: ", "!!python/object:os.system ", "!!binary ", "[", "]", "{",
               "}", ", ", ": ", "- ", "\n", "  ", "'", '"', "#", "? ", "|\n", "%YAML 1.1\n",
               "---\n", "...\n", "1", "-1", ".nan", "1e999", "9" * 30, "x", "null", "true"]  # fmt: skip

yaml_texts = st.one_of(
    st.lists(st.sampled_from(YAML_TOKENS), max_size=40).map("".join),
    st.text(max_size=60),
    # nesting: a known key holding brackets or block lists thousands deep
    st.tuples(st.sampled_from(["[", "{a: ", "- "]), st.integers(1, 5000)).map(
        lambda t: "preset: tiny\ndata:\n  min_size_train: " + t[0] * t[1] + "\n"
    ),
)


@FUZZ
@given(text=yaml_texts)
def test_fuzzed_yaml_config_loads_or_raises_our_error(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(text)
        with hard_timeout(HANG_SECONDS):
            try:
                load_config(None, path)
                event("loaded")
            except OUR_ERRORS as e:
                event(type(e).__name__)
                assert isinstance(e, (ConfigError, FileNotFoundError)) or str(path) in str(e)
                assert "\n" not in str(e) and len(str(e)) < 1000, str(e)
