"""`latency.py`'s markdown block (`make bench` writes it into docs/results.md between the
bench markers): the setting, one row per timed path, and the ratios."""

from __future__ import annotations

from pathlib import Path
from typing import Any

README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"


def readme_block(data: dict[str, Any]) -> str:
    """The markdown between the bench markers (`make bench`: in docs/results.md): setting,
    table and ratios."""
    m = data["machine"]
    s = data["settings"]
    lo, hi = (str(n) for n in s["detections"][:2]) if len(s["detections"]) > 1 else ("", "")
    label = {
        "maskrcnn_resnet50_fpn": "torchvision Mask R-CNN R50-FPN",
        "fcos_resnet50_fpn": "torchvision FCOS R50-FPN (boxes only)",
    }
    flags = ", ".join(m.get("cpu_flags") or []) or "none of avx2 / avx512 / amx"
    lines = [
        f"Latest `make bench` ({m['time'][:10]}): {m['cpu_model']} (flags: {flags}), device "
        f"{m['device']}, {m['threads']} threads, input {s['size'][0]}x{s['size'][1]}, "
        f"{s['precision']}, torch {m['torch']}, random weights, median of {s['repeats']} runs "
        f"after warm-up, load average at start {m['load_average_start'][0]:.1f}.",
        "",
        "| model | "
        + " | ".join(f"{n} detections (s)" for n in s["detections"])
        + (" | scaling |" if lo else " |"),
        "|---|" + "---|" * (len(s["detections"]) + (1 if lo else 0)),
    ]
    ours = [f"blendmask_{p}" for p in s.get("presets", [])]
    names = [n for n in ours if n in data["models"]]
    names += [n for n in data["models"] if n not in names]
    for name in names:
        per_n = data["models"][name]
        cells = [f"{per_n[str(n)]['median_s']:.3f}" for n in s["detections"]]
        nice = label.get(name) or _our_label(name, s["precision"], m["threads"])
        scale = f" {per_n[hi]['median_s'] / per_n[lo]['median_s']:.2f} |" if lo else ""
        lines.append(f"| {nice} | " + " | ".join(cells) + " |" + scale)
    if data.get("blender"):
        cells = [f"{data['blender'][str(n)]['median_s']:.4f}" for n in s["detections"]]
        lines.append(
            "| our blender alone (pool + interpolate + blend + paste) | "
            + " | ".join(cells)
            + (" | |" if lo else " |")
        )
    if data.get("blender") and hi in data["blender"]:
        b = data["blender"][hi]
        lines.append("")
        lines.append(
            f"Blender at {hi} instances: RoIAlign {b['pool'] * 1e3:.1f} ms, interpolate + softmax "
            f"+ blend {b['merge'] * 1e3:.1f} ms, paste into the image {b['paste'] * 1e3:.1f} ms."
        )
    lines.append("")
    headline = [
        "blendmask_over_maskrcnn",
        "blendmask_over_fcos",
        f"blendmask_scaling_{hi}_over_{lo}",
        f"maskrcnn_scaling_{hi}_over_{lo}",
    ]
    keys = [k for k in headline if k in data["ratios"]]
    keys += sorted(k for k in data["ratios"] if k not in keys and not _same_count(k))
    ratio_text = ", ".join(
        f"`{k}` {data['ratios'][k]:.2f}" if isinstance(data["ratios"][k], float) else f"`{k}` n/a"
        for k in keys
    )
    lines.append(f"Ratios: {ratio_text}.")
    first, top = (ours[0] if ours else ""), str(s["detections"][-1])
    if first in data["models"]:
        fp32 = data["models"][first][top]["median_s"]
        paths = [n for n in names if n.startswith(first) and n != first]
        lines.append("")
        lines.append(
            f"Our paths against our PyTorch {s['precision']} at {top} detections: "
            + ", ".join(
                f"{_our_label(n, s['precision'], m['threads']).split('(ours), ')[-1]} "
                f"{data['models'][n][top]['median_s'] / fp32:.2f}x"
                for n in paths
            )
            + "."
        )
    lines.append("")
    lines.append("Method: `benchmarks/README.md`; FLOPs and time by part: below.")
    return "\n".join(lines)


def _same_count(key: str) -> bool:
    """A `*_scaling_N_over_N` ratio: a run with one detection count has nothing to scale."""
    parts = key.split("_")
    return "scaling" in parts and len(parts) >= 3 and parts[-1] == parts[-3]


def _our_label(name: str, precision: str, threads: int) -> str:
    """blendmask_<preset>[_bf16 | _onnxruntime | _openvino | _int8 | _int8_openvino] -> the
    table's row label."""
    base = name.removeprefix("blendmask_")
    if base.endswith("_int8_openvino"):
        preset = base.removesuffix("_int8_openvino")
        return f"BlendMask {preset} (ours), end-to-end ONNX int8 in OpenVINO CPU, {threads} threads"
    if base.endswith("_int8"):
        preset = base.removesuffix("_int8")
        return (
            f"BlendMask {preset} (ours), end-to-end ONNX int8 in onnxruntime CPU, {threads} threads"
        )
    if base.endswith("_openvino"):
        preset = base.removesuffix("_openvino")
        return f"BlendMask {preset} (ours), end-to-end ONNX in OpenVINO CPU f32, {threads} threads"
    if base.endswith("_onnxruntime"):
        preset = base.removesuffix("_onnxruntime")
        return f"BlendMask {preset} (ours), end-to-end ONNX in onnxruntime CPU, {threads} threads"
    if base.endswith("_bf16"):
        return f"BlendMask {base.removesuffix('_bf16')} (ours), PyTorch bf16 autocast"
    return f"BlendMask {base} (ours), PyTorch {precision}"


def update_readme(path: Path, block: str) -> None:
    """Replace the text between the bench markers of `path` (appending a section with the
    markers when the file has none)."""
    if not path.is_file():
        raise FileNotFoundError(f"--update-readme: {path} not found")
    text = path.read_text(encoding="utf-8")
    start, end = text.find(README_START), text.find(README_END)
    if start == -1 and end == -1:
        text = text.rstrip("\n") + "\n\n## Speed\n\n" + README_START + "\n" + README_END + "\n"
        start, end = text.find(README_START), text.find(README_END)
    if start == -1 or end == -1 or end < start:
        raise ValueError(f"--update-readme: {path} must contain {README_START} before {README_END}")
    new = text[: start + len(README_START)] + "\n" + block + "\n" + text[end:]
    path.write_text(new, encoding="utf-8")
