"""Dashboard with tracking on: zones, lines, track ids and trails on the stream; events and zone counts.

Frame results carry ``Analytics`` records made by hand (``with_analytics``, ``track_event`` in
tests/dashboard_controls.py), so nothing here waits for the tracker. Drawing is checked on pixels
of the rendered frame (before JPEG): a zone's outline colour on its edge, its tint inside and
nothing outside, a line's arrow on its "in" side, a trail in its track's class colour, and a frame
without analytics drawn exactly as before. The HTTP side runs a real server on a free loopback
port: /api/events (bounded, newest first, token), /api/zones, and the SSE ``events`` type. The
page is checked in headless Chromium (skipped where it is absent): user-configured names that
look like markup are shown as text and nothing runs.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

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
from edgeseg.dashboard import overlay as overlay_module
from edgeseg.dashboard.feed import HEAVY_KEYS
from edgeseg.dashboard.overlay import OVERLAY_PALETTE_BGR, ZONE_FILL_ALPHA, Overlay, zone_label
from edgeseg.sinks.annotate import annotate, class_color

TOKEN = "analytics-token-0123456789"
SIZE = (240, 320)  # height, width of synthetic_result's frames
# The synthetic instances' boxes cover x < 130, y < 110: the shapes below stay clear of them.
YARD = ("yard", [(200, 120), (300, 120), (300, 220), (200, 220)])
DOOR = ("door", [(160, 90), (160, 200)])  # drawn downwards: its "in" side is on screen's left
ZONE_BGR = np.array(OVERLAY_PALETTE_BGR[0])
LINE_BGR = np.array(OVERLAY_PALETTE_BGR[1])
WAIT_S = 10.0


def _px(image: np.ndarray, x: int, y: int) -> np.ndarray:
    return image[y, x].astype(int)


def _tracked(frame_id: int = 0, **kwargs: Any) -> Any:
    defaults: dict[str, Any] = {"track_ids": (12, -1, 7), "occupancy": {"yard": {"person": 2, "car": 0}}}
    defaults.update(kwargs)
    return with_analytics(synthetic_result(frame_id), **defaults)


@pytest.fixture
def feed() -> DashboardSink:
    sink = DashboardSink()
    sink.set_overlay([YARD], [DOOR])
    return sink


# -- geometry as given ----------------------------------------------------------------------------


def test_overlay_takes_config_objects_mappings_and_tuples() -> None:
    as_object = SimpleNamespace(name="yard", points=[(0.625, 0.5), (0.9375, 0.5), (0.9375, 0.9167), (0.625, 0.9167)],
                                coordinates="normalized")
    as_mapping = {"name": "door", "points": [[160, 90], [160, 200]], "coordinates": "pixel"}
    overlay = Overlay([as_object], [as_mapping])
    assert [(s.name, s.normalized) for s in overlay.zones + overlay.lines] == [("yard", True), ("door", False)]
    # Normalised points become pixels of each frame size: the same zone on 240x320 and 480x640.
    assert overlay.zones[0].pixels(*SIZE).reshape(-1, 2).tolist() == [[200, 120], [300, 120], [300, 220], [200, 220]]
    assert overlay.zones[0].pixels(480, 640).reshape(-1, 2)[0].tolist() == [400, 240]
    assert Overlay([(*YARD, "normalised")]).zones[0].normalized
    assert overlay.color("zone", 0) == "#00E5FF" and overlay.color("line", 0) == "#FFD600"


def test_overlay_takes_the_zone_and_line_config_models() -> None:
    from edgeseg.config.zones import LineConfig, ZoneConfig

    zone = ZoneConfig(name="yard", coordinates="normalized",
                      points=[(0.625, 0.5), (0.9375, 0.5), (0.9375, 0.9167), (0.625, 0.9167)])
    line = LineConfig(name="door", points=DOOR[1])
    feed = DashboardSink()
    feed.set_overlay([zone], [line])
    assert [(s.name, s.normalized) for s in feed.overlay.zones + feed.overlay.lines] == [("yard", True),
                                                                                         ("door", False)]
    assert feed.overlay.zones[0].pixels(*SIZE).reshape(-1, 2).tolist() == [[200, 120], [300, 120], [300, 220],
                                                                           [200, 220]]
    reference = DashboardSink()
    reference.set_overlay([YARD], [DOOR])
    assert np.array_equal(feed.render(_tracked()), reference.render(_tracked()))


@pytest.mark.parametrize(
    ("zones", "lines", "error"),
    [
        ([("yard", [(0, 0), (1, 1)])], [], r"zones\[0\]\.points: expected at least 3"),
        ([YARD, ("", YARD[1])], [], r"zones\[1\]\.name: expected a non-empty string"),
        ([], [("door", [(0, 0)])], r"lines\[0\]\.points: expected at least 2"),
        ([], [("door", [(0, 0), (float("nan"), 1)])], r"lines\[0\]\.points: expected finite"),
        ([], [("door", [(0, 0), (1, 1)], "furlongs")], r"lines\[0\]\.coordinates: expected 'pixel' or"),
        ([("yard", "abc")], [], r"zones\[0\]\.points: expected a list of \(x, y\) pairs"),
        ([42], [], r"zones\[0\]: expected a zone or line config"),
    ],
)
def test_overlay_refuses_what_cannot_be_drawn(zones: list[Any], lines: list[Any], error: str) -> None:
    feed = DashboardSink()
    feed.set_overlay([YARD], [DOOR])
    with pytest.raises(ValueError, match=error):
        feed.set_overlay(zones, lines)
    assert [z.name for z in feed.overlay.zones] == ["yard"]  # the previous geometry stays


def test_zone_label() -> None:
    assert zone_label("yard", None) == "yard"
    assert zone_label("yard", {"person": 0}) == "yard: 0"
    assert zone_label("yard", {"car": 1, "person": 2, "dog": 0}) == "yard: person 2, car 1"
    many = {f"c{i}": i for i in range(1, 8)}
    assert zone_label("yard", many) == "yard: c7 7, c6 6, c5 5, c4 4, +6"


# -- drawing --------------------------------------------------------------------------------------


def test_nothing_more_drawn_without_analytics(feed: DashboardSink) -> None:
    result = synthetic_result(0)
    assert result.analytics is None
    plain = annotate(result.frame.image, result.instances)
    assert np.array_equal(feed.render(result), plain)
    assert np.array_equal(feed.render(result, "input"), result.frame.image)


def test_zone_outline_tint_and_nothing_outside(feed: DashboardSink) -> None:
    result = _tracked()
    drawn = feed.render(result)
    plain = annotate(result.frame.image, result.instances)
    for x, y in [(250, 220), (200, 170), (300, 170), (250, 219)]:  # on the edges, away from the label
        assert np.array_equal(_px(drawn, x, y), ZONE_BGR), (x, y)
    tinted = np.round((1 - ZONE_FILL_ALPHA) * _px(plain, 250, 170) + ZONE_FILL_ALPHA * ZONE_BGR)
    assert np.abs(_px(drawn, 250, 170) - tinted).max() <= 1
    assert not np.array_equal(_px(drawn, 250, 170), _px(plain, 250, 170))
    for x, y in [(250, 230), (310, 230), (190, 200), (20, 230)]:  # outside every shape and label
        assert np.array_equal(_px(drawn, x, y), _px(plain, x, y)), (x, y)


def test_normalised_zone_lands_on_the_same_pixels() -> None:
    pixel, normalised = DashboardSink(), DashboardSink()
    pixel.set_overlay([YARD])
    normalised.set_overlay([("yard", [(x / SIZE[1], y / SIZE[0]) for x, y in YARD[1]], "normalized")])
    result = _tracked()
    assert np.array_equal(pixel.render(result), normalised.render(result))


def test_scaled_stream_draws_on_the_scaled_frame() -> None:
    """Shapes and trails are drawn after scaling to the stream's width: pixel coordinates are
    scaled with the frame, and outlines keep their thickness on screen."""
    feed = DashboardSink(max_width=SIZE[1] // 2)
    feed.set_overlay([YARD], [DOOR])
    result = _tracked(trails={12: [(220, 20), (250, 20), (280, 20)]})
    drawn = feed.render(result)
    assert drawn.shape == (SIZE[0] // 2, SIZE[1] // 2, 3)
    for x, y in [(125, 110), (100, 85), (150, 85)]:  # the yard's edges at half scale
        assert np.array_equal(_px(drawn, x, y), ZONE_BGR), (x, y)
    assert np.array_equal(_px(drawn, 125, 10), np.array(class_color(0)))  # the trail, halved
    image_before = result.frame.image.copy()
    feed.render(result, "input")
    feed.render(result)
    assert np.array_equal(result.frame.image, image_before)  # the captured frame is never drawn on


def test_line_arrow_points_to_its_in_side_and_counts_crossings(feed: DashboardSink) -> None:
    feed.write(_tracked(0, crossings=[("door", 12, "in"), ("door", 7, "out")]))
    feed.write(_tracked(1, crossings=[("door", 12, "in"), ("gate", 3, "out")]))
    drawn = feed.render(_tracked(2))
    assert np.array_equal(_px(drawn, 160, 170), LINE_BGR)  # on the line
    # The arrow starts at the line's middle (y 145) and points left: down the screen, the
    # right-hand side is the screen's left.
    assert np.array_equal(_px(drawn, 154, 145), LINE_BGR)
    assert not np.array_equal(_px(drawn, 166, 145), LINE_BGR)
    assert feed.line_counts() == {"door": (2, 1), "gate": (0, 1)}
    counts = feed.zone_counts()
    assert counts is not None
    assert counts["lines"] == [{"name": "door", "color": "#FFD600", "in": 2, "out": 1},
                               {"name": "gate", "color": None, "in": 0, "out": 1}]  # seen, not configured
    assert counts["zones"] == [{"name": "yard", "color": "#00E5FF", "counts": {"person": 2, "car": 0}, "total": 2}]
    feed.write(synthetic_result(3))  # tracking turned off (a reload): no zone counts to show
    assert feed.zone_counts() is None and feed.line_counts()["door"] == (2, 1)


def test_track_ids_replace_the_labels_and_trails_are_drawn(feed: DashboardSink) -> None:
    trail = [(220, 20), (250, 30), (280, 40)]
    result = _tracked(trails={12: trail, 99: [(5, 200)]})  # a one-point trail draws nothing
    drawn = feed.render(result)
    untracked = feed.render(_tracked(track_ids=(-1, -1, -1)))
    plain = annotate(result.frame.image, result.instances)
    # Instance 2 (track 7) is the last label drawn: "#7 person 0.50" reaches past "person 0.50".
    text_w = {t: cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)[0][0] for t in ("person 0.50", "#7 person 0.50")}
    x0, y0 = int(result.instances.boxes[2, 0]), int(result.instances.boxes[2, 1])
    beyond = slice(x0 + text_w["person 0.50"] + 8, x0 + text_w["#7 person 0.50"])
    changed = (drawn != plain).any(axis=2)
    assert changed[y0 - 18 : y0, beyond].any()
    assert np.array_equal(_px(drawn, x0 + text_w["#7 person 0.50"] + 5, y0 - 10),
                          np.array(class_color(0)))  # the wider label's background
    # Without ids nor trails, only the shapes are added: the instance labels are annotate's.
    assert np.array_equal(untracked[: y0 + 5, :140], plain[: y0 + 5, :140])
    # The trail, in the class colour of its track (person), ends in a dot.
    assert np.array_equal(_px(drawn, 280, 40), np.array(class_color(0)))
    assert np.array_equal(_px(drawn, 250, 30), np.array(class_color(0)))
    assert np.array_equal(_px(drawn, 5, 200), _px(plain, 5, 200))


def test_ids_of_another_frame_are_not_drawn(feed: DashboardSink) -> None:
    result = _tracked(track_ids=(1, 2))  # two ids for three instances
    plain = annotate(result.frame.image, result.instances)
    assert np.array_equal(feed.render(result)[:100, :140], plain[:100, :140])


def test_a_drawing_failure_keeps_the_stream(feed: DashboardSink, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("bad analytics")

    monkeypatch.setattr(overlay_module.Overlay, "draw", broken)
    monkeypatch.setattr(overlay_module.Overlay, "draw_ids", broken)
    result = _tracked()
    assert np.array_equal(feed.render(result), annotate(result.frame.image, result.instances))
    feed.render(result)
    assert sum("drawing the analytics" in r.getMessage() for r in caplog.records) == 1  # logged once
    assert feed.encode(result)[:2] == b"\xff\xd8"


# -- events and counts in the feed ------------------------------------------------------------------


def test_events_are_kept_bounded_newest_first_without_masks() -> None:
    feed = DashboardSink(events_history=5)
    assert feed.events_since() == [] and feed.zone_counts() is None
    feed.write(synthetic_result(0))  # no analytics: nothing kept
    for frame in range(3):
        feed.write(_tracked(frame, events=[track_event(10 * frame + k, zones=["yard"]) for k in range(3)]))
    entries = feed.events_since()
    assert [e["seq"] for e in entries] == [9, 8, 7, 6, 5] and feed.event_seq == 9
    assert [e["track_id"] for e in entries] == [22, 21, 20, 12, 11]
    assert [e["seq"] for e in feed.events_since(7)] == [9, 8]
    assert [e["seq"] for e in feed.events_since(0, limit=2)] == [9, 8]
    first = entries[0]
    assert first["type"] == "new" and first["event_id"] == "ev-22" and first["reasons"] == ["new"]
    document = first["document"]
    assert document["zones"] == {"yard": {"entered_at": 1_700_000_000.0, "left_at": None, "dwell_s": 0.0,
                                          "visits": 1, "loitering": False}}
    assert document["class"] == "person" and document["best"]["box"] == [1.0, 2.0, 3.0, 4.0]
    assert "mask" not in document["best"] and "path" not in document
    snapshot = {"file": "test/ev-1.jpg", "crop": "test/ev-1.png", "frame_id": 1}
    odd = track_event(1, snapshot=snapshot, score=np.float32(0.5), extra=(1, {"mask": b"x"}))
    feed.write(_tracked(3, events=[odd]))
    light = feed.events_since(9)[0]["document"]
    assert not HEAVY_KEYS & set(light) and light["score"] == 0.5 and light["extra"] == [1, {}]
    json.dumps(feed.events_since())  # JSON-able as it is


def test_write_with_analytics_stays_cheap() -> None:
    """The output thread's share: a few appends per frame, no drawing (counted, not timed)."""
    feed = DashboardSink()
    feed.set_overlay([YARD], [DOOR])
    calls = []
    original = Overlay.draw

    def counting(self: Overlay, *args: Any, **kwargs: Any) -> None:
        calls.append(1)
        original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Overlay, "draw", counting)
        for i in range(50):
            feed.write(_tracked(i, events=[track_event(i)], crossings=[("door", i, "in")]))
        assert calls == [] and feed.encodes == 0
        assert feed.next_jpeg(0, timeout=1.0) is not None and calls == [1]


