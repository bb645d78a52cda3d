"""The benchmark scripts run end to end on a tiny size and write the JSON they promise.

They are measurement scripts, not timed tests: nothing here checks a speed. Each script runs in
a subprocess (as `make bench` runs it) on 64 x 96 inputs with the `tiny` preset, one repeat.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
TINY = ["--size", "64", "96", "--repeats", "1", "--threads", "1"]


def run_script(name: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(BENCH / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def load_latency_module():
    spec = importlib.util.spec_from_file_location("bench_latency", BENCH / "latency.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_latency_writes_json_and_readme(tmp_path: Path) -> None:
    """Every model is timed at both detection counts, returns exactly that many detections,
    and the ratios and README block are written; a wrong forcing of the detection count or a
    missing figure fails here."""
    out = tmp_path / "latency.json"
    readme = tmp_path / "README.md"
    readme.write_text("# title\n\n<!-- bench:start -->\nold\n<!-- bench:end -->\n\ntail\n")
    run_script(
        "latency.py",
        *TINY,
        "--presets",
        "tiny",
        "--detections",
        "3",
        "8",
        "--json",
        str(out),
        "--update-readme",
        str(readme),
    )
    data = json.loads(out.read_text())
    assert data["machine"]["threads"] == 1
    assert data["machine"]["torch"] and data["machine"]["cpu_model"]
    assert set(data["models"]) == {
        "blendmask_tiny",
        "maskrcnn_resnet50_fpn",
        "fcos_resnet50_fpn",
    }
    for name, per_n in data["models"].items():
        for n in ("3", "8"):
            assert per_n[n]["median_s"] > 0, name
            assert per_n[n]["detections"] == int(n), (name, n, per_n[n]["detections"])
    assert data["models"]["blendmask_tiny"]["8"]["network_median_s"] > 0
    for n in ("3", "8"):
        assert 0 < data["blender"][n]["median_s"]
        assert {"pool", "merge", "paste", "total"} <= set(data["blender"][n])
    ratios = data["ratios"]
    for key in (
        "blendmask_over_maskrcnn",
        "blendmask_over_fcos",
        "blendmask_scaling_8_over_3",
        "maskrcnn_scaling_8_over_3",
    ):
        assert isinstance(ratios[key], float) and ratios[key] > 0, key
    m = data["models"]
    expected = m["blendmask_tiny"]["8"]["median_s"] / m["maskrcnn_resnet50_fpn"]["8"]["median_s"]
    assert ratios["blendmask_over_maskrcnn"] == pytest.approx(expected)
    text = readme.read_text()
    assert "old" not in text and text.startswith("# title") and text.rstrip().endswith("tail")
    assert "| BlendMask tiny (ours), PyTorch fp32 |" in text and "blendmask_over_maskrcnn" in text


@pytest.mark.slow
def test_latency_times_every_exported_path(tmp_path: Path) -> None:
    """--onnx --openvino --int8: onnxruntime and OpenVINO rows for the fp32 and the int8 file,
    each returning the detections asked for, and labelled in the README block."""
    pytest.importorskip("openvino")
    out, readme = tmp_path / "latency.json", tmp_path / "README.md"
    readme.write_text("<!-- bench:start -->\n<!-- bench:end -->\n")
    args = ["--presets", "tiny", "--detections", "5", "--peers", "--no-blender"]
    run_script(
        "latency.py", *TINY, *args, "--onnx", "--openvino", "--int8",
        "--json", str(out), "--update-readme", str(readme), timeout=300,
    )  # fmt: skip
    models = json.loads(out.read_text())["models"]
    suffixes = ("", "_onnxruntime", "_openvino", "_int8", "_int8_openvino")
    assert set(models) == {f"blendmask_tiny{s}" for s in suffixes}
    assert all(per_n["5"]["detections"] == 5 for per_n in models.values())
    assert "end-to-end ONNX int8 in OpenVINO CPU" in readme.read_text()


def test_update_readme_appends_markers_and_rejects_bad_order(tmp_path: Path) -> None:
    """A README without markers gets a section; markers in the wrong order are an error."""
    latency = load_latency_module()
    readme = tmp_path / "README.md"
    readme.write_text("# x\n")
    latency.update_readme(readme, "TABLE 1")
    latency.update_readme(readme, "TABLE 2")
    text = readme.read_text()
    assert text.count(latency.README_START) == 1 and "TABLE 2" in text and "TABLE 1" not in text
    readme.write_text(f"{latency.README_END}\n{latency.README_START}\n")
    with pytest.raises(ValueError, match="bench:start"):
        latency.update_readme(readme, "T")
    with pytest.raises(FileNotFoundError):
        latency.update_readme(tmp_path / "missing.md", "T")


@pytest.mark.slow
def test_flops_writes_parts_and_peak(tmp_path: Path) -> None:
    """FLOPs by part add up to the counted total, the matmul peak and the part times exist."""
    out = tmp_path / "flops.json"
    profile = tmp_path / "profile.txt"
    run_script(
        "flops.py",
        *TINY,
        "--preset",
        "tiny",
        "--detections",
        "5",
        "--matmul-size",
        "128",
        "--peers",
        "fcos_resnet50_fpn",
        "--json",
        str(out),
        "--profile",
        str(profile),
    )
    data = json.loads(out.read_text())
    flops = data["flops"]
    parts = [
        "backbone",
        "fpn",
        "fcos_towers",
        "fcos_predictors",
        "top_layer",
        "bottom_module",
        "semantic_head",
    ]
    for part in parts:
        assert flops[part] > 0, part
    assert sum(flops[p] for p in parts) + flops["other"] == flops["total"]
    assert flops["blender_analytic"] > 0
    assert data["matmul_peak"]["fp32"]["gflops_best"] > 0
    assert data["matmul_peak"]["bf16"]["gflops_best"] > 0
    assert 0 < data["summary"]["fraction_of_matmul_peak"]
    assert data["times"]["total"]["median_s"] > 0
    assert data["peer_flops"]["fcos_resnet50_fpn"]["total"] > flops["total"]
    assert data["profile_top_ops"] and "Name" in profile.read_text()


@pytest.mark.slow
def test_train_step_writes_time_and_memory(tmp_path: Path) -> None:
    """Both models take interleaved steps and report time, RSS and the ratios."""
    out = tmp_path / "train_step.json"
    run_script(
        "train_step.py",
        *TINY,
        "--warmup",
        "0",
        "--preset",
        "tiny",
        "--maskrcnn-box-batch",
        "8",
        "--json",
        str(out),
    )
    data = json.loads(out.read_text())
    for name in ("blendmask_tiny", "maskrcnn_resnet50_fpn"):
        m = data["models"][name]
        assert m["median_s"] > 0 and m["max_rss_bytes"] >= m["rss_before_step_bytes"] > 0
        assert m["trainable_parameters"] > 0
    assert data["ratios"]["blendmask_over_maskrcnn_time"] > 0
    assert data["ratios"]["blendmask_over_maskrcnn_max_rss"] > 0


@pytest.mark.slow
def test_bf16_iou_writes_json(tmp_path: Path) -> None:
    """fp32 vs bf16 mask IoUs are fractions in [0, 1] (random weights, tiny preset)."""
    out = tmp_path / "bf16.json"
    run_script(
        "bf16_iou.py",
        "--preset",
        "tiny",
        "--image-size",
        "64",
        "--num-images",
        "2",
        "--threads",
        "1",
        "--json",
        str(out),
    )
    data = json.loads(out.read_text())
    assert data["settings"]["random_weights"] is True
    assert data["detections_above_min_score"]["fp32"] > 0
    for key in ("mean_mask_iou", "mean_mask_iou_paired", "mean_mask_iou_symmetric"):
        assert 0.0 <= data[key] <= 1.0, key


def load_bench_module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mask_iou_and_matching_against_loops() -> None:
    """bf16_iou's IoU matrix and same-class best match equal a naive per-pair loop."""
    import torch

    bf16_iou = load_bench_module("bf16_iou")
    g = torch.Generator().manual_seed(0)
    a = torch.rand((4, 9, 11), generator=g) > 0.5
    b = torch.rand((3, 9, 11), generator=g) > 0.6
    a[3] = False  # an empty mask
    b[2] = False
    la = torch.tensor([0, 1, 1, 2])
    lb = torch.tensor([1, 0, 2])
    got = bf16_iou.mask_iou(a, b)
    best = bf16_iou.matched_iou(a, la, b, lb)
    for i in range(4):
        expected_best = 0.0
        for j in range(3):
            inter = (a[i] & b[j]).sum().item()
            union = (a[i] | b[j]).sum().item()
            iou = inter / union if union else 1.0
            assert got[i, j].item() == pytest.approx(iou)
            if la[i] == lb[j]:
                expected_best = max(expected_best, iou)
        assert best[i].item() == pytest.approx(expected_best)
    assert best[3].item() == 1.0  # empty vs empty of the same class agree


