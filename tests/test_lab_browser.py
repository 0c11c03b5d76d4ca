"""`make lab`'s promise: in JupyterLab the figures are live widgets that redraw from the code.

Starts a real JupyterLab server on 127.0.0.1 over a scratch copy of a notebook that shows one
figure, runs it in headless Chromium, presses a preset button and checks that the picture was
redrawn by the kernel. Skipped without Chromium, like the other browser tests.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from test_book_browser import _FLAGS, CHROMIUM

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium not found: `apt-get install chromium`"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path: Path):
    nb = nbformat.v4.new_notebook()
    source = "from bnbook import figures\nfigures.transform_explorer()"
    nb.cells = [nbformat.v4.new_code_cell(source)]
    nb.metadata["kernelspec"] = {
        "name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python",
    }
    nbformat.write(nb, tmp_path / "figure.ipynb")
    port = _free_port()
    jupyter = Path(sys.executable).with_name("jupyter")
    server = subprocess.Popen(
        [str(jupyter), "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         "--IdentityProvider.token=", "--ServerApp.password=", "--allow-root",
         f"--ServerApp.root_dir={tmp_path}", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PATH": f"{jupyter.parent}{os.pathsep}{os.environ['PATH']}"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("JupyterLab did not start within 60 s")
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=20)
        shutil.rmtree(tmp_path, ignore_errors=True)


def test_figure_is_a_live_widget_in_jupyterlab(lab: str) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{lab}/lab/tree/figure.ipynb")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            # A fresh JupyterLab may ask which kernel to start: take the one it proposes.
            select = page.locator(".jp-Dialog").get_by_role("button", name="Select")
            try:
                select.click(timeout=10_000)
            except playwright.TimeoutError:
                pass
            page.get_by_text("Run", exact=True).first.click()
            page.get_by_text("Run All Cells", exact=True).click()
            preset = page.get_by_role("button", name="set to identity (γ = σ, β = μ)")
            try:
                preset.wait_for(timeout=90_000)
            except Exception:
                page.screenshot(path=str(Path(os.environ.get("TMPDIR", "/tmp")) / "lab-fail.png"))
                raise
            image = page.locator(".jp-OutputArea-output img").first
            # The widget form, not the static one: ipywidgets rendered sliders for γ and β.
            assert page.locator(".jp-OutputArea-output .widget-slider").count() == 2
            before = image.get_attribute("src")
            preset.click()
            page.wait_for_function(
                "([el, old]) => el.getAttribute('src') !== old",
                arg=[image.element_handle(), before], timeout=30_000,
            )
            readouts = page.locator(".jp-OutputArea-output .widget-readout")
            assert [readouts.nth(k).inner_text() for k in (0, 1)] == ["2.00", "3.00"]
        finally:
            browser.close()
