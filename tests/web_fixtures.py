"""Real parts for the web page's tests: ``harstream web`` as a subprocess, and Debian's chromium,
headless, driven by selenium through chromium-driver (installed by .ci/run; never skipped: a missing
browser fails the test and says how to install it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from live_fixtures import Lines, free_port, harstream

from streamer.tools.bench_web import CHROMEDRIVER, CHROMIUM, chromium_driver


class WebServer:
    """``harstream web`` on a free loopback port (or ``host``), until :meth:`stop`."""

    def __init__(self, store: Path | str, *extra: str, host: str = "127.0.0.1") -> None:
        self.port = free_port()
        self.process = harstream("web", "--store", str(store), "--host", host, "--port", str(self.port),
                                 *extra)  # fmt: skip
        self.err = Lines(self.process.stderr)
        lines = self.err.wait(lambda ls: any("serving" in line for line in ls), 20)
        if not any("serving" in line for line in lines):
            self.stop()
            pytest.fail(f"harstream web did not start: {lines}")
        self.url = f"http://127.0.0.1:{self.port}"

    def get(self, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
        """Status, headers and body of a GET (an error status too, never an exception)."""
        request = urllib.request.Request(self.url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def json(self, path: str, headers: dict | None = None) -> dict:
        status, _, body = self.get(path, headers)
        assert status == 200, (path, status, body[:200])
        return json.loads(body)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def chromium():
    """A headless chromium (a fresh profile each time), for a test module's ``browser`` fixture."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            pytest.fail(f"{path} is missing: apt-get install -y chromium chromium-driver")
    driver = chromium_driver()
    yield driver
    driver.quit()


def rendered(driver, timeout: float = 20.0) -> float:
    """Wait until the page's script drew its first answer; the ms from navigation it took."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script("return document.body && document.body.dataset.rendered")
        if value:
            return float(value)
        time.sleep(0.05)
    raise AssertionError(f"the page did not render within {timeout} s: {driver.page_source[:500]}")


def screenshot(driver, name: str) -> None:
    """With HARSTREAM_SCREENSHOTS=FOLDER, the page as a PNG there (the README's pictures)."""
    folder = os.environ.get("HARSTREAM_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / name))