def test_split_counts_attributes_modules_to_parts() -> None:
    """Per-module flop counts go to the right part without double counting nested modules,
    and the bottom module excludes the semantic head."""
    flops = load_bench_module("flops")
    counts = {
        "Global": {"conv": 100},
        "BlendMask": {"conv": 100},
        "BlendMask.body": {"conv": 50},
        "BlendMask.body.layer1": {"conv": 20},
        "BlendMask.head": {"conv": 18},
        "BlendMask.head.cls_tower.0": {"conv": 6},
        "BlendMask.head.bbox_tower.3": {"conv": 6},
        "BlendMask.head.cls_logits": {"conv": 6},
        "BlendMask.top_layer": {"conv": 12},
        "BlendMask.basis_module": {"conv": 15},
        "BlendMask.basis_module.tower": {"conv": 10},
        "BlendMask.basis_module.seg_head": {"conv": 5},
    }
    parts = flops.split_counts(counts, flops.OUR_PARTS)
    assert parts["backbone"] == 50
    assert parts["fcos_towers"] == 12
    assert parts["fcos_predictors"] == 6
    assert parts["top_layer"] == 12
    assert parts["bottom_module"] == 10
    assert parts["semantic_head"] == 5
    assert parts["fpn"] == 0
    assert parts["other"] == 100 - 95 and parts["total"] == 100


