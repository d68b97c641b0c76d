"""report.html renders in headless Chromium with no console errors, and the screenshot shows the coverage heatmap."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from coverage_stores import make_store, random_docs
from qscope_data.coverage.gaps import compute_gaps
from qscope_data.coverage.inventory import Inventory, InventoryFeature, Provenance
from qscope_data.coverage.report import write_gap_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run does)")

CONSOLE_LINE = re.compile(r":CONSOLE[:(\]]|Uncaught")
HEAT_RED = (165, 0, 38)  # RdYlGn at 0: an uncovered cell
HEAT_GREEN = (0, 104, 55)  # RdYlGn at 1: a fully covered cell


def screenshot(html: Path, tmp: Path) -> tuple[np.ndarray, str]:
    """Render `html` headless; return the screenshot's pixels and Chromium's stderr (console messages included)."""
    png = tmp / f"{html.stem}.png"
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp / 'profile'}",
        f"--screenshot={png}", "--window-size=1200,1600", "--enable-logging=stderr", "--v=0", html.resolve().as_uri(),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium did not finish rendering {html} in 120 s")
    assert proc.returncode == 0 and png.exists(), f"chromium failed (rc {proc.returncode}): {err[-2000:]}"
    return np.asarray(Image.open(png).convert("RGB")), err


def pixels_near(image: np.ndarray, colour: tuple[int, int, int], tol: int = 12) -> int:
    return int((np.abs(image.astype(int) - np.array(colour)).max(axis=2) <= tol).sum())


def test_report_html_renders_with_heatmap_and_no_console_errors(tmp_path):
    import random

    rng = random.Random(4)
    docs = random_docs(rng, 60, d_sae=32, base_rate=0.0)
    for i, d in enumerate(docs):  # "covered" features 1, 2 fire on every document; "missing" 20, 21 never do
        d["features"], d["acts"] = [1, 2], [1.0 + i / 100, 2.0]
    target = make_store(tmp_path / "target", docs, d_sae=32)
    inv = Inventory(provenance=Provenance(source="labels", layer=3, sae={"d_sae": 32, "layer": 3}), features=[
        InventoryFeature(id=1, category="covered", delta=0.5, label="always on"),
        InventoryFeature(id=2, category="covered", delta=0.4),
        InventoryFeature(id=20, category="missing <script>alert(1)</script>", delta=0.9, description="never fires"),
        InventoryFeature(id=21, category="missing <script>alert(1)</script>", delta=0.8),
    ])
    paths = write_gap_report(compute_gaps(inv, target, by=["lang", "source"]), tmp_path / "report")
    html = paths["report.html"].read_text()
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert html.count("data:image/png;base64,") == 2

    image, err = screenshot(paths["report.html"], tmp_path)
    console = [line for line in err.splitlines() if CONSOLE_LINE.search(line)]
    assert not console, f"console messages while rendering report.html: {console}"
    assert image.shape[0] >= 1000 and image.shape[1] >= 1000
    assert image.std() > 20, "screenshot is (nearly) blank"
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50, "screenshot has too few colours to hold the plots"
    assert pixels_near(image, HEAT_RED) > 2000, "no uncovered (red) heatmap cells visible"
    assert pixels_near(image, HEAT_GREEN) > 2000, "no covered (green) heatmap cells visible"


def test_console_error_detection_is_live(tmp_path):
    """The console check above would catch a script error (guards against a silently changed log format)."""
    page = tmp_path / "bad.html"
    page.write_text("<html><body><p>x</p><script>undefinedFunction();</script></body></html>")
    _, err = screenshot(page, tmp_path)
    assert any(CONSOLE_LINE.search(line) for line in err.splitlines())
