"""Dashboard with several cameras: the feed per camera, each camera's zones on its own frames,
the HTTP routes' ``?camera=`` and ``/api/cameras``, and the page's selector and grid.

Frame results are synthetic (tests/dashboard_controls.py) with ``camera`` set; the two cameras'
frames differ in size (a: 240x320, b: 120x160), so a decoded JPEG says whose it is. The server
runs for real on a free loopback port, given ``cameras`` as the daemon gives it
``Pipeline.cameras()``: a list of ``CameraStats``. The page is checked in headless Chromium
(skipped where it is absent).
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, List, Optional

import cv2
import numpy as np
import pytest
from dashboard_controls import (
    RecordingControls,
    chromium_missing,
    start_chromium,
    synthetic_result,
    track_event,
    with_analytics,
)

from edgeseg.config.dashboard import DashboardConfig
from edgeseg.dashboard import DashboardServer, DashboardSink
from edgeseg.dashboard import server as server_module
from edgeseg.dashboard.overlay import OVERLAY_PALETTE_BGR, camera_overlays
from edgeseg.dashboard.server import BOUNDARY
from edgeseg.pipeline.cameras import CameraStats
from edgeseg.structures import FrameResult

TOKEN = "cameras-token-0123456789"
SIZES = {"a": (240, 320), "b": (120, 160)}
YARD = ("yard", [(200, 120), (300, 120), (300, 220), (200, 220)])  # on a's frame, clear of the boxes
YARD_EDGE = (250, 220)
DOOR = ("door", [(140, 20), (140, 110)])  # on b's frame
DOOR_POINT = (140, 100)
WAIT_S = 10.0


def frame_of(camera: str, frame_id: int = 0, class_ids: tuple[int, ...] = (0, 2, 0)) -> FrameResult:
    size = SIZES.get(camera, (240, 320))
    return dataclasses.replace(synthetic_result(frame_id, size=size, class_ids=class_ids), camera=camera)


def tracked(camera: str, frame_id: int = 0, **kwargs: Any) -> FrameResult:
    return with_analytics(frame_of(camera, frame_id), **{"track_ids": (12, -1, 7), **kwargs})


def stats(name: str, online: bool = True, captured: int = 10, fps: float = 9.876) -> CameraStats:
    return CameraStats(name=name, uri=f"rtsp://***@cam/{name}", live=True, online=online, captured=captured,
                       processed=captured - 1, dropped=1, skipped=0, restarts=0, fps=fps)


def _px(image: np.ndarray, xy: tuple[int, int]) -> np.ndarray:
    return image[xy[1], xy[0]].astype(int)


def _decoded(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


# -- the feed -----------------------------------------------------------------------------------


def test_feed_keeps_the_newest_result_of_each_camera() -> None:
    feed = DashboardSink()
    assert feed.cameras() == [] and feed.default_camera() is None and feed.latest() is None
    a0, b0, a1 = frame_of("a", 0), frame_of("b", 0, class_ids=(3,)), frame_of("a", 1)
    for result in (a0, b0, a1):
        feed.write(result)
    assert feed.seq == 3 and feed.cameras() == ["a", "b"] and feed.default_camera() == "a"
    assert feed.latest("a") == (3, a1) and feed.latest("b") == (2, b0) and feed.latest() == (3, a1)
    assert feed.camera_frames() == {"a": 2, "b": 1}
    info = feed.frame_info("b")
    assert info is not None and info["camera"] == "b" and info["seq"] == 2 and info["image_size"] == [120, 160]
    assert feed.counts("b") == {"frames": 1, "classes": [{"id": 3, "name": "dog", "color": feed.counts("b")
                                                          ["classes"][0]["color"], "frame": 1, "total": 1}]}
    assert [c["name"] for c in feed.counts("a")["classes"]] == ["person", "car"] and feed.counts("a")["frames"] == 2
    assert [s[0] for s in feed.latency_since(0, camera="a")] == [1, 3]
    assert [s[0] for s in feed.latency_since(0, camera="b")] == [2]
    # Each camera's JPEG is its own frame; a newer result of another camera wakes no one.
    got = feed.next_jpeg(0, camera="b", timeout=0.1)
    assert got is not None and got[0] == 2 and _decoded(got[1]).shape[:2] == SIZES["b"]
    assert feed.next_jpeg(2, camera="b", timeout=0.05) is None
    got = feed.latest_jpeg(camera="a")
    assert got is not None and got[0] == 3 and _decoded(got[1]).shape[:2] == SIZES["a"]
    # A camera nothing was written for reads as no frame yet.
    assert feed.latest("c") is None and feed.latest_jpeg(camera="c") is None and feed.frame_info("c") is None
    assert feed.counts("c") == {"frames": 0, "classes": []} and feed.latency_since(0, camera="c") == []


def test_configured_cameras_come_first_and_removed_ones_are_forgotten() -> None:
    feed = DashboardSink()
    feed.set_overlay(cameras=[SimpleNamespace(name="b", zones=(), lines=()),
                              SimpleNamespace(name="a", zones=(), lines=())])
    assert feed.cameras() == ["b", "a"] and feed.default_camera() == "b"  # config order, before any frame
    for camera in ("a", "c", "b"):
        feed.write(frame_of(camera))
    assert feed.cameras() == ["b", "a", "c"]  # then any other seen
    feed.set_overlay(cameras={"a": ((), ())})  # a reload leaves only a
    assert feed.cameras() == ["a"] and feed.latest("b") is None and feed.latest("c") is None
    assert feed.latest("a") is not None and feed.seq == 3


def test_each_camera_draws_its_own_zones_and_lines() -> None:
    feed = DashboardSink()
    feed.set_overlay(cameras={"a": ([YARD], []), "b": {"zones": [], "lines": [DOOR]}})
    zone_bgr = line_bgr = np.array(OVERLAY_PALETTE_BGR[0])  # each camera's first shape
    a = feed.render(tracked("a", occupancy={"yard": {"person": 1}}))
    b = feed.render(tracked("b", occupancy={}))
    assert np.array_equal(_px(a, YARD_EDGE), zone_bgr)
    assert np.array_equal(_px(b, DOOR_POINT), line_bgr)
    # Neither draws the other's shapes.
    assert not np.array_equal(_px(a, DOOR_POINT), line_bgr)
    assert not np.array_equal(_px(feed.render(tracked("c")), DOOR_POINT), line_bgr)
    # A camera not configured draws what the single-camera arguments gave: nothing here.
    unconfigured = feed.render(tracked("c"))
    assert not np.array_equal(_px(unconfigured, YARD_EDGE), zone_bgr)
    feed.write(tracked("a", occupancy={"yard": {"person": 1}}, crossings=[("door", 12, "in")]))
    feed.write(tracked("b", occupancy={}, crossings=[("door", 7, "out")]))
    zones_a, zones_b = feed.zone_counts("a"), feed.zone_counts("b")
    assert zones_a is not None and zones_b is not None
    assert [z["name"] for z in zones_a["zones"]] == ["yard"] and zones_a["zones"][0]["color"] == "#00E5FF"
    assert zones_a["lines"] == [{"name": "door", "color": None, "in": 1, "out": 0}]  # seen on a, not a's line
    assert zones_b["zones"] == [] and zones_b["lines"] == [{"name": "door", "color": "#00E5FF", "in": 0, "out": 1}]
    assert feed.line_counts("a") == {"door": (1, 0)} and feed.line_counts("b") == {"door": (0, 1)}


def test_the_single_camera_call_draws_on_every_camera() -> None:
    feed = DashboardSink()
    feed.set_overlay([YARD])
    for camera in ("a", "c"):
        assert np.array_equal(_px(feed.render(tracked(camera)), YARD_EDGE), np.array(OVERLAY_PALETTE_BGR[0]))


def test_camera_overlays_take_specs_mappings_and_pairs_and_name_the_bad_one() -> None:
    overlays = camera_overlays([SimpleNamespace(name="a", zones=[YARD], lines=[DOOR])])
    assert [z.name for z in overlays["a"].zones] == ["yard"] and [ln.name for ln in overlays["a"].lines] == ["door"]
    overlays = camera_overlays({"a": {"zones": [YARD]}, "b": ([], [DOOR])})
    assert list(overlays) == ["a", "b"] and overlays["b"].lines[0].name == "door"
    with pytest.raises(ValueError, match=r"^camera 'b': zones\[0\]\.points: expected at least 3"):
        camera_overlays({"a": ([YARD], []), "b": ([("bad", [(0, 0), (1, 1)])], [])})
    with pytest.raises(ValueError, match=r"^cameras\[0\]: expected a camera with a name"):
        camera_overlays([([YARD], [])])
    feed = DashboardSink()
    feed.set_overlay(cameras={"a": ([YARD], [])})
    with pytest.raises(ValueError, match="camera 'b'"):
        feed.set_overlay(cameras={"a": ([], []), "b": ([("bad", [(0, 0)])], [])})
    assert feed.overlay_for("a").zones[0].name == "yard" and feed.cameras() == ["a"]  # nothing changed


def test_events_carry_their_camera_and_can_be_narrowed_to_one() -> None:
    feed = DashboardSink()
    feed.write(tracked("a", events=[track_event(1)]))
    feed.write(tracked("b", events=[track_event(2), track_event(3)]))
    entries = feed.events_since()
    assert [(e["camera"], e["track_id"]) for e in entries] == [("b", 3), ("b", 2), ("a", 1)]
    assert [e["track_id"] for e in feed.events_since(camera="a")] == [1]
    assert [e["seq"] for e in feed.events_since(1, camera="b")] == [3, 2]


# -- over HTTP ----------------------------------------------------------------------------------


class Served:
    def __init__(self, server: DashboardServer, feed: DashboardSink):
        self.server, self.feed = server, feed

    def get(self, path: str, headers: Optional[dict[str, str]] = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=WAIT_S)
        try:
            conn.request("GET", path, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def json(self, path: str) -> tuple[int, Any]:
        status, _, body = self.get(path)
        return status, json.loads(body or b"null")


@contextmanager
def serving(cameras: Any = None, token: Optional[str] = None, **config: Any) -> Iterator[Served]:
    dashboard = DashboardConfig(port=0, **config)
    feed = DashboardSink.from_config(dashboard)
    server = DashboardServer(dashboard, feed, RecordingControls(), lambda: {"frames": 3}, system=dict,
                             token=token, cameras=cameras)
    try:
        with server:
            yield Served(server, feed)
    finally:
        feed.close()


def _first_part(served: Served, path: str) -> tuple[bytes, bytes]:
    """The head of a stream's answer and its first JPEG."""
    sock = socket.create_connection(("127.0.0.1", served.server.port), timeout=WAIT_S)
    with sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        data = b""
        deadline = time.monotonic() + WAIT_S
        while data.count(f"--{BOUNDARY}\r\n".encode()) < 2 and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    part = body.split(f"--{BOUNDARY}\r\n".encode())[1]
    return head, part.partition(b"\r\n\r\n")[2].rsplit(b"\r\n", 1)[0]