@pytest.mark.slow
def test_nuclei_budget_runs_trains_and_reports(tmp_path, shapes_dataset):
    """benchmarks/nuclei_budget.py end to end on the shapes set (nuclei layout) with the tiny
    preset, a 20 s budget and a competing job: the JSON has the run, its final metrics from
    metrics.jsonl, the wall time against the budget and the checks; a second call keeps it."""
    root = shapes_dataset["train_json"].parents[1]
    out_json = tmp_path / "nuclei_budget.json"
    args = ["--data", str(root), "--preset", "tiny", "--minutes", "0.33", "--seeds", "0"]
    args += ["--conditions", "load", "--load-minutes", "0.05", "--load-threads", "1"]
    args += ["--out", str(tmp_path / "runs"), "--json", str(out_json)]
    run_script("nuclei_budget.py", *args, timeout=240)
    report = json.loads(out_json.read_text())
    (run,) = report["runs"]
    assert run["seed"] == 0 and run["competing_load"] and run["budget_s"] == 0.33 * 60
    assert 0 <= run["final"]["segm_AP"] <= 1 and run["iterations"] > 0
    assert run["wall_s"] > 0 and run["curve"][-1]["iteration"] == run["iterations"]
    assert set(report["checks"]) >= {"segm_AP >= 0.45", "every run within 3% of its budget"}
    proc = run_script("nuclei_budget.py", *args)  # already done: nothing is re-run
    assert "training" not in proc.stdout