# -- over HTTP --------------------------------------------------------------------------------------


class Served:
    def __init__(self, server: DashboardServer, feed: DashboardSink):
        self.server, self.feed = server, feed

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=WAIT_S)
        try:
            conn.request("GET", path, headers=headers or {})
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"null")
        finally:
            conn.close()


@contextmanager
def serving(token: str | None = None, **config: Any) -> Iterator[Served]:
    dashboard = DashboardConfig(port=0, **config)
    feed = DashboardSink.from_config(dashboard)
    feed.set_overlay([YARD], [DOOR])
    server = DashboardServer(dashboard, feed, RecordingControls(), dict, system=dict, token=token)
    try:
        with server:
            yield Served(server, feed)
    finally:
        feed.close()


def test_api_events_and_zones() -> None:
    with serving() as served:
        assert served.get("/api/events") == (200, {"events": []})
        assert served.get("/api/zones") == (200, None)  # no analytics yet
        for frame in range(30):
            served.feed.write(_tracked(frame, events=[track_event(100 + 2 * frame), track_event(101 + 2 * frame)]))
        status, answer = served.get("/api/events")
        assert status == 200 and len(answer["events"]) == 50  # EVENTS_DEFAULT_LIMIT
        assert [e["seq"] for e in answer["events"][:3]] == [60, 59, 58]
        status, answer = served.get("/api/events?limit=3")
        assert [e["track_id"] for e in answer["events"]] == [159, 158, 157]
        status, zones = served.get("/api/zones")
        assert status == 200 and zones["zones"][0]["counts"] == {"person": 2, "car": 0}
        status, state = served.get("/api/state")
        assert state["zones"] == zones