def test_api_cameras_lists_the_pipelines_cameras_in_order() -> None:
    reported: List[CameraStats] = [stats("b", captured=20), stats("a", online=False), stats("c")]
    with serving(lambda: list(reported)) as served:
        served.feed.write(frame_of("a"))
        served.feed.write(frame_of("a", 1))
        served.feed.write(frame_of("b"))
        status, answer = served.json("/api/cameras")
        assert status == 200 and answer["default"] == "b"
        assert [c["name"] for c in answer["cameras"]] == ["b", "a", "c"]
        b, a, c = answer["cameras"]
        assert b == {"name": "b", "uri": "rtsp://***@cam/b", "live": True, "online": True, "captured": 20,
                     "processed": 19, "dropped": 1, "skipped": 0, "restarts": 0, "fps": 9.88, "frames": 1}
        assert a["online"] is False and a["frames"] == 2 and c["frames"] == 0
        # The stats payload carries the same list, and the page's default camera.
        status, state = served.json("/api/state")
        assert state["camera"] == "b" and [c["name"] for c in state["cameras"]] == ["b", "a", "c"]
        assert state["frame"]["camera"] == "b"
        reported[:] = [stats("a")]  # a reload removed b and c; the feed still has b's frames
        assert [c["name"] for c in served.json("/api/cameras")[1]["cameras"]] == ["a", "b"]


