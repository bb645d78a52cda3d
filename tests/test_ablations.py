"""benchmarks/ablations.py without training: every configuration is a valid config with the
knob it claims, the run order fills Table 1 first, and the report's mean / spread and tables
are computed from the records (checked against numbers worked out here)."""

from __future__ import annotations

import json
import math

# benchmarks/ is on sys.path (pyproject.toml's pytest `pythonpath`), as it is for its scripts.
import ablations
import ablations_longer
import ablations_report
import common
import pytest

from blendmask.presets import load_config

DATA = {"train_json": "t.json", "train_images": "t", "val_json": "v.json", "val_images": "v"}


@pytest.mark.parametrize("ablation", ablations.ablations(), ids=lambda a: a.key)
def test_every_configuration_is_a_valid_config(ablation: ablations.Ablation) -> None:
    """Wrong = an override names a knob that does not exist (or a bad value), or the budget
    differs between configurations of one data set."""
    cfg = load_config(
        ablations.BUDGET[ablation.dataset]["preset"],
        None,
        ablations.config_overrides(ablation, 1, DATA),
    )
    b, m = ablations.BUDGET[ablation.dataset], cfg.model
    assert (cfg.solver.max_iter, cfg.solver.ims_per_batch, cfg.solver.seed) == (
        b["iterations"],
        b["batch"],
        1,
    )
    assert cfg.data.val_json == "v.json"
    assert (cfg.solver.base_lr, cfg.solver.clip_grad_norm) == (b["lr"], 10)
    if "size" in b:  # shapes: one size; nuclei keep the preset's fixed 3x scale
        assert cfg.data.min_size_test == b["size"] and cfg.data.test_scale == 0
    else:
        assert cfg.data.test_scale == 3.0
    if ablation.name == "fcis":
        # FCIS: K = M * M bases, one-hot cells, nearest
        assert m.blender.fixed_onehot_attention and m.basis_module.num_bases == 16
        assert m.blender.attn_size**2 == m.basis_module.num_bases
        assert m.blender.top_interp == "nearest"
    elif ablation.name == "fcis_learned":  # the assembler with learned attention
        assert not m.blender.fixed_onehot_attention and m.basis_module.num_bases == 16
        assert (m.blender.attn_size, m.blender.top_interp) == (4, "nearest")
    elif ablation.name.startswith("M"):
        mm, rr = ablation.name[1:].split("_R")
        assert (m.blender.attn_size, m.blender.bottom_resolution) == (int(mm), int(rr))
    elif ablation.name.startswith("K"):
        assert m.basis_module.num_bases == int(ablation.name[1:])
    elif ablation.name == "base":
        assert (m.blender.attn_size, m.blender.bottom_resolution, m.basis_module.num_bases) == (
            7,
            28,
            4,
        )


def test_run_order_fills_table_1_first() -> None:
    plan = [(a.key, s) for a, s in ablations.plan_runs([0, 1], [])]
    assert len(plan) == len(set(plan)) == 2 * len(ablations.ablations())
    first = {("shapes/base", s) for s in (0, 1)} | {("shapes/M1_R28", s) for s in (0, 1)}
    assert set(plan[:6]) == first | {("shapes/fcis", 0), ("shapes/fcis", 1)}
    seed1 = [i for i, (_, s) in enumerate(plan) if s == 1 and i >= 6]
    seed0 = [i for i, (_, s) in enumerate(plan) if s == 0 and i >= 6]
    assert max(seed0) < min(seed1)  # every configuration once before other second seeds
    with pytest.raises(ValueError, match="unknown"):
        ablations.plan_runs([0], ["shapes/nope"])


def _record(name: str, seed: int, ap: float, ms: float) -> dict:
    spec = {"within": 0.1, "across": 0.2, "ratio": 0.5, "spatial": 0.3, "detections": 7}
    metrics = {"segm_AP": ap, "segm_AP50": ap, "segm_AP75": ap, "bbox_AP": ap}
    return {
        "dataset": "shapes",
        "name": name,
        "seed": seed,
        "metrics": metrics,
        "cpu_ms_per_image": ms,
        "specificity": spec,
        "train_seconds": 60.0,
    }


