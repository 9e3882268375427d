"""Dashboard hardening (issue 11): bounded inputs, slots given back, source switches that keep serving.

Each class of fault is a table; every row is real HTTP against a real ``DashboardServer`` on a
free loopback port, because the faults live in the wire handling (request line, query, body,
sockets), not in a function that a unit test could call alone.

- Query parameters: every route's parameters are bounded; outside (nan, inf, negative, huge,
  non-numeric, repeated, unknown) is a 400 with one line naming the parameter.
- Stream slots: a viewer that disconnects, or stops reading, gives its slot back within a
  bounded time, even at the lowest fps and with no new frame.
- Request lines: a malformed one gets a clean 400, and no log line at any level holds a token.
- JSON bodies: size, depth, number length, duplicate keys, NaN: 400, never a 500.
- Source switch: a source that does not open is a 400 naming why (credentials masked), the
  running source is left alone, and a refused switch is never laid over a later reload; a file
  or folder is switched to looping, so it does not end the daemon.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest
from dashboard_controls import RecordingControls, synthetic_result

from edgeseg.config import parse_config
from edgeseg.config.dashboard import DashboardConfig
from edgeseg.dashboard import DashboardServer, DashboardSink
from edgeseg.dashboard import server as server_module
from edgeseg.dashboard.controls import Controls
from edgeseg.dashboard.server import DashboardError
from edgeseg.postprocess.settings import PostprocessSettings
from edgeseg.service import controls as service_controls
from edgeseg.service.controls import DaemonControls
from edgeseg.service.daemon import Daemon
from edgeseg.service.session import Generation, Session

TOKEN = "hardening-token-0123456789"
WAIT_S = 10.0


class Served:
    """A running server and what it was built on, with a raw-socket and an http.client helper."""

    def __init__(self, server: DashboardServer, feed: DashboardSink, controls: Controls):
        self.server, self.feed, self.controls = server, feed, controls

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            raw = response.read()
            return response.status, json.loads(raw) if raw.startswith(b"{") else {"raw": raw.decode("latin-1")}
        finally:
            conn.close()

    def raw(self, data: bytes) -> bytes:
        """Send ``data`` as it is and read the whole answer (the server closes after an error)."""
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=WAIT_S) as sock:
            sock.sendall(data)
            answer = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return answer
                answer += chunk

    def post(self, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        return self.request("POST", "/api/control", body, {"Content-Type": "application/json", **(headers or {})})


@contextmanager
def serving(controls: Controls | None = None, token: str | None = None, **config: Any) -> Iterator[Served]:
    dashboard = DashboardConfig(port=0, **config)
    feed = DashboardSink.from_config(dashboard)
    server = DashboardServer(dashboard, feed, controls or RecordingControls(), dict, system=dict, token=token)
    try:
        with server:
            yield Served(server, feed, server.controls)
    finally:
        feed.close()


def _one_line_error(answer: dict[str, Any]) -> str:
    error = answer["error"]
    assert isinstance(error, str) and error and "\n" not in error and "Traceback" not in error
    return error


# -- query parameters: bounded on every route ---------------------------------------------------

# (path, expected fragment of the one-line reason)
BAD_QUERIES = [
    ("/stream.mjpg?fps=0.000001", "fps: expected a decimal number from 0.2 to 60"),
    ("/stream.mjpg?fps=1e-300", "fps: expected a decimal number"),
    ("/stream.mjpg?fps=0", "fps: expected"),
    ("/stream.mjpg?fps=0.1", "fps: expected"),
    ("/stream.mjpg?fps=-5", "fps: expected"),
    ("/stream.mjpg?fps=nan", "fps: expected"),
    ("/stream.mjpg?fps=NaN", "fps: expected"),
    ("/stream.mjpg?fps=inf", "fps: expected"),
    ("/stream.mjpg?fps=-inf", "fps: expected"),
    ("/stream.mjpg?fps=1e9", "fps: expected"),
    ("/stream.mjpg?fps=61", "fps: expected"),
    ("/stream.mjpg?fps=" + "9" * 5000, "query: expected at most"),
    ("/stream.mjpg?fps=99999999", "fps: expected"),
    ("/stream.mjpg?fps=abc", "fps: expected"),
    ("/stream.mjpg?fps=", "fps: expected"),
    ("/stream.mjpg?fps=%EF%BC%95", "fps: expected"),  # a full-width digit: not a decimal number here
    ("/stream.mjpg?fps=1&fps=2", "'fps': given more than once"),
    ("/stream.mjpg?view=depth", "view: expected one of result, input"),
    ("/stream.mjpg?view=", "view: expected one of"),
    ("/stream.mjpg?view=result&view=input", "'view': given more than once"),
    ("/stream.mjpg?colour=red", "unknown query parameter 'colour'"),
    ("/events?fps=1", "unknown query parameter 'fps'"),
    ("/api/state?x=1", "unknown query parameter 'x'"),
    ("/metrics?view=input", "unknown query parameter 'view'"),
    ("/?a=1&b=2&c=3&d=4&e=5&f=6&g=7&h=8&i=9", "query: expected at most 8 parameters"),
    ("/?token=" + "t" * 600, "token: expected at most 512 characters"),
    ("/api/state?token=a&token=b", "'token': given more than once"),
]


@pytest.mark.parametrize(("path", "error"), BAD_QUERIES)
def test_query_parameters_are_bounded(path: str, error: str) -> None:
    """Every way out of bounds is a 400 naming the parameter, and takes no stream slot."""
    with serving() as served:
        served.feed.write(synthetic_result(0))
        status, answer = served.request("GET", path)
        assert status == 400, answer
        assert error in _one_line_error(answer)
        assert served.feed.viewers == 0 and served.server.state()["viewers"] == {"streams": 0, "events": 0}


@pytest.mark.parametrize(("query", "status"), [("fps=0.2", 200), ("fps=60", 200), ("fps=2.5&view=input", 200),
                                                ("view=result", 200), ("", 200)])
def test_query_parameters_within_bounds(query: str, status: int) -> None:
    """The bounds refuse nothing a viewer may ask for: from STREAM_FPS_MIN to the config's cap."""
    with serving() as served:
        served.feed.write(synthetic_result(0))
        sock, head = _open(served, f"/stream.mjpg?{query}")
        with sock:
            assert head.startswith(f"HTTP/1.1 {status}".encode())