def test_without_the_pipelines_cameras_the_feeds_are_listed() -> None:
    def reloading() -> List[Any]:
        raise RuntimeError("no active pipeline")

    for cameras in (None, reloading):
        with serving(cameras) as served:
            assert served.json("/api/cameras") == (200, {"cameras": [], "default": None})
            served.feed.write(frame_of("a"))
            status, answer = served.json("/api/cameras")
            assert answer["cameras"] == [{**dict.fromkeys(["uri", "live", "online", "captured", "processed",
                                                           "dropped", "skipped", "restarts", "fps"]),
                                          "name": "a", "frames": 1}]


def test_routes_serve_the_camera_asked_for() -> None:
    with serving(lambda: [stats("a"), stats("b"), stats("c")], events_hz=5.0) as served:
        served.feed.write(tracked("a", occupancy={"yard": {"person": 1}}))
        served.feed.write(tracked("b", occupancy={"dock": {"car": 2}}, events=[track_event(5)]))
        status, state = served.json("/api/state?camera=b")
        assert status == 200 and state["camera"] == "b" and state["frame"]["camera"] == "b"
        assert state["counts"]["frames"] == 1 and [s[0] for s in state["latency"]] == [2]
        assert served.json("/api/zones?camera=b")[1]["zones"][0]["name"] == "dock"
        assert served.json("/api/zones")[1]["zones"][0]["name"] == "yard"  # the default camera: a
        assert [e["camera"] for e in served.json("/api/events?camera=b")[1]["events"]] == ["b"]
        assert served.json("/api/events?camera=a")[1]["events"] == []
        for path, camera in (("/frame.jpg?camera=b", "b"), ("/frame.jpg", "a"),
                             ("/frame.jpg?camera=a&view=input", "a")):
            status, headers, body = served.get(path)
            assert status == 200 and headers["content-type"] == "image/jpeg", path
            assert _decoded(body).shape[:2] == SIZES[camera], path
        status, headers, body = served.get("/frame.jpg?camera=c")  # configured, no frame yet
        assert status == 503 and json.loads(body) == {"error": "no frame yet of camera 'c'"}
        head, jpeg = _first_part(served, "/stream.mjpg?camera=b&fps=5")
        assert b"200 OK" in head and _decoded(jpeg).shape[:2] == SIZES["b"]
        head, jpeg = _first_part(served, "/stream.mjpg?fps=5")
        assert _decoded(jpeg).shape[:2] == SIZES["a"]


