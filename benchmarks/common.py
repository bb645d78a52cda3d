"""Shared helpers of the benchmark scripts: machine description, timing, model construction
with a forced number of detections, precision contexts and JSON output.

The scripts measure the paper's speed claims (BlendMask Sec. 4.3 and Table 8: faster than
Mask R-CNN at the same backbone, a blender that costs little, inference time that does not grow
with the number of detections) against torchvision's Mask R-CNN and FCOS in one process.

Forcing the number of detections (so that every model does the same amount of per-detection
work with random weights): score threshold 0, NMS threshold 1.0 (suppresses nothing: IoU is
never > 1) and detections-per-image N, in all models. Random-weight regression outputs are
near zero, which gives FCOS-style models sub-pixel boxes (empty after clipping, and so cheap to
paste that the per-detection cost would be hidden); our box regressor's bias is therefore set
to `BOX_BIAS` stride units (boxes of 2 * BOX_BIAS strides: 64 px on P3, 1024 px on P7, the
sizes FCOS assigns to those levels) and the mean box size of every model is recorded.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    # Run from a checkout without `pip install -e .` too.
    sys.path.insert(0, str(REPO / "src"))

# The DSB2018 nuclei set: $BLENDMASK_NUCLEI, by default beside the repository (docs/training.md).
NUCLEI_VARIABLE = "BLENDMASK_NUCLEI"
DEFAULT_NUCLEI = REPO.parent / "shared" / "data" / "dsb2018_nuclei"

BOX_BIAS = 4.0  # stride units, see the module docstring
PRECISIONS = ("fp32", "bf16")


# --- machine and environment -------------------------------------------------------------------


def cpu_model() -> str:
    """The processor's name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The vector-unit flags that decide fp32 / bf16 speed (AVX-512, AVX512-BF16, AMX)."""
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [f for f in wanted if f in flags]
    except OSError:
        pass
    return []


def machine_info(threads: int, device: torch.device) -> dict[str, Any]:
    """What the figures depend on: versions, threads, processor, load (the noise indicator)."""
    import torchvision

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "threads": threads,
        "interop_threads": torch.get_num_interop_threads(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "device": str(device),
        "load_average_start": list(os.getloadavg()),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def setup(threads: int, device: str) -> torch.device:
    """Fix the thread count and resolve the device (a clear error for cuda without a GPU)."""
    if threads < 1:
        raise ValueError(f"--threads: expected >= 1, got {threads}")
    torch.set_num_threads(threads)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available (use --device cpu)")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device: expected cpu or cuda, got {device!r}")
    return dev


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- timing --------------------------------------------------------------------------------------


def summarize(times: list[float]) -> dict[str, Any]:
    """Median (the reported figure), min, max and all runs, in seconds."""
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "runs_s": [round(t, 6) for t in times],
    }


