"""Distributed `eval`: two CPU processes under torchrun (gloo) give exactly the metrics, and the
very COCO results, of one process, on a synthetic shapes val set and on a subset of the nuclei
data (images with more than 100 nuclei, so more than 100 detections per image cross the gather).

If the metrics or results differ, the sharding dropped an image or counted one twice, rank 0
evaluated only its own share, or the merge changed the order of results (COCOeval breaks score
ties by that order). If a rank other than 0 printed or wrote, the outputs would be written twice.
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import torch
from helpers.models import write_dense_model
from helpers.paths import NUCLEI_DIR
from helpers.processes import run_in_session

from blendmask.cli import main
from blendmask.data.shapes import write_shapes_dataset

# Slow: torchrun with two processes (`pytest -m "not slow"` leaves these out).
pytestmark = pytest.mark.slow

# Nuclei val images 1 (256 x 256, 8 nuclei), 18 (696 x 520, 106) and 23 (1272 x 603, 199).
NUCLEI_IMAGE_IDS = (1, 18, 23)
EVAL_FLAGS = ["--device", "cpu", "--num-workers", "0"]
# The nuclei images are evaluated larger than the tiny preset's 64-96 px (nuclei of a few
# pixels), keeping up to 150 detections per image.
NUCLEI_FLAGS = ["--max-det", "150", "--set", "data.min_size_test=192"]
NUCLEI_FLAGS += ["--set", "data.max_size_test=384"]

# A case's `eval` through the real command line in each torchrun worker.
CHILD = textwrap.dedent(
    """
    import json, sys
    from blendmask.cli import main
    codes = [main(["eval", *argv]) for argv in json.loads(sys.argv[1])]
    sys.exit(max(codes))
    """
)


def _shapes_case(root: Path) -> list[str]:
    # 5 val images: an uneven split over 2 ranks (3 + 2)
    data = write_shapes_dataset(root / "shapes", num_train=1, num_val=5, seed=3, image_size=128)
    categories = json.loads(Path(data["val_json"]).read_text())["categories"]
    weights = root / "shapes_model.pt"
    write_dense_model(weights, [c["id"] for c in categories], [c["name"] for c in categories])
    return ["--weights", str(weights), "--json", str(data["val_json"])] + [
        "--images",
        str(data["val_images"]),
    ]


def _nuclei_case(root: Path) -> list[str]:
    """A copy of a few nuclei val images and their annotations (the test never writes into the
    shipped data)."""
    source = json.loads((NUCLEI_DIR / "annotations" / "instances_val.json").read_text())
    images = [i for i in source["images"] if i["id"] in NUCLEI_IMAGE_IDS]
    (root / "nuclei").mkdir()
    for image in images:
        shutil.copy(NUCLEI_DIR / "images" / "val" / image["file_name"], root / "nuclei")
    subset = {
        **source,
        "images": images,
        "annotations": [a for a in source["annotations"] if a["image_id"] in NUCLEI_IMAGE_IDS],
    }
    json_path = root / "nuclei.json"
    json_path.write_text(json.dumps(subset))
    weights = root / "nuclei_model.pt"
    write_dense_model(weights, [c["id"] for c in source["categories"]], ["nucleus"])
    return ["--weights", str(weights), "--json", str(json_path), "--images", str(root / "nuclei")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """{case: {"one": out dir, "two": out dir}} of each case evaluated by one process (in this
    process, one thread: torchrun's default for each worker, since the kernels' results depend
    on the thread count) and by two torchrun processes; "stdout": the torchrun output."""
    root = tmp_path_factory.mktemp("dist_eval")
    cases = {"shapes": _shapes_case(root)}
    if (NUCLEI_DIR / "annotations" / "instances_val.json").is_file():
        cases["nuclei"] = _nuclei_case(root) + NUCLEI_FLAGS
    outs = {name: {"one": root / f"{name}_1", "two": root / f"{name}_2"} for name in cases}

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, argv in cases.items():
            assert main(["eval", *argv, *EVAL_FLAGS, "--out", str(outs[name]["one"])]) == 0
    finally:
        torch.set_num_threads(threads)

    script = root / "child.py"
    script.write_text(CHILD)
    # --standalone: a rendezvous on a free local port. One torchrun per case: a second process
    # group started on the same torchrun store after the first was destroyed can hang in gloo's
    # rendezvous (seen once in three runs), which is not what this test is about.
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    stdout = ""
    for name, argv in cases.items():
        argvs = [[*argv, *EVAL_FLAGS, "--out", str(outs[name]["two"])]]
        proc = run_in_session([*command, "2", str(script), json.dumps(argvs)], timeout=200)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        stdout += proc.stdout
    return {**outs, "stdout": stdout, "cases": list(cases)}


def _outputs(out: Path) -> tuple[dict, list]:
    metrics = json.loads((out / "metrics.json").read_text())
    del metrics["seconds"]
    return metrics, json.loads((out / "results.json").read_text())


def _check_same_as_one_process(runs: dict, name: str) -> tuple[dict, list]:
    one_metrics, one_results = _outputs(runs[name]["one"])
    two_metrics, two_results = _outputs(runs[name]["two"])
    assert two_metrics == one_metrics  # every key, per-category APs included, bit for bit
    assert two_results == one_results
    # rank 1 wrote nothing beside rank 0's files (and OUT/.lock is gone after the run)
    assert sorted(p.name for p in runs[name]["two"].iterdir()) == [
        "metrics.json",
        "results.json",
    ]
    return two_metrics, two_results


def test_two_process_eval_equals_one_process_on_shapes(runs):
    metrics, results = _check_same_as_one_process(runs, "shapes")
    assert metrics["images"] == 5
    # every val image predicted, by exactly one rank (each image keeps its 100 detections)
    assert Counter(r["image_id"] for r in results) == {i: 100 for i in range(1, 6)}
    assert metrics["bbox_AP50"] > 0 and metrics["segm_AP50"] > 0  # not a trivial 0 == 0
    # only rank 0 prints: one summary line per eval call
    assert runs["stdout"].count("wrote") == len(runs["cases"])


def test_two_process_eval_equals_one_process_on_nuclei(runs):
    if "nuclei" not in runs["cases"]:
        pytest.skip(f"shipped nuclei data not found at {NUCLEI_DIR}")
    metrics, results = _check_same_as_one_process(runs, "nuclei")
    assert metrics["images"] == len(NUCLEI_IMAGE_IDS)
    per_image = Counter(r["image_id"] for r in results)
    assert set(per_image) == set(NUCLEI_IMAGE_IDS)
    assert per_image[23] > 100  # the >100-nuclei image's detections crossed the gather