def test_a_stream_starts_with_its_first_frame_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """A browser shows a part once the next begins: a quiet camera's frame must not wait for the
    keepalive (made an hour here, so only the doubled first frame can complete the read)."""
    monkeypatch.setattr(server_module, "STREAM_KEEPALIVE_S", 3600.0)
    with serving(lambda: [stats("a"), stats("b")]) as served:
        served.feed.write(frame_of("a"))
        served.feed.write(frame_of("b"))
        sock = socket.create_connection(("127.0.0.1", served.server.port), timeout=WAIT_S)
        with sock:
            sock.sendall(b"GET /stream.mjpg?camera=b HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            data = b""
            while data.count(f"--{BOUNDARY}\r\n".encode()) < 3:
                data += sock.recv(65536)
        parts = data.partition(b"\r\n\r\n")[2].split(f"--{BOUNDARY}\r\n".encode())
        assert parts[0] == b"" and parts[1] == parts[2]
        jpeg = parts[1].partition(b"\r\n\r\n")[2][:-2]
        assert _decoded(jpeg).shape[:2] == SIZES["b"] and served.feed.encodes == 1


@pytest.mark.parametrize("path", ["/stream.mjpg", "/frame.jpg", "/events", "/api/state", "/api/zones", "/api/events"])
def test_an_unknown_camera_is_404_naming_it(path: str) -> None:
    with serving(lambda: [stats("a"), stats("b")]) as served:
        served.feed.write(frame_of("a"))
        status, headers, body = served.get(f"{path}?camera=nope")
        assert status == 404 and headers["content-type"].startswith("application/json")
        error = json.loads(body)["error"]
        assert error == "camera: no camera named 'nope' (cameras: a, b)"
        assert served.feed.viewers == 0 and served.server.state()["viewers"] == {"streams": 0, "events": 0}


def test_camera_query_is_bounded() -> None:
    with serving() as served:
        status, answer = served.json("/api/state?camera=" + "x" * 65)
        assert status == 400 and answer["error"] == "camera: expected at most 64 characters, got 65"
        assert served.json("/api/cameras?camera=a")[0] == 400  # the list takes no camera


def test_camera_routes_need_the_token() -> None:
    with serving(lambda: [stats("a")], token=TOKEN) as served:
        served.feed.write(frame_of("a"))
        for path in ("/api/cameras", "/frame.jpg?camera=a", "/api/state?camera=a", "/frame.jpg?camera=nope"):
            assert served.get(path)[0] == 401, path  # refused before the camera is even looked at
            assert served.get(path, {"Authorization": "Bearer wrong-token-0123456789"})[0] == 401, path
        assert served.get("/api/cameras", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
        assert served.get(f"/frame.jpg?camera=a&token={TOKEN}")[0] == 200
        assert served.get(f"/frame.jpg?camera=nope&token={TOKEN}")[0] == 404


# -- the page, in headless Chromium -------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    reason = chromium_missing()
    if reason is not None:
        pytest.skip(reason)
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    driver.set_page_load_timeout(WAIT_S * 2)
    yield driver
    driver.quit()


def _wait(driver: Any, what: str, script: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S * 2, poll_frequency=0.2).until(lambda d: d.execute_script(script))
    except Exception:
        text = driver.execute_script("return document.body ? document.body.innerText.slice(0, 500) : ''")
        raise AssertionError(f"timed out waiting for {what}; page text: {text!r}") from None


@pytest.mark.slow
def test_page_selector_grid_and_switching_the_main_view(browser: Any) -> None:
    with serving(lambda: [stats("a"), stats("b", online=False)], events_hz=5.0) as served:
        served.feed.write(frame_of("a"))
        served.feed.write(frame_of("b"))
        browser.get(served.server.url)
        _wait(browser, "the main stream of camera a",
              "const i = document.getElementById('stream'); return i.complete && i.naturalWidth === 320;")
        _wait(browser, "two tiles with their frames", """
            const tiles = document.querySelectorAll('#camera-grid .tile');
            return tiles.length === 2 && Array.from(tiles).every((t) => t.querySelector('img').naturalWidth > 0);""")
        page = browser.execute_script("""
            const select = document.getElementById('camera');
            return {options: Array.from(select.options).map((o) => o.value), value: select.value,
                    shown: !select.classList.contains('hidden') && select.offsetParent !== null,
                    grid: !document.getElementById('cameras-panel').classList.contains('hidden'),
                    rows: document.querySelectorAll('#camera-rows tr').length,
                    tiles: Array.from(document.querySelectorAll('#camera-grid .tile')).map(
                        (t) => [t.dataset.camera, t.classList.contains('on'), t.textContent])};""")
        assert page["options"] == ["a", "b"] and page["value"] == "a" and page["shown"] and page["grid"]
        assert page["rows"] == 2
        assert [(name, on) for name, on, _ in page["tiles"]] == [("a", True), ("b", False)]
        assert "offline" in page["tiles"][1][2]
        # Clicking b's tile makes it the main view: its stream, its caption, its tile marked.
        browser.execute_script("document.querySelector('#camera-grid .tile[data-camera=\"b\"]').click();")
        _wait(browser, "the main stream of camera b",
              "const i = document.getElementById('stream');"
              " return i.src.includes('camera=b') && i.naturalWidth === 160;")
        _wait(browser, "camera b's caption", "return document.getElementById('cap-camera').textContent === 'b';")
        assert browser.execute_script(
            "return [document.getElementById('camera').value,"
            " document.querySelector('#camera-grid .tile.on').dataset.camera];") == ["b", "b"]
        errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