@pytest.mark.slow
def test_loader_workers_reports_each_worker_count(tmp_path, shapes_dataset):
    root = shapes_dataset["train_json"].parents[1]
    out_json = tmp_path / "workers.json"
    run_script(
        "loader_workers.py", "--data", str(root), "--preset", "tiny", "--workers", "0", "1",
        "--iterations", "6", "--skip", "2", "--log-period", "1", "--json", str(out_json),
    )  # fmt: skip
    rows = json.loads(out_json.read_text())["rows"]
    assert [r["workers"] for r in rows] == [0, 1]
    assert all(r["images_per_s"] > 0 and r["data_seconds_per_iter"] >= 0 for r in rows)


def test_json_writer_makes_paths_portable(tmp_path, monkeypatch):
    """Results files hold no path of the machine they ran on: the repository's paths become
    relative, the nuclei set's and the temporary folder's are written by their variable; a
    path that only starts like the repository's is left alone."""
    import tempfile

    common = load_bench_module("common")
    monkeypatch.setenv("BLENDMASK_NUCLEI", "/data/nuclei")
    # A temporary folder of the test's own: the repository itself may sit in the system's
    # (a CI clone under /tmp), and then `{REPO}-old` rightly becomes a $TMPDIR path.
    temp = tmp_path / "tmpdir"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    data = {
        "command": f"blendmask train --set data.train_json=/data/nuclei/a.json --out {REPO}/runs/y",
        "paths": [str(REPO / "runs" / "x"), str(REPO), str(temp / "m.pt"), f"{REPO}-old/z"],
        "nested": {"weights": str(temp / "demo" / "model.pt")},
    }
    common.write_json(tmp_path / "r.json", data)
    assert json.loads((tmp_path / "r.json").read_text()) == {
        "command": "blendmask train --set data.train_json=$BLENDMASK_NUCLEI/a.json --out runs/y",
        "paths": ["runs/x", ".", "$TMPDIR/m.pt", f"{REPO}-old/z"],
        "nested": {"weights": "$TMPDIR/demo/model.pt"},
    }


@pytest.mark.slow
def test_bf16_train_gate_trains_both_precisions_and_compares(tmp_path, shapes_dataset):
    """benchmarks/bf16_train_gate.py with the tiny preset for 2 iterations: one run per
    precision at equal iterations, their APs, and the gate's verdict."""
    root = shapes_dataset["train_json"].parents[1]
    out_json = tmp_path / "gate.json"
    args = ["--data-root", str(root), "--preset", "tiny", "--iterations", "2", "--seeds", "0"]
    run_script(
        "bf16_train_gate.py", *args, "--out", str(tmp_path), "--json", str(out_json), timeout=240
    )
    report = json.loads(out_json.read_text())
    assert [(r["precision"], r["iterations"]) for r in report["runs"]] == [("fp32", 2), ("bf16", 2)]
    assert report["checks"]["seeds"] == [0] and "cpu_flags" in report
    assert set(report["checks"]["mean segm_AP"]) == {"fp32", "bf16"}


@pytest.mark.slow
def test_auto_vs_preset_trains_the_pair_side_by_side(tmp_path, shapes_dataset):
    """benchmarks/auto_vs_preset.py: auto and the hand preset at the same time, their final
    APs and the test scale each used."""
    root = shapes_dataset["train_json"].parents[1]
    out_json = tmp_path / "auto.json"
    args = ["--data-root", str(root), "--hand", "tiny", "--minutes", "0.25", "--seeds", "0"]
    run_script(
        "auto_vs_preset.py", *args, "--out", str(tmp_path), "--json", str(out_json), timeout=300
    )
    report = json.loads(out_json.read_text())
    assert sorted(r["preset"] for r in report["runs"]) == ["auto", "tiny"]
    assert all(0 <= r["segm_AP"] <= 1 and r["iterations"] > 0 for r in report["runs"])
    by = {r["preset"]: r for r in report["runs"]}
    assert by["auto"]["test_scale"] > 0 and by["tiny"]["test_scale"] == 0  # tiny: min_size_test
    assert "auto - hand" in report["checks"]