def test_report_mean_and_spread() -> None:
    """Wrong = the table's mean / sample sd are not those of the seeds' values, or a missing
    configuration is not marked as such."""
    results = {
        "runs": {
            "a": _record("base", 0, 0.20, 10.0),
            "b": _record("base", 1, 0.30, 14.0),
            "c": _record("M1_R28", 0, 0.10, 9.0),
        }
    }
    mean, sd = ablations_report.mean_sd([0.2, 0.3])
    assert mean == pytest.approx(0.25) and sd == pytest.approx(math.sqrt(0.005))
    text = ablations_report.report_markdown(results)
    row = next(line for line in text.splitlines() if line.startswith("| blender"))
    assert "25.0 ± 7.1" in row and "| 12 ± 3 |" in row and row.endswith("| 2 |")
    assert "| 1.00 ± 0.00 |" in row  # mask AP / box AP of each seed, then mean and sd
    ws = next(line for line in text.splitlines() if line.startswith("| weighted sum"))
    assert "| 10.0 |" in ws and "±" not in ws and ws.endswith("| 1 |")  # one seed, no spread
    fcis = next(line for line in text.splitlines() if line.startswith("| assembler"))
    assert "not run" in fcis


def test_results_are_standard_json_with_undefined_ratios_as_null() -> None:
    """The assembler's maps are all identical, so its specificity ratio is 0 / 0: stored as
    null (Python's NaN is not JSON), shown as "-" in the tables, and not averaged in."""
    fcis = _record("fcis", 0, 0.5, 9.0)
    fcis["specificity"] = {**fcis["specificity"], "within": 0.0, "across": 0.0}
    fcis["specificity"]["ratio"] = math.nan
    results = {"runs": {"f0": fcis, "b0": _record("base", 0, 0.2, 10.0)}}
    text = common.json_text(results, indent=1, sort_keys=False)
    assert "NaN" not in text
    stored = json.loads(text)
    assert stored["runs"]["f0"]["specificity"]["ratio"] is None
    assert stored["runs"]["b0"]["metrics"] == results["runs"]["b0"]["metrics"]
    table = ablations_report.report_markdown(stored)
    row = next(line for line in table.splitlines() if line.startswith("| shapes/fcis"))
    assert row.split("|")[4].strip() == "-"
    demo = {"model": "m.pt", "specificity": stored["runs"]["f0"]["specificity"]}
    demo |= {"metrics": fcis["metrics"], "cpu_ms_per_image": 9.0}
    demo["config"] = {"num_bases": 16, "attn_size": 4, "bottom_resolution": 28}
    assert "| - |" in ablations_report.demo_row(demo)[0]


def test_longer_schedule_scales_only_the_iterations() -> None:
    """ablations_longer.py: `factor` times the iterations with the lr step at the same
    fraction of the run; batch, learning rate, warm-up and data as the tables' budget, and
    every configuration it trains is one of the tables'."""
    short, longer = ablations.BUDGET["shapes"], ablations_longer.longer_budget(4)
    assert longer["iterations"] == 4 * short["iterations"] == 1200
    assert [s / longer["iterations"] for s in longer["lr_steps"]] == [
        s / short["iterations"] for s in short["lr_steps"]
    ]
    same = {k: v for k, v in longer.items() if k not in ("iterations", "lr_steps")}
    assert same == {k: v for k, v in short.items() if k not in ("iterations", "lr_steps")}
    assert short["iterations"] == 300  # longer_budget copied, not changed, the budget
    names = {a.name for a in ablations.ablations() if a.dataset == "shapes"}
    assert set(ablations_longer.NAMES) <= names
    cfg = load_config(
        "shapes_lite0",
        None,
        ablations.config_overrides(ablations.Ablation("shapes", "base"), 0, DATA, longer),
    )
    assert (cfg.solver.max_iter, list(cfg.solver.steps)) == (1200, [960])
