"""Browser tests of the served page: opt-in with `-m e2e` (`make test-e2e`), never in the default run.

They start `python -m wavslm.serve` on a free loopback port with the reference fixture model and drive
Debian's Chromium (/usr/bin/chromium, or $WAVSLM_CHROMIUM) through the python playwright package.
Screenshots go to $WAVSLM_ARTIFACTS or tests/e2e/artifacts/ (git-ignored).
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("WAVSLM_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(os.environ.get("WAVSLM_ARTIFACTS", Path(__file__).parent / "artifacts"))


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: drives the served page in headless Chromium; run by `make test-e2e`")


def pytest_collection_modifyitems(config, items):
    # Deselected unless the marker expression asks for e2e, so a plain `pytest` stays fast and browser-free.
    if "e2e" in (config.option.markexpr or "") and "not e2e" not in config.option.markexpr:
        return
    chosen = [item for item in items if "e2e" not in item.keywords]
    if len(chosen) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if "e2e" in item.keywords])
        items[:] = chosen


@pytest.fixture(scope="session")
def server_url():
    """A real server in a subprocess, as users run it; its log goes to the artifacts folder."""
    from conftest import REFERENCE

    if REFERENCE is None:
        pytest.skip("reference fixtures not found; set WAVSLM_REFERENCE")
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = open(ARTIFACTS / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "wavslm.serve", "--model", str(REFERENCE / "wavslm_tiny"), "--port", str(port),
         "--threads", "1", "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the server did not start; see {ARTIFACTS / 'server.log'}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: apt-get install -y chromium (or set WAVSLM_CHROMIUM)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--autoplay-policy=no-user-gesture-required",  # play without a real user's gesture
                "--use-fake-ui-for-media-stream",  # grant the microphone without a prompt...
                "--use-fake-device-for-media-stream",  # ...and feed it a synthetic beep
            ],
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server_url):
    context = browser.new_context(viewport={"width": 1000, "height": 1100})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(server_url + "/")
    yield page
    context.close()
    assert not errors, f"the page reported errors: {errors}"