@pytest.mark.parametrize(("query", "error"), [("limit=0", "limit: expected a decimal number from 1 to 200"),
                                              ("limit=-1", "limit: expected"), ("limit=nan", "limit: expected"),
                                              ("limit=201", "limit: expected"), ("after=1", "unknown query parameter")])
def test_api_events_query_is_bounded(query: str, error: str) -> None:
    with serving() as served:
        status, answer = served.get(f"/api/events?{query}")
        assert status == 400 and error in answer["error"]


def test_api_routes_need_the_token() -> None:
    with serving(token=TOKEN) as served:
        served.feed.write(_tracked(0, events=[track_event(1)]))
        for path in ("/api/events", "/api/zones"):
            assert served.get(path)[0] == 401
            assert served.get(path, {"Authorization": "Bearer wrong-token-0123456789"})[0] == 401
            assert served.get(path, {"Authorization": f"Bearer {TOKEN}"})[0] == 200
            assert served.get(f"{path}?token={TOKEN}")[0] == 200


def _sse_messages(sock: socket.socket, want: Any, buffer: bytes = b"") -> tuple[list[dict[str, Any]], bytes]:
    """Read SSE messages until ``want(messages)``; each as {"id", "event", "data"}."""
    deadline = time.monotonic() + WAIT_S
    messages: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        while b"\n\n" in buffer:
            raw, buffer = buffer.split(b"\n\n", 1)
            fields = dict(line.split(": ", 1) for line in raw.decode().split("\n") if ": " in line)
            if "event" in fields:
                messages.append({"id": int(fields["id"]), "event": fields["event"], "data": json.loads(fields["data"])})
        if want(messages):
            return messages, buffer
        buffer += sock.recv(65536)
    raise AssertionError(f"no such messages within {WAIT_S} s: {[m['event'] for m in messages]}")


