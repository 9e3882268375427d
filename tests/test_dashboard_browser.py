"""The dashboard in headless Chromium, fed by a real pipeline.

A real ``Pipeline`` runs the COCO-trained yolov8n-seg (dynamic ONNX at 320) over a few real COCO
val2017 images in a loop and writes to a ``DashboardSink``; the server's controls are
``RecordingControls`` applying the confidence threshold to the real processor's postprocessor
settings. Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by Selenium) loads the
page and we check: the page loads, the stream ``<img>`` shows a decoded frame, the statistics
figures update, moving the confidence slider reaches the pipeline (the next frames' results
use it), and a request without the token is refused when the server listens beyond loopback.

Skipped with the reason when chromium, chromedriver, selenium or ../shared/realdata is missing.
Set EDGESEG_DASHBOARD_SCREENSHOT=path.png to keep a screenshot of the page.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import MODEL_DYNAMIC, VAL_IMAGES, copy_images
from dashboard_controls import RecordingControls, chromium_missing, start_chromium

IMAGES = 6
IMGSZ = 320
NEW_CONF = 0.8
TOKEN = "browser-test-token-0123456789"
WAIT_S = 20.0

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def _missing() -> str | None:
    browser = chromium_missing()
    if browser is not None:
        return browser
    for path in (MODEL_DYNAMIC, VAL_IMAGES):
        if not path.exists():
            return f"real test material missing: {path} (expected ../shared/realdata)"
    return None


if (_reason := _missing()) is not None:
    pytest.skip(_reason, allow_module_level=True)

from selenium import webdriver  # noqa: E402 - only once we know it is there
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from edgeseg.app import build_processor  # noqa: E402
from edgeseg.config import parse_config  # noqa: E402
from edgeseg.config.dashboard import DashboardConfig  # noqa: E402
from edgeseg.dashboard import DashboardServer, DashboardSink  # noqa: E402
from edgeseg.model import load_model  # noqa: E402
from edgeseg.pipeline.runner import Pipeline  # noqa: E402
from edgeseg.service.stats import snapshot  # noqa: E402
from edgeseg.sources import open_source  # noqa: E402
from edgeseg.sources.base import SourceOptions  # noqa: E402
from edgeseg.structures import FrameResult  # noqa: E402


class Live:
    """The running pipeline, the dashboard feed and controls, and every result seen."""

    def __init__(self, folder: Path):
        config = parse_config({"model": {"imgsz": IMGSZ}})
        self.model = load_model(MODEL_DYNAMIC, imgsz=IMGSZ, threads=2)
        self.processor = build_processor(config, self.model)
        self.source = open_source(str(folder), SourceOptions(loop=True))
        self.feed = DashboardSink()
        self.controls = RecordingControls(self.processor, source=str(folder))
        self.results: list[tuple[float, np.ndarray]] = []
        self._lock = threading.Lock()
        self.pipeline = Pipeline(self.source, self.processor, [self.feed], inference_priority=False,
                                 on_result=self._seen)
        self.started = time.monotonic()

    def _seen(self, result: FrameResult) -> None:
        with self._lock:
            self.results.append((time.monotonic(), result.instances.scores.copy()))

    def stats(self) -> dict[str, Any]:
        return snapshot(self.pipeline, self.model, self.started)

    def results_after(self, t: float) -> list[np.ndarray]:
        with self._lock:
            return [scores for when, scores in self.results if when > t]

    def close(self) -> None:
        self.pipeline.stop()
        self.pipeline.join(30)
        self.feed.close()
        self.source.close()
        self.model.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    folder = copy_images(VAL_IMAGES, tmp_path_factory.mktemp("images"), IMAGES)
    running = Live(folder)
    running.pipeline.start()
    yield running
    running.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


def _wait(driver: webdriver.Chrome, what: str, script: str, timeout: float = WAIT_S) -> Any:
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: d.execute_script(script))
    except Exception:
        logs = driver.execute_script("return document.body ? document.body.innerText.slice(0, 500) : ''")
        raise AssertionError(f"timed out waiting for {what}; page text: {logs!r}") from None


def _frames_figure(driver: webdriver.Chrome) -> int:
    text = driver.execute_script("return document.getElementById('fig-frames').textContent")
    return int(text.replace(",", "")) if text and text != "–" else -1


def test_dashboard_page_stream_figures_and_control(live: Live, browser: webdriver.Chrome) -> None:
    config = DashboardConfig(port=0, stream_fps=10)
    with DashboardServer(config, live.feed, live.controls, live.stats) as server:
        browser.get(server.url)
        assert browser.title == "edgeseg"

        # The stream <img> shows a decoded frame of the real images.
        width = _wait(browser, "a decoded stream frame",
                      "const i = document.getElementById('stream'); return i.complete && i.naturalWidth;")
        assert width > 0
        assert live.feed.encodes > 0

        # The figures come from the event stream and keep changing.
        _wait(browser, "the frames figure", "return document.getElementById('fig-frames').textContent !== '–'")
        first = _frames_figure(browser)
        _wait(browser, "the frames figure to grow",
              f"return Number(document.getElementById('fig-frames').textContent.replace(/,/g, '')) > {first}")
        assert _frames_figure(browser) > first > 0
        _wait(browser, "per-class counts", "return document.querySelectorAll('#counts tr').length > 0")
        _wait(browser, "the latency figure", "return document.getElementById('fig-latency').textContent.includes('ms')")

        # Before the change, the real results include instances below the new threshold.
        assert any(len(s) and s.min() < NEW_CONF for _, s in live.results), "no low-score instance to filter"

        # Moving the slider in the page reaches the pipeline.
        browser.execute_script(
            "const c = document.getElementById('conf'); c.value = arguments[0];"
            "c.dispatchEvent(new Event('input', {bubbles: true}));"
            "c.dispatchEvent(new Event('change', {bubbles: true}));",
            str(NEW_CONF),
        )
        assert live.controls.changed.wait(WAIT_S), "the control never reached the server"
        name, value, applied_at = live.controls.calls[-1]
        assert (name, value) == ("conf_threshold", pytest.approx(NEW_CONF))
        assert live.processor.postprocessor.settings.conf_threshold == pytest.approx(NEW_CONF)
        _wait(browser, "the control's confirmation", "return document.getElementById('control-msg').textContent"
              ".startsWith('applied')")

        deadline = time.monotonic() + WAIT_S
        while len(live.results_after(applied_at)) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        after = live.results_after(applied_at)[1:]  # the first may have been in postprocessing already
        assert len(after) >= 3, "the pipeline produced no frames after the change"
        assert all(float(s.min()) >= NEW_CONF - 1e-6 for s in after if len(s))
        _wait(browser, "the slider to show the pipeline's value",
              f"return document.getElementById('conf-value').textContent === '{NEW_CONF:.2f}'")

        # The inline script and style ran under the page's CSP, without a console error.
        errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors

        screenshot = os.environ.get("EDGESEG_DASHBOARD_SCREENSHOT")
        if screenshot:
            browser.set_window_size(1440, 1400)
            time.sleep(2.0)  # a couple more events for the chart
            browser.save_screenshot(screenshot)


def _reachable_address() -> tuple[str, str] | None:
    """(address to bind, address to connect to) beyond loopback, or None where none works."""
    candidates = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # no packet is sent; this picks the outgoing interface
            candidates.append(probe.getsockname()[0])
    except OSError:
        pass
    try:
        candidates.extend(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        pass
    for connect in dict.fromkeys(c for c in candidates if not c.startswith("127.")):
        for bind in ("0.0.0.0", connect):
            try:
                with socket.create_server((bind, 0)) as server:
                    port = server.getsockname()[1]
                    with socket.create_connection((connect, port), timeout=2):
                        return bind, connect
            except OSError:
                continue
    return None


def _status(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_dashboard_beyond_loopback_needs_the_token(live: Live, browser: webdriver.Chrome) -> None:
    address = _reachable_address()
    if address is None:
        pytest.skip("no non-loopback address can be bound and reached here; "
                    "test_dashboard.py covers the same decision through authorize()")
    bind, connect = address
    config = DashboardConfig(host=bind, port=0, token=TOKEN)
    with DashboardServer(config, live.feed, live.controls, live.stats) as server:
        base = f"http://{connect}:{server.port}/"
        # In the browser: refused without the token, served with it.
        browser.get(base)
        body = browser.execute_script("return document.body.innerText")
        assert "token" in json.loads(body)["error"]
        browser.get(f"{base}?token={TOKEN}")
        _wait(browser, "a decoded stream frame with the token",
              "const i = document.getElementById('stream'); return i.complete && i.naturalWidth;")
        assert "token=" not in browser.current_url  # the page takes the token out of the address bar
        # Every route, without and with it.
        for path in ("", "api/state", "metrics", "stream.mjpg?fps=1", "events"):
            assert _status(base + path) == 401, path
        assert _status(base + "api/state", {"Authorization": "Bearer wrong-token-0123456789"}) == 401
        assert _status(base + "api/state", {"Authorization": f"Bearer {TOKEN}"}) == 200
        assert _status(f"{base}api/state?token={TOKEN}") == 200

