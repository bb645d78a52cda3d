"""The web page of `blendmask serve` in a real browser: headless Chromium (Debian's `chromium`,
driven by Playwright) loads /, uploads an image, waits for the overlay, moves the score slider
and sees the table shrink, then shows the bases / attention view. Skipped without Chromium or
Playwright (`.ci/run` installs Chromium).

The screenshot goes to the test's folder, or to $BLENDMASK_SERVE_SCREENSHOT; with
$BLENDMASK_SERVE_WEIGHTS and $BLENDMASK_SERVE_IMAGE the same steps run with that model and
image (docs/images/serve_page.png was made so, with a briefly trained tiny model)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
playwright = pytest.importorskip("playwright.sync_api")

from helpers.self_ground_truth import write_model  # noqa: E402
from helpers.serve import ServerProcess  # noqa: E402

# Slow: a server process and a browser page (`pytest -m "not slow"` leaves it out).
pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def rows(page) -> list[float]:  # noqa: ANN001 - a Playwright Page
    """The scores in the detections table, as shown."""
    cells = page.locator("#detections tbody tr td:nth-child(3)").all_inner_texts()
    return [float(text) for text in cells]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_page_uploads_draws_and_filters_live(tmp_path: Path) -> None:
    weights = os.environ.get("BLENDMASK_SERVE_WEIGHTS") or write_model(tmp_path / "model.pt")
    image = os.environ.get("BLENDMASK_SERVE_IMAGE")
    if image is None:
        image = tmp_path / "noise.png"
        pixels = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(image)
    screenshot = Path(os.environ.get("BLENDMASK_SERVE_SCREENSHOT") or tmp_path / "page.png")
    server = ServerProcess(Path(weights), log=tmp_path / "server.log")
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 640})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(server.url + "/")
            page.locator("#model-info").filter(has_text="classes").wait_for()
            page.set_input_files("#file", str(image))
            page.wait_for_selector("#overlay[data-ready='1']", timeout=60_000)
            canvas = page.locator("#overlay").bounding_box()
            assert canvas is not None and canvas["width"] > 0

            page.locator("#score").press("Home")  # the slider at 0: every detection
            all_scores = rows(page)
            assert len(all_scores) >= 2, all_scores
            # Keyboard steps of 0.01 up to just under the best score: fewer rows, live.
            threshold = int(max(all_scores) * 100) / 100
            page.locator("#score").fill(f"{threshold:.2f}")
            kept = rows(page)
            assert 0 < len(kept) < len(all_scores), (threshold, all_scores)
            assert all(score >= threshold for score in kept)
            assert page.locator("#score-value").inner_text() == f"{threshold:.2f}"
            # The slider's middle position for the picture.
            page.locator("#score").fill("0.30" if max(all_scores) > 0.3 else f"{threshold:.2f}")

            page.click("#toggle")  # bases / attention view
            page.wait_for_function("document.getElementById('explain').naturalWidth > 0")
            assert (
                page.locator("#explain").is_visible() and not page.locator("#overlay").is_visible()
            )
            page.click("#toggle")
            assert page.locator("#overlay").is_visible()
            page.screenshot(path=str(screenshot), full_page=True)
            browser.close()
        assert not errors, errors
        with Image.open(screenshot) as shot:
            assert shot.size[0] >= 1000
    finally:
        server.stop()