def test_demo_under_load_reads_a_run_and_checks_the_targets(tmp_path):
    from demo_under_load import summarise, verdict

    (tmp_path / "metrics.json").write_text(
        json.dumps({"PQ": 0.65, "PQ_th": 0.38, "PQ_st": 0.9, "segm_AP": 0.5, "seconds": 500})
    )
    lines = [{"type": "train", "iteration": i} for i in (20, 40)] + [{"type": "eval"}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines))
    row = summarise(tmp_path, kind="panoptic", load=True, wall=512.04, loads=(2.0, 4.123))
    assert row["iterations"] == 40 and row["final"]["PQ_th"] == 0.38
    assert "seconds" not in row["final"] and row["load_average_start_end"] == [2.0, 4.12]
    quiet = dict(row, competing_load=False, final={"PQ": 0.1, "PQ_th": 0.0})
    checks = verdict([row, quiet])  # only the loaded run is held to the targets
    assert checks == {
        "panoptic under load: PQ >= 0.6": True,
        "panoptic under load: PQ_th >= 0.4": False,
    }


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_int8_accuracy_gates_and_scores_both_runtimes(tmp_path, shapes_dataset):
    """export fp32 / int8, the gate in OpenVINO, and predict + eval for each runtime: the json
    holds an AP per run and a check per gate (a tiny random model: plumbing, not accuracy)."""
    pytest.importorskip("openvino")
    from helpers.models import spread_model

    from blendmask.checkpoint_io import save_model_file

    cfg, model, _ = spread_model()
    save_model_file(tmp_path / "model.pt", cfg, model)
    out = tmp_path / "int8.json"
    d = shapes_dataset
    run_script(
        "int8_accuracy.py", "--weights", str(tmp_path / "model.pt"),
        "--val-json", str(d["val_json"]), "--val-images", str(d["val_images"]),
        "--calib", str(d["train_images"]), "--calib-count", "3",
        "--out", str(tmp_path / "runs"), "--json", str(out), timeout=600,
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert set(report["ap"]) == {"fp32_onnxruntime", "int8_onnxruntime", "int8_openvino"}
    assert all(0.0 <= ap["segm_AP"] <= 1.0 or ap["segm_AP"] == -1.0 for ap in report["ap"].values())
    assert report["gates"]["openvino"]["images"] == 3  # the held-out images of --calib
    assert "openvino int8 gate passed" in report["checks"]


@pytest.mark.slow
def test_test_time_rescore_evaluates_each_setting(tmp_path, shapes_dataset):
    """benchmarks/test_time_rescore.py: one model, two settings: a row per setting, and the
    settings reach `eval` (a random model scores AP ~0 either way, but rescoring and the
    flip move the detections' scores in the COCO results each eval wrote)."""
    from helpers.models import write_dense_model

    d = shapes_dataset
    cats = json.loads(Path(d["val_json"]).read_text())["categories"]
    write_dense_model(tmp_path / "model.pt", [c["id"] for c in cats], [c["name"] for c in cats])
    out = tmp_path / "rescore.json"
    run_script(
        "test_time_rescore.py", "--weights", str(tmp_path / "model.pt"),
        "--val-json", str(d["val_json"]), "--val-images", str(d["val_images"]),
        "--setting", "plain", "model.blender.mask_score_power=0",
        "--setting", "both", "model.blender.mask_score_power=2", "data.test_flip=true",
        "--out", str(tmp_path / "runs"), "--json", str(out), timeout=300,
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert [r["setting"] for r in report["runs"]] == ["plain", "both"]
    assert report["settings"]["both"] == ["model.blender.mask_score_power=2", "data.test_flip=true"]
    scores = {
        name: sorted(r["score"] for r in json.loads((tmp_path / "runs" / f"model0_{name}" /
                                                    "results.json").read_text()))
        for name in ("plain", "both")
    }  # fmt: skip
    assert scores["plain"] and scores["plain"] != scores["both"]