def test_sse_carries_the_kept_events_then_each_new_one() -> None:
    with serving(events_hz=5.0) as served:
        served.feed.write(_tracked(0, events=[track_event(1), track_event(2)]))
        sock = socket.create_connection(("127.0.0.1", served.server.port), timeout=WAIT_S)
        with sock:
            sock.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(65536)
            head, _, rest = head.partition(b"\r\n\r\n")
            assert b"200 OK" in head
            messages, rest = _sse_messages(sock, lambda m: any(x["event"] == "events" for x in m), rest)
            assert [m["event"] for m in messages[:2]] == ["stats", "events"]  # stats first, as before
            assert [m["id"] for m in messages[:2]] == [1, 2]
            assert messages[0]["data"]["zones"]["zones"][0]["name"] == "yard"
            assert [e["track_id"] for e in messages[1]["data"]["events"]] == [2, 1]  # the kept ones
            served.feed.write(_tracked(1, events=[track_event(3, kind="end")]))
            more, _ = _sse_messages(sock, lambda m: any(x["event"] == "events" for x in m), rest)
            fresh = [x for x in more if x["event"] == "events"][0]["data"]["events"]
            assert [(e["track_id"], e["type"], e["seq"]) for e in fresh] == [(3, "end", 3)]  # only the new one