def time_once(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Wall time of one call, synchronising a GPU before and after."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def time_fn(
    fn: Callable[[], Any], device: torch.device, *, warmup: int = 1, repeats: int = 3
) -> dict[str, Any]:
    """`warmup` untimed calls, then the median of `repeats` timed ones."""
    if repeats < 1:
        raise ValueError(f"--repeats: expected >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    return summarize([time_once(fn, device)[0] for _ in range(repeats)])


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """fp32: nothing; bf16: torch.autocast on the device (CPU autocast uses AVX512-BF16/AMX)."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision: expected one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def random_image(height: int, width: int, seed: int = 0) -> Tensor:
    """A smooth random RGB image in [0, 1] (Tensor[3, H, W]): low-frequency colour blobs plus a
    little noise, so feature maps are not the degenerate statistics of pure noise."""
    if height < 1 or width < 1:
        raise ValueError(f"--size: expected positive height and width, got {height} x {width}")
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((1, 3, max(height // 32, 2), max(width // 32, 2)), generator=g)
    smooth = torch.nn.functional.interpolate(
        coarse, size=(height, width), mode="bilinear", align_corners=False
    )[0]
    return (smooth + 0.05 * torch.randn((3, height, width), generator=g)).clamp(0, 1)


# --- models --------------------------------------------------------------------------------------


def build_blendmask(
    preset: str,
    *,
    num_detections: int,
    box_bias: float = BOX_BIAS,
    seed: int = 0,
) -> tuple[nn.Module, nn.Module, Any]:
    """Our network and post-processor with random weights, set to return exactly
    `num_detections` per image: score threshold 0, NMS 1.0 (off), post-NMS top-k N.

    Returns (network, post-processor, config), both modules in eval mode.
    """
    from blendmask.factory import build
    from blendmask.presets import get_preset

    cfg = get_preset(preset)
    cfg.model.fcos.inference_th_test = 0.0
    cfg.model.fcos.nms_th = 1.0
    cfg.model.fcos.pre_nms_topk_test = max(cfg.model.fcos.pre_nms_topk_test, num_detections)
    cfg.model.fcos.post_nms_topk_test = num_detections
    torch.manual_seed(seed)
    model, _, post = build(cfg, load_pretrained=False)
    with torch.no_grad():
        model.head.bbox_pred.bias.fill_(box_bias)
    return model.eval(), post.eval(), cfg


def set_blendmask_detections(post: nn.Module, num_detections: int) -> None:
    """Change the number of detections of a post-processor made by `build_blendmask`."""
    post.post_nms_topk = num_detections
    post.pre_nms_topk = max(post.pre_nms_topk, num_detections)


def build_torchvision(
    name: str, *, num_detections: int, size: tuple[int, int], seed: int = 0
) -> nn.Module:
    """torchvision `maskrcnn_resnet50_fpn` / `fcos_resnet50_fpn` with random weights
    (weights=None, weights_backbone=None), set to return exactly `num_detections` per image.

    min_size / max_size are the input's own sides, so torchvision's internal resize is the
    identity and every model sees the same pixels.
    """
    from torchvision.models import detection

    torch.manual_seed(seed)
    min_size, max_size = min(size), max(size)
    if name == "maskrcnn_resnet50_fpn":
        model = detection.maskrcnn_resnet50_fpn(
            weights=None,
            weights_backbone=None,
            min_size=min_size,
            max_size=max_size,
            box_score_thresh=0.0,
            box_nms_thresh=1.0,
            box_detections_per_img=num_detections,
        )
    elif name == "fcos_resnet50_fpn":
        model = detection.fcos_resnet50_fpn(
            weights=None,
            weights_backbone=None,
            min_size=min_size,
            max_size=max_size,
            score_thresh=0.0,
            nms_thresh=1.0,
            detections_per_img=num_detections,
        )
    else:
        raise ValueError(f"unknown torchvision model {name!r}")
    return model.eval()


def set_torchvision_detections(model: nn.Module, num_detections: int) -> None:
    """Change the number of detections of a model made by `build_torchvision`."""
    if hasattr(model, "roi_heads"):
        model.roi_heads.detections_per_img = num_detections
    else:
        model.detections_per_img = num_detections
        model.topk_candidates = max(model.topk_candidates, num_detections)


def pad_batch(images: list[Tensor], divisor: int = 32) -> tuple[Tensor, list[tuple[int, int]]]:
    """[Tensor[3, h_i, w_i]] -> (Tensor[N, 3, H, W] zero padded to multiples of `divisor`,
    [(h_i, w_i)]), as the data pipeline batches."""
    from blendmask.data.batching import pad_images

    batch = pad_images(images, size_divisibility=divisor)
    return batch.tensor, batch.image_sizes


def pad_to(image: Tensor, divisor: int = 32) -> tuple[Tensor, list[tuple[int, int]]]:
    """Tensor[3, h, w] -> (Tensor[1, 3, H, W] zero padded to multiples of `divisor`, [(h, w)])."""
    return pad_batch([image], divisor)


def box_stats(boxes: Tensor) -> dict[str, float]:
    """Mean width / height (px) of a detection set, to compare per-detection work."""
    if boxes.numel() == 0:
        return {"mean_width": 0.0, "mean_height": 0.0}
    wh = (boxes[:, 2:] - boxes[:, :2]).float()
    return {"mean_width": float(wh[:, 0].mean()), "mean_height": float(wh[:, 1].mean())}


# --- output --------------------------------------------------------------------------------------


def path_roots() -> list[tuple[str, str]]:
    """(absolute folder, how a results file writes it), longest first: the repository as a
    relative path, the nuclei set and the temporary folder by the variable that locates them."""
    nuclei = os.environ.get(NUCLEI_VARIABLE, str(DEFAULT_NUCLEI))
    roots = {}
    for folder, name in [
        (nuclei, f"${NUCLEI_VARIABLE}"),
        (REPO, "."),
        (tempfile.gettempdir(), "$TMPDIR"),
    ]:
        for form in {str(Path(folder)), str(Path(folder).resolve())}:
            roots[form] = name
    return sorted(roots.items(), key=lambda item: -len(item[0]))


def portable(text: str, roots: list[tuple[str, str]] | None = None) -> str:
    """`text` (a path or a command line) with the absolute paths under `path_roots()` rewritten:
    /repo/runs/x -> runs/x, /tmp/m.pt -> $TMPDIR/m.pt. A committed results file then holds no
    path of the machine it ran on, and its commands run from the repository root."""
    for root, name in roots if roots is not None else path_roots():
        # The whole folder only: not /repo-old, nor /x/repo.
        pattern = re.compile(r"(?<![\w./-])" + re.escape(root) + r"(/|(?![\w.-]))")
        inside = "" if name == "." else name + "/"
        text = pattern.sub(lambda m, inside=inside, name=name: inside if m.group(1) else name, text)
    return text


def json_text(data: dict[str, Any], *, indent: int = 2, sort_keys: bool = True) -> str:
    """`data` as standard JSON text: an undefined float (NaN, e.g. a 0 / 0 ratio, or an
    infinity) becomes null, not Python's NaN, which JSON parsers refuse; absolute paths in its
    strings are made `portable`."""
    roots = path_roots()

    def finite(value: Any) -> Any:
        if isinstance(value, str):
            return portable(value, roots)
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(v) for v in value]
        return value

    return json.dumps(finite(data), indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n"


def write_json(
    path: str | Path | None, data: dict[str, Any], *, indent: int = 2, sort_keys: bool = True
) -> None:
    """Write `data` (`json_text`: pretty, sorted keys by default, portable paths) to `path`,
    creating folders; nothing for None."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json_text(data, indent=indent, sort_keys=sort_keys), encoding="utf-8")


def saved_runs(path: Path) -> list[dict[str, Any]]:
    """The runs a results file already holds (none when it does not exist): the long
    benchmarks skip them, so a stopped script can be started again."""
    return json.loads(path.read_text())["runs"] if path.is_file() else []


def print_checks(path: Path) -> None:
    """A results file's `checks`, as the script's last output."""
    if path.is_file():
        print(json.dumps(json.loads(path.read_text())["checks"], indent=2))


def ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


@contextlib.contextmanager
def inference(device: torch.device, precision: str) -> Iterator[None]:
    """inference_mode plus the precision's autocast."""
    with torch.inference_mode(), autocast(device, precision):
        yield


def run_side_by_side(jobs: dict[str, tuple[list[str], Path]], cwd: Path) -> dict[str, float]:
    """Start every `name: (command, out)` at once, one thread each (OMP_NUM_THREADS=1), its
    output in `out`.log; wait for all. Returns each job's wall seconds; a job that fails stops
    the benchmark naming its log. Paired runs share the machine's load alike."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started, procs = {}, {}
    for name, (cmd, out) in jobs.items():
        log = open(f"{out}.log", "w")  # noqa: SIM115 (the child writes it until it ends)
        started[name] = time.perf_counter()
        procs[name] = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=log)
    walls = {}
    for name, proc in procs.items():
        if proc.wait() != 0:
            raise SystemExit(f"{name} failed: see {jobs[name][1]}.log")
        walls[name] = time.perf_counter() - started[name]
    return walls
