"""Dashboard: access rules, control validation, wire formats, and the cost of having no viewer.

Unit level, with synthetic frame results and ``RecordingControls`` (tests/dashboard_controls.py);
the server runs for real on a free loopback port. The browser and the real pipeline are in
test_dashboard_browser.py.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from dashboard_controls import RecordingControls, synthetic_result

from edgeseg.config.dashboard import DashboardConfig, is_loopback, parse_dashboard_config
from edgeseg.dashboard import ControlRequest, DashboardError, DashboardServer, DashboardSink, parse_control
from edgeseg.dashboard import feed as feed_module
from edgeseg.dashboard.controls import Controls
from edgeseg.dashboard.server import BOUNDARY, authorize, mjpeg_head, mjpeg_part, sse_event
from edgeseg.dashboard.system import SystemMonitor, panel_from_telemetry
from edgeseg.errors import ConfigError, SourceError

TOKEN = "s3cret-token-0123456789"
SWITCH = {  # the shape of edgeseg.adaptive's Switch.as_dict()
    "time": 1.0, "frame_id": 10, "action": "down", "from": {"size": 640, "effort": 0},
    "to": {"size": 480, "effort": 0, "effort_name": "full"}, "measured": "9.1 FPS", "reason": "below target",
}
OTHER = "wrong-token-0123456789x"

# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True), ("localhost", True),
        ("LOCALHOST", True), ("0.0.0.0", False), ("::", False), ("192.168.1.20", False),
        ("jetson.lan", False), ("", False),
    ],
)
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ({}, None),
        ({"enabled": True, "port": 9000}, None),
        ({"host": "0.0.0.0", "token": TOKEN}, None),
        ({"host": "0.0.0.0"}, "reachable from other machines: set token or token_file"),
        ({"host": "192.168.1.2", "token": "short"}, "at least 16 characters"),
        ({"token": TOKEN, "token_file": "/etc/x"}, "set token or token_file, not both"),
        ({"port": 70000}, "field 'dashboard.port'"),
        ({"jpeg_quality": 5}, "field 'dashboard.jpeg_quality'"),
        ({"stream_fps": 0}, "field 'dashboard.stream_fps'"),
        ({"colour": "blue"}, "field 'dashboard.colour': unknown key"),
        ([], "expected a mapping"),
    ],
)
def test_config(raw: Any, error: str | None) -> None:
    if error is None:
        config = parse_dashboard_config(raw)
        assert config.host == raw.get("host", "127.0.0.1")
        return
    with pytest.raises(ConfigError, match=error) as info:
        parse_dashboard_config(raw)
    assert TOKEN not in str(info.value) and "short" not in str(info.value)  # secrets stay out


def test_token_file(tmp_path: Path) -> None:
    good = tmp_path / "token"
    good.write_text(f"{TOKEN}\nignored\n", encoding="utf-8")
    assert DashboardConfig(host="0.0.0.0", token_file=str(good)).resolve_token() == TOKEN
    short = tmp_path / "short"
    short.write_text("abc\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="at least 16"):
        DashboardConfig(token_file=str(short)).resolve_token()
    with pytest.raises(ConfigError, match="cannot read"):
        DashboardConfig(token_file=str(tmp_path / "absent")).resolve_token()
    assert DashboardConfig().resolve_token() is None


# -- access -------------------------------------------------------------------------------------

LOCAL = "127.0.0.1:8080"

# (configured token, loopback bind, method, Authorization, ?token=, Host) -> status or None (allowed)
AUTH_MATRIX = [
    # loopback, no token configured: open to this machine only
    (None, True, "GET", None, None, LOCAL, None),
    (None, True, "POST", None, None, "localhost:8080", None),
    (None, True, "GET", None, None, "[::1]:8080", None),
    (None, True, "GET", None, None, None, None),
    (None, True, "GET", None, None, "evil.example:8080", 403),  # DNS rebinding
    (None, True, "POST", None, None, "192.168.1.5:8080", 403),
    # beyond loopback without a token: never (the server also refuses to start)
    (None, False, "GET", None, None, "192.168.1.5:8080", 401),
    # a token configured: required, on any address
    (TOKEN, False, "GET", None, None, "192.168.1.5:8080", 401),
    (TOKEN, False, "GET", f"Bearer {TOKEN}", None, "192.168.1.5:8080", None),
    (TOKEN, False, "GET", f"bearer {TOKEN}", None, "192.168.1.5:8080", None),
    (TOKEN, False, "GET", None, TOKEN, "192.168.1.5:8080", None),
    (TOKEN, False, "HEAD", None, TOKEN, "192.168.1.5:8080", None),
    (TOKEN, False, "POST", None, TOKEN, "192.168.1.5:8080", 401),  # query token: GET only
    (TOKEN, False, "POST", f"Bearer {TOKEN}", None, "192.168.1.5:8080", None),
    (TOKEN, False, "GET", f"Bearer {OTHER}", None, "192.168.1.5:8080", 401),
    (TOKEN, False, "GET", None, OTHER, "192.168.1.5:8080", 401),
    (TOKEN, False, "GET", f"Bearer {OTHER}", TOKEN, "192.168.1.5:8080", None),
    (TOKEN, False, "GET", f"Basic {TOKEN}", None, "192.168.1.5:8080", 401),
    (TOKEN, False, "GET", "Bearer", None, "192.168.1.5:8080", 401),
    (TOKEN, False, "GET", None, "", "192.168.1.5:8080", 401),
    (TOKEN, False, "GET", None, TOKEN[:-1], "192.168.1.5:8080", 401),
    (TOKEN, False, "GET", None, TOKEN + "x", "192.168.1.5:8080", 401),
    (TOKEN, False, "GET", None, "tökén", "192.168.1.5:8080", 401),
    (TOKEN, True, "GET", None, None, LOCAL, 401),  # configured on loopback: still required
    (TOKEN, True, "GET", None, TOKEN, "evil.example", None),  # the token, not the Host, decides
    ("", False, "GET", None, "", "192.168.1.5:8080", 401),  # an empty token is no token
]


@pytest.mark.parametrize(("token", "loopback", "method", "authorization", "query", "host", "status"), AUTH_MATRIX)
def test_authorize(
    token: str | None, loopback: bool, method: str, authorization: str | None, query: str | None,
    host: str | None, status: int | None,
) -> None:
    denied = authorize(token, loopback, method, authorization, query, host)
    assert (None if denied is None else denied.status) == status
    if denied is not None:
        assert "\n" not in denied.reason and (not token or token not in denied.reason)


def test_refuses_to_start_beyond_loopback_without_token() -> None:
    config = DashboardConfig.model_construct(**{**DashboardConfig().model_dump(), "host": "0.0.0.0", "port": 0})
    server = DashboardServer(config, DashboardSink(), RecordingControls(), dict)
    with pytest.raises(DashboardError, match="set dashboard.token or dashboard.token_file"):
        server.start()
    assert server._httpd is None  # nothing was bound


def test_blank_token_counts_as_none() -> None:
    config = DashboardConfig.model_construct(**{**DashboardConfig().model_dump(), "host": "0.0.0.0", "port": 0})
    server = DashboardServer(config, DashboardSink(), RecordingControls(), dict, token="  ")
    assert server.token is None
    with pytest.raises(DashboardError):
        server.start()


def test_address_in_use_is_one_line() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        server = DashboardServer(DashboardConfig(port=port), DashboardSink(), RecordingControls(), dict)
        with pytest.raises(DashboardError, match=f"cannot listen on 127.0.0.1:{port}"):
            server.start()


# -- control validation -------------------------------------------------------------------------

CONTROL_TABLE: list[tuple[Any, ControlRequest | None, str | None]] = [
    ({"conf_threshold": 0.5}, ControlRequest(conf_threshold=0.5), None),
    ({"conf_threshold": 0}, ControlRequest(conf_threshold=0.0), None),
    ({"conf_threshold": 1.0}, None, r"conf_threshold: expected a number in \[0.0, 1.0\), got 1.0"),
    ({"conf_threshold": -0.1}, None, "conf_threshold"),
    ({"conf_threshold": "0.5"}, None, "conf_threshold"),
    ({"conf_threshold": True}, None, "conf_threshold"),
    ({"conf_threshold": None}, None, "conf_threshold"),
    ({"conf_threshold": float("nan")}, None, "conf_threshold"),
    ({"nms": "hard"}, ControlRequest(nms="hard"), None),
    ({"nms": "fastest"}, None, "nms: expected one of gaussian, linear, hard, got 'fastest'"),
    ({"resolution": "auto"}, ControlRequest(resolution="auto"), None),
    ({"resolution": 640}, ControlRequest(resolution=640), None),
    ({"resolution": "416"}, ControlRequest(resolution=416), None),
    ({"resolution": 1280}, ControlRequest(resolution=1280), None),
    ({"resolution": 500}, None, "resolution: expected 'auto' or a multiple of 32 from 320 to 1280, got 500"),
    ({"resolution": 288}, None, "resolution"),
    ({"resolution": 1312}, None, "resolution"),
    ({"resolution": True}, None, "resolution"),
    ({"resolution": 640.0}, None, "resolution"),
    ({"source": "rtsp://cam/stream"}, ControlRequest(source="rtsp://cam/stream"), None),
    ({"source": "  /data/images  "}, ControlRequest(source="/data/images"), None),
    ({"source": ""}, None, "source: expected a non-empty URI string"),
    ({"source": 3}, None, "source"),
    ({"source": "a\nb"}, None, "control characters"),
    ({"source": "x" * 2049}, None, "longer than 2048"),
    ({"paused": True}, ControlRequest(paused=True), None),
    ({"paused": "yes"}, None, "paused: expected true or false, got 'yes'"),
    ({"conf_threshold": 0.3, "nms": "linear", "resolution": "auto", "source": "csi://0", "paused": False},
     ControlRequest(0.3, "linear", "auto", "csi://0", False), None),
    ({"conf_threshold": 0.3, "nms": "bad"}, None, "nms"),  # one bad field: nothing applies
    ({}, None, "no control given"),
    ({"iou": 0.5}, None, "unknown control 'iou'"),
    ([], None, "expected a JSON object of controls, got list"),
    ("conf", None, "expected a JSON object"),
]


@pytest.mark.parametrize(("body", "expected", "error"), CONTROL_TABLE)
def test_parse_control(body: Any, expected: ControlRequest | None, error: str | None) -> None:
    if error is not None:
        with pytest.raises(ValueError, match=error):
            parse_control(body)
        return
    assert parse_control(body) == expected


def test_control_request_applies_in_order() -> None:
    controls = RecordingControls()
    request = ControlRequest(conf_threshold=0.4, nms="hard", resolution="auto", source="csi://0", paused=True)
    assert request.apply(controls) == ["conf_threshold", "nms", "resolution", "source", "paused"]
    assert [(n, v) for n, v, _ in controls.calls] == [
        ("conf_threshold", 0.4), ("nms", "hard"), ("resolution", None), ("source", "csi://0"), ("paused", True),
    ]
    ControlRequest(resolution=512).apply(controls)
    assert controls.calls[-1][:2] == ("resolution", 512)


def test_recording_controls_is_a_controls() -> None:
    assert isinstance(RecordingControls(), Controls)


# -- wire formats -------------------------------------------------------------------------------


def test_sse_event_format() -> None:
    raw = sse_event({"fps": 12.5, "bad": float("nan"), "nested": {"inf": float("inf")}, "text": "a\nb"}, "stats", 7)
    text = raw.decode("utf-8")
    assert text.endswith("\n\n") and text.count("\n\n") == 1
    lines = text[:-2].split("\n")
    assert lines[:2] == ["id: 7", "event: stats"]
    assert len(lines) == 3 and lines[2].startswith("data: ")  # one data line: newlines are escaped
    assert json.loads(lines[2][len("data: "):]) == {"fps": 12.5, "bad": None, "nested": {"inf": None}, "text": "a\nb"}


def test_mjpeg_part_framing() -> None:
    jpeg = b"\xff\xd8jpegbytes\xff\xd9"
    part = mjpeg_part(jpeg)
    head, _, rest = part.partition(b"\r\n\r\n")
    assert head == b"Content-Type: image/jpeg\r\nContent-Length: 13"
    assert rest == jpeg + f"\r\n--{BOUNDARY}\r\n".encode()
    assert mjpeg_head() == f"--{BOUNDARY}\r\n".encode()


# -- the sink -----------------------------------------------------------------------------------


class _Counting:
    def __init__(self, real: Any):
        self.real, self.calls = real, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.real(*args, **kwargs)


def test_no_encoding_work_without_viewers(monkeypatch: pytest.MonkeyPatch) -> None:
    annotate = _Counting(feed_module.annotate)
    imencode = _Counting(cv2.imencode)
    monkeypatch.setattr(feed_module, "annotate", annotate)
    monkeypatch.setattr(feed_module.cv2, "imencode", imencode)
    feed = DashboardSink()
    results = [synthetic_result(i) for i in range(200)]
    t0 = time.perf_counter()
    for result in results:
        feed.write(result)
    per_write_ms = (time.perf_counter() - t0) / len(results) * 1e3
    assert annotate.calls == imencode.calls == feed.encodes == 0
    assert per_write_ms < 1.0, f"write costs {per_write_ms:.3f} ms"
    # A viewer asking gets the newest frame, encoded once however often it is asked.
    seq, jpeg = feed.next_jpeg(0, "result", timeout=0.1) or (0, b"")
    assert seq == 200 and jpeg[:2] == b"\xff\xd8"
    assert feed.next_jpeg(0, "result", timeout=0.1) == (seq, jpeg)
    assert annotate.calls == imencode.calls == 1
    assert feed.next_jpeg(seq, "result", timeout=0.05) is None  # nothing newer
    feed.next_jpeg(0, "input", timeout=0.1)
    assert annotate.calls == 1 and imencode.calls == 2  # the raw view is not drawn


def test_counts_and_latency() -> None:
    feed = DashboardSink()
    assert feed.counts() == {"frames": 0, "classes": []}
    feed.write(synthetic_result(0, class_ids=(0, 2, 0)))
    feed.write(synthetic_result(1, class_ids=(3,)))
    counts = feed.counts()
    assert counts["frames"] == 2
    assert [(c["name"], c["frame"], c["total"]) for c in counts["classes"]] == [
        ("person", 0, 2), ("car", 0, 1), ("dog", 1, 1),
    ]
    assert counts["classes"][0]["color"].startswith("#")
    samples = feed.latency_since(0)
    assert [s[0] for s in samples] == [1, 2] and all(s[2] == 10.0 for s in samples)
    assert feed.latency_since(1) == samples[1:]
    info = feed.frame_info()
    assert info is not None and info["frame_id"] == 1 and info["instances"] == 1


TELEMETRY = {  # the shape of edgeseg.monitor.telemetry.TelemetrySnapshot.as_dict() on a Jetson
    "time": 1.0,
    "sources": {"jtop": "ok", "psutil": "ok"},
    "readings": [
        {"name": "cpu_core_percent", "value": 40.0, "source": "jtop", "labels": {"core": "0"}},
        {"name": "cpu_core_percent", "value": 60.0, "source": "jtop", "labels": {"core": "1"}},
        {"name": "gpu_utilization_percent", "value": 87.0, "source": "jtop", "labels": {"gpu": "0"}},
        {"name": "memory_used_ratio", "value": 0.5, "source": "jtop", "labels": {}},
        {"name": "temperature_celsius", "value": 51.5, "source": "jtop", "labels": {"zone": "GPU", "type": "GPU"}},
        {"name": "power_watts", "value": 4.2, "source": "jtop", "labels": {"rail": "VDD_IN"}},
        {"name": "power_watts", "value": 7.5, "source": "jtop", "labels": {"rail": "TOT"}},
        {"name": "process_resident_bytes", "value": 300 * 1024 * 1024, "source": "psutil", "labels": {}},
        {"name": "process_cpu_percent", "value": 120.0, "source": "psutil", "labels": {}},
    ],
}


def test_panel_from_telemetry() -> None:
    assert panel_from_telemetry(TELEMETRY) == {
        "cpu_percent": 50.0, "cpu_count": 2, "process_cpu_percent": 120.0, "process_rss_mb": 300.0,
        "memory_percent": 50.0, "gpu_percent": 87.0, "power_watts": 7.5, "temperatures_c": {"GPU": 51.5},
    }
    assert panel_from_telemetry({"readings": []}) == {}
    server = DashboardServer(DashboardConfig(port=0), DashboardSink(), RecordingControls(), dict,
                             system=lambda: TELEMETRY)
    assert server.state()["system"]["gpu_percent"] == 87.0


def test_system_monitor_reads_this_machine() -> None:
    reading = SystemMonitor().read()
    assert 0 <= reading["cpu_percent"] <= 100 and reading["memory_total_mb"] > 0 and reading["process_rss_mb"] > 0


def test_encode_scales_down_wide_frames() -> None:
    feed = DashboardSink(max_width=160)
    jpeg = feed.encode(synthetic_result(0, size=(240, 320)))
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape == (120, 160, 3)


# -- the server ---------------------------------------------------------------------------------


class Served:
    def __init__(self, server: DashboardServer, feed: DashboardSink, controls: RecordingControls):
        self.server, self.feed, self.controls = server, feed, controls

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def control(self, body: Any, content_type: str = "application/json") -> tuple[int, Any]:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        status, _, data = self.request("POST", "/api/control", raw, {"Content-Type": content_type})
        return status, json.loads(data)


@contextmanager
def serving(token: str | None = None, **config: Any) -> Iterator[Served]:
    dashboard = DashboardConfig(port=0, **config)
    feed = DashboardSink.from_config(dashboard)
    controls = RecordingControls()
    stats = {"fps": 10.0, "frames": 5, "nan": float("nan")}
    server = DashboardServer(
        dashboard, feed, controls, lambda: stats,
        metrics=lambda: "# TYPE edgeseg_frames_total counter\nedgeseg_frames_total 5\n",
        switches=lambda: [SWITCH],
        system=lambda: {"cpu_percent": 12.0},
        token=token,
    )
    try:
        with server:
            yield Served(server, feed, controls)
    finally:
        feed.close()


@pytest.fixture
def served() -> Iterator[Served]:
    with serving() as s:
        yield s


@pytest.fixture
def served_token() -> Iterator[Served]:
    with serving(TOKEN) as s:
        yield s


def test_page_is_self_contained(served: Served) -> None:
    status, headers, body = served.request("GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    html = body.decode()
    assert "<script>" in html and "<style>" in html and "<!-- SCRIPT -->" not in html
    assert "http://" not in html and "https://" not in html  # no CDN, no external fetch
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp and "connect-src 'self'" in csp
    assert headers["cache-control"] == "no-store" and headers["x-frame-options"] == "DENY"


@pytest.mark.parametrize(
    ("path", "status"),
    [("/", 401), ("/index.html", 401), ("/stream.mjpg", 401), ("/events", 401), ("/api/state", 401),
     ("/metrics", 401), ("/nope", 401)],
)
def test_routes_refused_without_token(served_token: Served, path: str, status: int) -> None:
    got, headers, body = served_token.request("GET", path)
    assert got == status and headers["www-authenticate"].startswith("Bearer")
    assert json.loads(body) == {"error": "a valid token is required (Authorization: Bearer, or ?token=)"}
    assert served_token.feed.viewers == 0


def test_token_by_header_and_query(served_token: Served) -> None:
    assert served_token.request("GET", f"/?token={TOKEN}")[0] == 200
    assert served_token.request("GET", "/api/state", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
    body = json.dumps({"paused": True}).encode()
    hdr = {"Content-Type": "application/json"}
    assert served_token.request("POST", f"/api/control?token={TOKEN}", body, hdr)[0] == 401
    assert served_token.controls.calls == []
    ok = served_token.request("POST", "/api/control", body, {**hdr, "Authorization": f"Bearer {TOKEN}"})
    assert ok[0] == 200 and served_token.controls.calls[-1][:2] == ("paused", True)


def test_rebinding_host_refused(served: Served) -> None:
    assert served.request("GET", "/api/state", headers={"Host": "attacker.example"})[0] == 403
    assert served.request("GET", "/api/state", headers={"Host": f"localhost:{served.server.port}"})[0] == 200


@pytest.mark.parametrize(
    ("body", "content_type", "status", "error"),
    [
        ({"conf_threshold": 0.6}, "application/json", 200, None),
        ({"resolution": "auto", "nms": "linear"}, "application/json; charset=utf-8", 200, None),
        ({"conf_threshold": 2}, "application/json", 400, "conf_threshold: expected a number in [0.0, 1.0), got 2"),
        ({"bogus": 1}, "application/json", 400, "unknown control 'bogus'"),
        (b"{not json", "application/json", 400, "invalid JSON"),
        (b"\xff\xfe", "application/json", 400, "invalid JSON"),
        ({"paused": True}, "text/plain", 415, "expected Content-Type: application/json"),
        (b"x" * 20000, "application/json", 413, "body over"),
    ],
)
def test_control_over_http(
    served: Served, body: Any, content_type: str, status: int, error: str | None
) -> None:
    got, answer = served.control(body, content_type)
    assert got == status
    if error is None:
        assert set(answer["applied"]) == set(body) and answer["controls"]["paused"] is False
        assert [n for n, _, _ in served.controls.calls] == answer["applied"]
    else:
        assert answer["error"].startswith(error) and "\n" not in answer["error"]
        assert served.controls.calls == []


@pytest.mark.parametrize("failure", [ValueError("resolution 512: this model is static (640)"),
                                     SourceError("cannot open v4l2:///dev/video9: no such device")])
def test_control_refused_by_pipeline(served: Served, failure: Exception) -> None:
    served.controls.fail_with = failure
    status, answer = served.control({"source": "v4l2:///dev/video9"})
    assert status == 400 and answer == {"error": str(failure)}


def test_state_and_metrics(served: Served) -> None:
    served.feed.write(synthetic_result(0))
    status, _, body = served.request("GET", "/api/state")
    state = json.loads(body)
    assert status == 200
    assert state["stats"] == {"fps": 10.0, "frames": 5, "nan": None}
    assert state["controls"]["conf_threshold"] == 0.25
    assert state["switches"] == [SWITCH]
    assert state["system"] == {"cpu_percent": 12.0}
    assert [c["name"] for c in state["counts"]["classes"]] == ["person", "car"]
    assert state["frame"]["frame_id"] == 0 and len(state["latency"]) == 1
    status, headers, body = served.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    assert b"edgeseg_frames_total 5" in body
    assert served.request("DELETE", "/api/state")[0] == 501
    assert served.request("POST", "/api/state", b"{}", {"Content-Type": "application/json"})[0] == 405


def test_stats_failure_keeps_the_events_going() -> None:
    def broken() -> dict[str, Any]:
        raise AssertionError("no active pipeline")

    server = DashboardServer(DashboardConfig(port=0), DashboardSink(), RecordingControls(), broken)
    state = server.state()
    assert state["stats"] is None and state["stats_error"] == "AssertionError: no active pipeline"


def test_metrics_absent_is_404() -> None:
    with DashboardServer(DashboardConfig(port=0), DashboardSink(), RecordingControls(), dict) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        conn.request("GET", "/metrics")
        assert conn.getresponse().status == 404
        conn.close()


def _open_stream(port: int, path: str) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    return sock, head + b"\r\n\r\n" + rest


def _read_until(sock: socket.socket, buffer: bytes, done: Any) -> bytes:
    deadline = time.monotonic() + 10
    while not done(buffer) and time.monotonic() < deadline:
        buffer += sock.recv(65536)
    return buffer


def test_events_stream(served: Served) -> None:
    served.feed.write(synthetic_result(0))
    sock, data = _open_stream(served.server.port, "/events")
    with sock:
        data = _read_until(sock, data, lambda b: b.count(b"\n\n") >= 2)  # retry, then the first event
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"200 OK" in head and b"Content-Type: text/event-stream" in head
    assert body.startswith(b"retry: 2000\n\n")
    event = body.split(b"\n\n")[1].decode().split("\n")
    assert event[0] == "id: 1" and event[1] == "event: stats" and event[2].startswith("data: {")
    payload = json.loads(event[2][len("data: "):])
    assert payload["stats"]["frames"] == 5 and payload["latency"][0][0] == 1


def test_mjpeg_stream_framing_and_pace() -> None:
    with serving(stream_fps=20) as served:
        stop = threading.Event()

        def produce() -> None:
            i = 0
            while not stop.is_set():
                served.feed.write(synthetic_result(i))
                i += 1
                time.sleep(0.005)  # 200 results/s, ten times the stream's cap

        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        try:
            sock, data = _open_stream(served.server.port, "/stream.mjpg?view=result")
            with sock:
                t0 = time.monotonic()
                data = _read_until(sock, data, lambda b: b.count(f"--{BOUNDARY}\r\n".encode()) >= 11)
                elapsed = time.monotonic() - t0
        finally:
            stop.set()
            producer.join()
        head, _, body = data.partition(b"\r\n\r\n")
        assert f"Content-Type: multipart/x-mixed-replace; boundary={BOUNDARY}".encode() in head
        parts = body.split(f"--{BOUNDARY}\r\n".encode())
        assert parts[0] == b""
        for part in parts[1:-1]:
            headers, _, rest = part.partition(b"\r\n\r\n")
            length = int(headers.split(b"Content-Length: ")[1])
            assert rest[length:] == b"\r\n" and len(rest) == length + 2
            image = cv2.imdecode(np.frombuffer(rest[:length], np.uint8), cv2.IMREAD_COLOR)
            assert image is not None and image.shape == (240, 320, 3)
        assert elapsed >= 9 / 20 * 0.8, f"10 frames in {elapsed:.2f} s: faster than stream_fps=20"
        assert served.feed.encodes < served.feed.seq / 3  # newest only: most results never encoded


def test_viewer_limit_and_bad_view() -> None:
    with serving(max_viewers=1) as served:
        served.feed.write(synthetic_result(0))
        assert served.request("GET", "/stream.mjpg?view=depth")[0] == 400
        assert served.request("GET", "/stream.mjpg?fps=0")[0] == 400
        sock, _ = _open_stream(served.server.port, "/stream.mjpg")
        with sock:
            assert served.request("GET", "/stream.mjpg")[0] == 503
        deadline = time.monotonic() + 5
        while served.feed.viewers and time.monotonic() < deadline:
            served.feed.write(synthetic_result(1))  # the server notices the closed socket on its next write
            time.sleep(0.05)
        assert served.feed.viewers == 0


def test_stalled_viewer_never_blocks_the_pipeline() -> None:
    with serving(stream_fps=60, stream_max_width=0) as served:
        big = synthetic_result(0, size=(1080, 1920))
        served.feed.write(big)
        sock = socket.create_connection(("127.0.0.1", served.server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # and never read
        with sock:
            time.sleep(0.3)
            took = []
            for i in range(150):
                result = synthetic_result(i, size=(1080, 1920))
                t0 = time.perf_counter()
                served.feed.write(result)
                took.append(time.perf_counter() - t0)
                time.sleep(0.002)
            # Blocked would mean the socket timeout (30 s); the bound leaves room for a loaded machine.
            assert max(took) < 0.5 and float(np.median(took)) < 1e-3, f"writes took up to {max(took) * 1e3:.1f} ms"
            assert served.feed.viewers == 1  # the stalled viewer is still connected


def test_stop_ends_open_streams() -> None:
    feed = DashboardSink()
    server = DashboardServer(DashboardConfig(port=0), feed, RecordingControls(), dict)
    server.start()
    feed.write(synthetic_result(0))
    sock, _ = _open_stream(server.port, "/stream.mjpg")
    events, _ = _open_stream(server.port, "/events")
    t0 = time.monotonic()
    server.stop()
    assert time.monotonic() - t0 < 5
    with sock, events:
        sock.settimeout(5)
        data = b"x"
        while data:
            data = sock.recv(65536)  # ends (b"") once the server closed the stream
