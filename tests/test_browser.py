"""Issue 14: the slice viewer rendered and driven in a real browser (JupyterLab in headless Chromium).

Needs Debian's ``chromium`` (``apt-get install chromium``; ``.ci/run`` installs it) and the
``playwright`` package; it skips with the reason when either is missing. Playwright drives
the browser through ``executable_path``, so ``playwright install`` (which downloads its own
browsers) is never needed.
"""

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CELL = """import numpy as np
from IPython.display import display
from helpers.viz import SliceViewer
rng = np.random.default_rng(0)
image = rng.random((12, 16, 20)).astype("float32")
viewer = SliceViewer(image, {"labels": (image * 3).astype("uint8")}, class_names=("a", "b", "c"))
display(viewer.widget)"""
CHANGED = """([selector, old]) => {
    const img = document.querySelector(selector);
    return img !== null && img.getAttribute("src") !== old;
}"""
IMAGE = ".jp-OutputArea .widget-image"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium: apt-get install chromium (see README)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on 127.0.0.1, a random free port and a fresh token, serving tmp_path."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(CELL)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "viewer.ipynb")
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "MPLBACKEND": "Agg", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--allow-root",
            f"--port={port}",
            "--ServerApp.ip=127.0.0.1",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={tmp_path}",
            "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "server.log", "w"),  # noqa: SIM115 - closed with the process
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=1)
                break
            except OSError:
                time.sleep(0.25)
        else:
            pytest.fail(f"JupyterLab did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
        yield f"{url}/lab/tree/viewer.ipynb?token={token}"
    finally:
        server.terminate()
        server.wait(15)


def test_viewer_renders_and_responds_in_jupyterlab(lab):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    shots = ROOT / "outputs" / "browser"
    shots.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(lab)
            page.wait_for_selector("text=| Idle", timeout=90_000)  # the kernel is up
            page.click(".jp-Cell .jp-InputArea-editor")
            page.keyboard.press("Shift+Enter")
            image = page.wait_for_selector(IMAGE, timeout=90_000)
            assert image.get_attribute("src"), "the slice is an <img> with a source, not a text repr"
            first = image.get_attribute("src")

            z = page.locator(".widget-slider", has=page.locator(".widget-label", has_text="z"))
            z.locator(".noUi-handle").focus()
            page.keyboard.press("ArrowRight")
            page.wait_for_function(CHANGED, arg=[IMAGE, first], timeout=30_000)
            assert z.locator(".widget-readout").inner_text().strip() == "7"  # 12 // 2 + 1
            second = page.get_attribute(IMAGE, "src")

            page.select_option(".widget-dropdown select", "x")
            page.wait_for_function(CHANGED, arg=[IMAGE, second], timeout=30_000)
            page.screenshot(path=str(shots / "slice_viewer.png"))
        finally:
            browser.close()