# -- the page, in headless Chromium -----------------------------------------------------------------

HOSTILE_ZONE = "<script>window.__xss = 1</script>"
HOSTILE_LINE = "<img src=x onerror=\"window.__xss = 2\">"
HOSTILE_CLASS = "<b id=injected>car</b>"


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
def test_page_shows_zones_and_events_as_text(browser: Any, tmp_path: Path) -> None:
    with serving(events_hz=5.0) as served:
        served.feed.set_overlay([(HOSTILE_ZONE, YARD[1])], [(HOSTILE_LINE, DOOR[1])])
        event = track_event(12, class_name=HOSTILE_CLASS, zones=[HOSTILE_ZONE],
                            crossings=[{"line": HOSTILE_LINE, "direction": "in", "time": 1_700_000_001.0}])
        served.feed.write(_tracked(0, occupancy={HOSTILE_ZONE: {"person": 1}}, crossings=[(HOSTILE_LINE, 12, "in")],
                                   events=[event, track_event(13, kind="end")]))
        browser.get(served.server.url)
        _wait(browser, "the zones table", "return document.querySelectorAll('#zones tr').length === 1")
        _wait(browser, "two events", "return document.querySelectorAll('#events-list li').length === 2")
        page = browser.execute_script("""
            const text = (sel) => document.querySelector(sel).textContent;
            return {zone: text('#zones tr'), line: text('#lines tr'), first: text('#events-list li'),
                    last: text('#events-list li:last-child'),
                    markup: document.querySelectorAll('#zones-panel script, #zones-panel img, #events-panel script, '
                                                      + '#events-panel img, #injected').length,
                    xss: window.__xss === undefined ? null : window.__xss,
                    panels: [document.getElementById('zones-panel').hidden,
                             document.getElementById('zones-panel').classList.contains('hidden')]};
        """)
        assert HOSTILE_ZONE in page["zone"] and "person 1" in page["zone"]
        assert HOSTILE_LINE in page["line"] and page["line"].endswith("10")  # in 1, out 0
        assert "#13" in page["first"] and "end" in page["first"]  # newest first
        assert HOSTILE_CLASS in page["last"] and HOSTILE_ZONE in page["last"] and HOSTILE_LINE in page["last"]
        assert page["markup"] == 0 and page["xss"] is None and page["panels"] == [False, False]
        # A later event arrives over SSE and goes on top.
        served.feed.write(_tracked(1, events=[track_event(14, kind="update", reasons=("entered_zone",))]))
        _wait(browser, "the new event on top",
              "return document.querySelector('#events-list li').textContent.includes('#14')")
        errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