# -- stream slots: given back when the client is gone -------------------------------------------


def _open(served: Served, path: str, rcvbuf: int = 0) -> tuple[socket.socket, bytes]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(WAIT_S)
    sock.connect(("127.0.0.1", served.server.port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return sock, data


def _wait_until(condition: Any, seconds: float) -> float:
    """Seconds until ``condition()`` held; fails after ``seconds``."""
    t0 = time.monotonic()
    while not condition():
        assert time.monotonic() - t0 < seconds, f"not within {seconds} s"
        time.sleep(0.05)
    return time.monotonic() - t0


# (path, slot kind) - the lowest fps, with no frame after the first: nothing is written for seconds
SLOT_ROWS = [("/stream.mjpg?fps=0.2", "streams"), ("/stream.mjpg?fps=0.2&view=input", "streams"),
             ("/stream.mjpg", "streams"), ("/events", "events")]


@pytest.mark.parametrize(("path", "kind"), SLOT_ROWS)
def test_slot_given_back_when_the_client_disconnects(path: str, kind: str) -> None:
    """Four ``<img>`` tags at a tiny fps used to take every slot until restart; now a closed
    connection is noticed within POLL_S steps, without waiting for a write."""
    with serving(max_viewers=1, events_hz=0.2) as served:
        served.feed.write(synthetic_result(0))
        sock, head = _open(served, path)
        assert b"200 OK" in head
        _wait_until(lambda: served.server.state()["viewers"][kind] == 1, WAIT_S)
        status, answer = served.request("GET", path.split("?")[0])
        assert status == 503 and "at most 1" in answer["error"]  # the one slot is taken
        sock.close()
        took = _wait_until(lambda: served.server.state()["viewers"][kind] == 0, 3.0)
        assert took < 2.0, f"slot given back after {took:.1f} s"
        again, _ = _open(served, path)
        with again:
            assert _ == b"" or b"200 OK" in _


@pytest.mark.parametrize("fps", ["0.2", "10"])
def test_slot_given_back_when_the_client_stops_reading(monkeypatch: pytest.MonkeyPatch, fps: str) -> None:
    """A client that stays connected but never reads: keepalive writes fill the small send buffer,
    then the send timeout ends the stream, at the lowest fps too."""
    monkeypatch.setattr(server_module, "STREAM_SEND_TIMEOUT_S", 1.0)
    monkeypatch.setattr(server_module, "STREAM_KEEPALIVE_S", 0.5)
    with serving(max_viewers=1, stream_max_width=0, jpeg_quality=100) as served:
        rng = np.random.default_rng(0)
        big = synthetic_result(0, size=(720, 1280))
        big.frame.image[...] = rng.integers(0, 255, big.frame.image.shape, dtype=np.uint8)  # incompressible
        served.feed.write(big)
        sock, head = _open(served, f"/stream.mjpg?fps={fps}", rcvbuf=4096)  # and never reads again
        with sock:
            assert b"200 OK" in head
            _wait_until(lambda: served.feed.viewers == 1, WAIT_S)
            took = _wait_until(lambda: served.feed.viewers == 0, 20.0)
        assert took < 15.0
        assert served.request("GET", "/stream.mjpg?fps=x")[0] == 400  # still serving


# -- request lines: a clean 400, never a token in a log line ------------------------------------

MALFORMED_LINES = [
    f"GET /?token={TOKEN} X HTTP/1.1",
    f"GET /api/state?token={TOKEN} HTTP/9.9",
    "GET / HTTP/9.9",
    "GET / HTTP/2.0",
    "GET / HTTP/1.x",
    f"GET /?token={TOKEN}",  # HTTP/0.9: an answer without status line would follow
    "GARBAGE",
    f"POST /api/control?%74oken={TOKEN} HTTP/1.1 extra",
]


@pytest.mark.parametrize("line", MALFORMED_LINES)
def test_malformed_request_line(line: str, caplog: pytest.LogCaptureFixture) -> None:
    """Malformed lines used to make the logger raise before authentication (empty reply)."""
    caplog.set_level(logging.DEBUG)
    with serving(token=TOKEN) as served:
        answer = served.raw(f"{line}\r\nHost: 127.0.0.1\r\n\r\n".encode("latin-1"))
        status_line, _, rest = answer.partition(b"\r\n")
        assert status_line.startswith(b"HTTP/1.") and b" 400 " in status_line, answer[:200]
        body = json.loads(rest.partition(b"\r\n\r\n")[2])
        assert "malformed request line" in _one_line_error(body) and TOKEN not in body["error"]
        assert served.request("GET", "/api/state", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert TOKEN not in logged and "Traceback" not in logged


@pytest.mark.parametrize("path", [f"/api/state?token={TOKEN}", f"/api/state?%74oken={TOKEN}&x=1",
                                  f"/api/state?TOKEN={TOKEN}", f"/nope?token={TOKEN}",
                                  f"/stream.mjpg?token={TOKEN}&fps=nan"])
def test_no_token_logged_on_keep_alive(path: str, caplog: pytest.LogCaptureFixture) -> None:
    """Every request line is logged at debug level: the query goes, whatever its spelling."""
    caplog.set_level(logging.DEBUG)
    with serving(token=TOKEN) as served:
        conn = http.client.HTTPConnection("127.0.0.1", served.server.port, timeout=WAIT_S)
        for _ in range(2):  # two requests on one keep-alive connection
            conn.request("GET", path)
            conn.getresponse().read()
        conn.close()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "GET /" in logged  # the request line was logged ...
    assert TOKEN not in logged  # ... without the token


# -- JSON bodies: bounded, a 400 never a 500 ----------------------------------------------------

DEEP = b"[" * 5000 + b"]" * 5000
# (raw body, extra headers, expected status, expected fragment of the reason)
BAD_BODIES: list[tuple[bytes, dict[str, str], int, str]] = [
    (DEEP, {}, 400, "invalid JSON: nested 5000 deep"),
    (b'{"source": ' + b'{"a": ' * 100 + b"1" + b"}" * 101, {}, 400, "nested"),
    (b'{"conf_threshold": ' + b"1" * 5000 + b"}", {}, 400, "a number of 5000 characters"),
    (b'{"resolution": ' + b"6" * 40 + b"}", {}, 400, "a number of 40 characters"),
    (b'{"conf_threshold": 0.' + b"1" * 5000 + b"}", {}, 400, "a number of"),
    (b'{"conf_threshold": 1e999}', {}, 400, "out of range"),
    (b'{"conf_threshold": NaN}', {}, 400, "NaN is not JSON"),
    (b'{"conf_threshold": -Infinity}', {}, 400, "-Infinity is not JSON"),
    (b'{"paused": true, "paused": false}', {}, 400, "key 'paused' given more than once"),
    (b'{"conf_threshold": 1' + b"0" * 20 + b"}", {}, 400, "conf_threshold: expected a number"),
    (b'{"resolution": "\xc2\xb2"}', {}, 400, "resolution: expected"),  # "²".isdigit() is True
    (b'{"resolution": "' + b"6" * 5000 + b'"}', {}, 400, "resolution: expected"),
    (b'{"source": "\\udce9.mp4"}', {}, 400, "source: expected valid Unicode text"),
    (b'{"source": "/data/\\ud800x"}', {}, 400, "lone surrogate"),
    (b'{"source": "a\\u0085b"}', {}, 400, "control characters"),
    (b'{"nms": "' + b"x" * 10000 + b'"}', {}, 400, "nms: expected one of"),
    (b"\xff\xfe{}", {}, 400, "invalid JSON: not UTF-8"),
    (b"{}", {"Content-Length": "\xb2"}, 411, "expected a Content-Length"),
    (b"{}", {"Content-Length": "9" * 5000}, 411, "expected a Content-Length"),
    (b"{}", {"Transfer-Encoding": "chunked"}, 400, "Transfer-Encoding is not supported"),
]


@pytest.mark.parametrize(("body", "headers", "status", "error"), BAD_BODIES)
def test_json_body_is_bounded(body: bytes, headers: dict[str, str], status: int, error: str) -> None:
    """Deep nesting, 5000-digit numbers and the like gave a 500 with a traceback: now one line,
    nothing applied, and the server keeps answering."""
    with serving() as served:
        controls = served.controls
        assert isinstance(controls, RecordingControls)
        got, answer = served.post(body, headers)
        assert got == status, answer
        reason = _one_line_error(answer)
        assert error in reason and len(reason) < 300
        assert controls.calls == []
        assert served.request("GET", "/api/state")[0] == 200


def test_cross_site_request_without_a_token_is_refused() -> None:
    """An ``<img>`` on a web page elsewhere carries ``Sec-Fetch-Site: cross-site``: with no token
    nothing else tells it from this machine's own browser, so it is refused."""
    with serving(max_viewers=1) as served:
        for site, status in (("cross-site", 403), ("same-site", 403), ("same-origin", 200), ("none", 200)):
            assert served.request("GET", "/api/state", headers={"Sec-Fetch-Site": site})[0] == status
    with serving(token=TOKEN) as served:  # with a token, the token decides (an embed on purpose)
        got = served.request("GET", f"/api/state?token={TOKEN}", headers={"Sec-Fetch-Site": "cross-site"})
        assert got[0] == 200


# -- source switch ------------------------------------------------------------------------------


def fake_generation(config: Any) -> Generation:
    """A generation of ``config`` as the Session sees it: a processor's settings and a pipeline's pause."""
    processor = SimpleNamespace(postprocessor=SimpleNamespace(settings=PostprocessSettings()))
    return Generation(config, SimpleNamespace(processor=processor), SimpleNamespace(paused=False))  # type: ignore[arg-type]


class FakeDaemon:
    """What DaemonControls uses of a Daemon: its Session running ``uri``, and a recorded switch_source."""

    def __init__(self, uri: str):
        self.session = Session()
        self.session.begin(fake_generation(parse_config({"source": {"uri": uri}})))
        self.switched: list[tuple[str, bool]] = []

    def switch_source(self, uri: str, loop: bool = False) -> None:
        self.switched.append((uri, loop))

    def controls(self) -> DaemonControls:
        return DaemonControls(self.session, self.switch_source)


def _images(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        cv2.imwrite(str(folder / f"{i}.jpg"), np.full((48, 64, 3), 40 * i, np.uint8))
    return folder


# (source given, 400 reason fragment or None for accepted, finite (looped) when accepted)
SWITCH_ROWS: list[tuple[str, str | None, bool]] = [
    ("{tmp}/absent.mp4", "no such file or folder", False),
    ("{tmp}/empty", "", False),
    ("{tmp}/notes.txt", "expected a video", False),
    ("rtsp://admin:hunter2@127.0.0.1:1/stream", "rtsp://admin:***@127.0.0.1:1/stream", False),
    ("v4l2:///dev/video99", "video99", False),
    ("nosuchscheme://x", "", False),
    ("{tmp}/\udce9.mp4", "lone surrogate", False),
    ("{tmp}/imgs", None, True),
    ("  {tmp}/imgs/1.jpg  ", None, True),
]


@pytest.mark.parametrize(("given", "error", "finite"), SWITCH_ROWS)
def test_source_switch_test_opens_first(tmp_path: Path, given: str, error: str | None, finite: bool,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A source that does not open used to answer 200 and stay laid over every reload; now it is
    a 400 naming why (password masked), the running source untouched and nothing remembered."""
    monkeypatch.setattr(service_controls, "SOURCE_TEST_TIMEOUT_S", 4.0)
    monkeypatch.setattr(service_controls, "SOURCE_TEST_CONNECT_S", 2.0)
    _images(tmp_path / "imgs", 2)
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not a video")
    uri = given.replace("{tmp}", str(tmp_path))
    daemon = FakeDaemon("rtsp://cam/running")
    controls = daemon.controls()
    opened: list[str] = []
    real_open = service_controls.open_source
    monkeypatch.setattr(service_controls, "open_source", lambda u, o: opened.append(u) or real_open(u, o))
    with serving(controls) as served:
        t0 = time.monotonic()
        status, answer = served.post(json.dumps({"source": uri}).encode())
        took = time.monotonic() - t0
        assert took < 4.0 + 2.0, f"answered after {took:.1f} s"
        if error is None:
            assert status == 200, answer
            assert daemon.switched == [(uri.strip(), finite)]
            return
        assert status == 400, answer
        reason = _one_line_error(answer)
        assert error in reason and "hunter2" not in reason
        assert daemon.switched == []  # the running source is left alone
        if "\udce9" in uri:
            assert opened == []  # refused at the door: never reaches OpenCV
        assert served.request("GET", "/api/state")[0] == 200


def test_switch_to_the_running_source_is_no_reload() -> None:
    """A camera opens once: the running URI is neither test-opened nor reloaded."""
    daemon = FakeDaemon("v4l2:///dev/video99")
    daemon.controls().set_source("v4l2:///dev/video99")
    assert daemon.switched == []


# (switches, where the reload fails: "load", "start" or "" for not) -> the source override later
ROLLBACK_ROWS: list[tuple[list[tuple[str, bool]], str, Any]] = [
    ([("/data/clip.mp4", True)], "start", None),  # refused: nothing laid over later reloads
    ([("/data/clip.mp4", True)], "load", None),
    ([("/data/clip.mp4", True), ("/data/other", True)], "start", None),
    ([("/data/clip.mp4", True)], "", {"uri": "/data/clip.mp4", "loop": True}),
    ([("/data/clip.mp4", True), ("rtsp://cam/2", False)], "", {"uri": "rtsp://cam/2"}),
]
STATS = {"fps": 0.0, "frames": 0, "model": "m", "resolution": [320, 320], "backend": "onnxruntime"}


@pytest.mark.parametrize(("switches", "fails", "expected"), ROLLBACK_ROWS)
def test_failed_switch_is_not_remembered(switches: list[tuple[str, bool]], fails: str, expected: Any,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A switch that passed its test-open but whose reload still fails (the camera went in the
    meantime) restores the overrides from before it; a finite source is switched to looping."""
    from edgeseg.errors import ModelError, SourceError

    daemon = Daemon(None, overrides={"postprocess": {"conf_threshold": 0.3}})
    old = parse_config({})
    daemon.session.begin(fake_generation(old))
    monkeypatch.setattr(daemon, "stats", lambda: STATS)
    monkeypatch.setattr(daemon, "_stop_active", lambda reloading=False: None)

    def start(config: Any, model: Any = None) -> Any:
        if fails == "start" and model is not None:
            raise SourceError("the camera went away")
        daemon.session.begin(fake_generation(config))

    def open_model(config: Any) -> Any:
        if fails == "load":
            raise ModelError("bundle refused")
        return SimpleNamespace(spec=SimpleNamespace(name="m", class_names=("thing",)))

    monkeypatch.setattr(daemon, "_start", start)
    monkeypatch.setattr("edgeseg.service.daemon.open_model", open_model)
    monkeypatch.setattr(daemon.build_on_start, "start", lambda *a: None)
    for uri, loop in switches:
        daemon.switch_source(uri, loop=loop)
    daemon._do_reload()
    assert daemon.overrides.get("source") == expected
    assert daemon.overrides["postprocess"] == {"conf_threshold": 0.3}  # other overrides untouched
    running = daemon.session.config().source
    if expected is None:
        assert running.uri == old.source.uri and daemon._load_config().source.uri == old.source.uri
    else:
        assert running.uri == expected["uri"] and running.loop is bool(expected.get("loop"))


def test_events_stream_still_flows_while_a_switch_is_tested(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A switch waits for its test-open in its own request thread: the dashboard keeps serving."""
    release = threading.Event()

    def slow_open(uri: str, options: Any) -> Any:
        release.wait(5)
        raise service_controls.SourceError(f"{uri}: refused")

    monkeypatch.setattr(service_controls, "open_source", slow_open)
    monkeypatch.setattr(service_controls, "SOURCE_TEST_TIMEOUT_S", 3.0)
    controls = FakeDaemon("rtsp://cam/running").controls()
    with serving(controls) as served:
        result: list[tuple[int, dict[str, Any]]] = []
        worker = threading.Thread(target=lambda: result.append(served.post(b'{"source": "rtsp://cam/slow"}')))
        worker.start()
        time.sleep(0.3)
        assert served.request("GET", "/api/state")[0] == 200  # answered while the switch waits
        release.set()
        worker.join(10)
        assert result and result[0][0] == 400 and "refused" in result[0][1]["error"]


# -- a token replaced at a reload: refused at once, and what it opened ends ------------------------

NEW_TOKEN = "replaced-token-0123456789"


@pytest.mark.parametrize("path", ["/stream.mjpg", "/events"])
def test_replaced_token_is_refused_and_its_streams_end(path: str) -> None:
    with serving(token=TOKEN, max_viewers=1) as served:
        served.feed.write(synthetic_result(0))
        sock, head = _open(served, f"{path}?token={TOKEN}")
        with sock:
            assert b"200 OK" in head
            config = served.server.config.model_copy(update={"stream_fps": 2.0})
            assert served.server.reconfigure(config, NEW_TOKEN) is True
            assert served.request("GET", f"/api/state?token={TOKEN}")[0] == 401
            assert served.request("GET", "/api/state", headers={"Authorization": f"Bearer {NEW_TOKEN}"})[0] == 200
            sock.settimeout(WAIT_S)
            while sock.recv(65536):  # the stream admitted under the old token is closed by the server
                pass
        kind = "streams" if path == "/stream.mjpg" else "events"
        _wait_until(lambda: served.server.state()["viewers"][kind] == 0, WAIT_S)  # its slot is back
        assert served.server.config.stream_fps == 2.0
        assert served.server.reconfigure(config, NEW_TOKEN) is False  # the same token: nothing revoked


def test_reconfigure_keeps_to_its_address_and_to_the_token_rule() -> None:
    with serving(token=TOKEN) as served:
        with pytest.raises(ValueError, match="a new address needs a new server"):
            served.server.reconfigure(served.server.config.model_copy(update={"port": 1}), TOKEN)
        assert served.request("GET", f"/api/state?token={TOKEN}")[0] == 200  # nothing changed
    config = DashboardConfig(host="0.0.0.0", port=0, token=TOKEN)
    with DashboardServer(config, DashboardSink(), RecordingControls(), dict, system=dict) as wide:
        with pytest.raises(DashboardError, match="reachable from other machines"):
            wide.reconfigure(wide.config, "  ")  # a blank token is none
        assert wide.token == TOKEN


def test_bound_server_not_yet_serving_stops_cleanly() -> None:
    """``bind`` opens the socket a reload prepares; an aborted reload stops it without serving."""
    server = DashboardServer(DashboardConfig(port=0), DashboardSink(), RecordingControls(), dict, system=dict)
    server.bind()
    port = server.port
    assert port != 0 and not server.serving
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    stopper.join(WAIT_S)
    assert not stopper.is_alive()  # shutdown() of a never-served socketserver would wait forever
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))  # released
