"""The status page in headless Chromium (Debian's `chromium`, driven by Python's playwright through
`executable_path`: no browser download), on a real daemon with two fake GPUs (tests/fake_gpu_swarmd.py)."""

from __future__ import annotations

import os
import shutil
import signal

import pytest

from tests.helpers import SLEEPER, TICKER, wait_until
from tests.metrics_tools import fake_gpu_daemon

CHROMIUM = next((path for path in ("/usr/bin/chromium", shutil.which("chromium") or "") if path and os.path.exists(path)),
                None)
try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - the test extras install it
    sync_playwright = None  # type: ignore[assignment]

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed: Debian's `chromium` package "
                       "(apt-get install chromium; .ci/run installs it)"),
    pytest.mark.skipif(sync_playwright is None, reason="playwright is not installed (pip install -e '.[test]')"),
]
#: A title that would break the page if it were ever put in as HTML.
HTML_TITLE = 'web <b id="injected">bold</b> & "quoted"'


def _row_text(page, backend_id: int, cell: str) -> str:
    return page.locator(f'tr.backend[data-id="{backend_id}"] td.{cell}').inner_text()


def test_the_status_page_shows_the_fleet_and_follows_a_restart(tmp_path):
    backends = {
        0: {"title": HTML_TITLE, "settings": {"command": TICKER, "gpu_id": "0"}},
        # Killed below; its 3 s backoff shows as `waiting` before it is running again.
        1: {"title": "comfy-1", "settings": {"command": SLEEPER, "gpu_id": "1", "restart_delay": 3}},
        2: {"title": "spare", "enabled": False, "settings": {"command": SLEEPER}},
    }
    with fake_gpu_daemon(tmp_path, backends) as (daemon, base):
        first = wait_until(lambda: (b := daemon.backend(1)) and b["status"] == "running" and b, what="running")
        wait_until(lambda: daemon.backend(0)["status"] == "running", what="backend 0 running")
        problems: list[str] = []
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
                page.on("pageerror", lambda err: problems.append(str(err)))
                page.goto(base + "/")
                page.wait_for_selector("tr.backend", timeout=15_000)
                assert page.locator("tr.backend").count() == 3
                assert page.locator(".gpu").count() == 2
                assert "GPU 0" in page.locator(".gpu").first.inner_text()
                assert page.locator("#injected").count() == 0  # the title is text, never markup
                assert HTML_TITLE in _row_text(page, 0, "head")
                assert _row_text(page, 0, "status").startswith("running")
                assert _row_text(page, 2, "status").startswith("disabled")
                assert _row_text(page, 1, "restarts") == "0"
                assert "GPU 1" in _row_text(page, 1, "gpus") and "3.0 GiB" in _row_text(page, 1, "gpus")

                os.kill(first["pid"], signal.SIGKILL)
                # The page sees it waiting out its backoff, restart counted, then running again.
                page.wait_for_function(
                    """() => { const row = document.querySelector('tr.backend[data-id="1"]');
                               return row.querySelector('.pill').textContent === 'waiting'
                                   && row.querySelector('td.restarts').textContent === '1'; }""", timeout=15_000)
                assert "killed by SIGKILL" in _row_text(page, 1, "exit")
                page.wait_for_function(
                    """() => document.querySelector('tr.backend[data-id="1"] .pill').textContent === 'running'""",
                    timeout=20_000)
                assert _row_text(page, 1, "restarts") == "1"

                # A click shows the backend's last lines (and they keep coming).
                page.locator('tr.backend[data-id="0"]').click()
                page.wait_for_function(
                    """() => document.querySelectorAll('tr.logs:not([hidden]) pre div').length >= 2""",
                    timeout=10_000)
                assert "tick" in page.locator("tr.logs:not([hidden]) pre").inner_text()
                page.screenshot(path=str(tmp_path / "status.png"), full_page=True)

                phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                         is_mobile=True, has_touch=True)
                phone.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
                phone.on("pageerror", lambda err: problems.append(str(err)))
                phone.goto(base + "/")
                phone.wait_for_selector("tr.backend")
                # Readable on a phone: nothing wider than the screen, one card per backend, logs folded.
                assert phone.evaluate("document.documentElement.scrollWidth") <= 390
                assert phone.locator("tr.backend:visible").count() == 3
                assert phone.locator("tr.logs:visible").count() == 0
                phone.screenshot(path=str(tmp_path / "status-phone.png"), full_page=True)
            finally:
                browser.close()
        assert not problems, problems
        assert (tmp_path / "status.png").stat().st_size > 10_000
