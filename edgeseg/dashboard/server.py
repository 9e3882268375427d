"""The dashboard's HTTP server: the page, the live stream, live statistics, controls, metrics.

    GET  /              the page (HTML with its script and style inlined: one request, no CDN)
    GET  /stream.mjpg   multipart/x-mixed-replace JPEG stream of the newest frame (?view=input
                        for the raw frames), each viewer at its own pace, at most stream_fps
    GET  /events        Server-Sent Events: one ``stats`` event per 1/events_hz s
    GET  /api/state     the same payload as one event, as JSON
    POST /api/control   JSON {conf_threshold, nms, resolution, source, paused}; 400 + one line
    GET  /metrics       Prometheus text exposition (from the ``metrics`` callable)

Python's ``http.server.ThreadingHTTPServer`` in a daemon thread: one thread per connection,
nothing to install, and a stream or event connection costs one mostly sleeping thread. A viewer
never blocks the pipeline: frames are taken from ``DashboardSink`` (newest only) and encoded in
the viewer's own thread; a stalled viewer's socket times out after SOCKET_TIMEOUT_S.

Access: on a loopback address the dashboard is open to this machine (a token, when configured,
is still required), and the Host header must name loopback, so a web page elsewhere cannot
reach it by DNS rebinding. On any other address a token is mandatory: the server refuses to
start without one. Clients send ``Authorization: Bearer <token>``; GET requests may carry
``?token=`` instead (``<img>`` and ``EventSource`` cannot set headers). Tokens are compared in
constant time; a request without a valid one gets 401 and nothing else.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import socket
import socketserver
import threading
import time
import typing
from base64 import b64encode
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from hashlib import sha256
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final, Optional
from urllib.parse import parse_qs, urlsplit

from edgeseg.config.dashboard import DashboardConfig, is_loopback
from edgeseg.dashboard.controls import Controls, parse_control
from edgeseg.dashboard.feed import VIEWS, DashboardSink, View
from edgeseg.dashboard.system import SystemMonitor, panel_from_telemetry
from edgeseg.errors import EdgesegError
from edgeseg.package_data import package_text
from edgeseg.sources.uri import mask_credentials

log = logging.getLogger("edgeseg.dashboard")

# Aliases are evaluated at import: typing's generic forms, for Python 3.8.
StatsFn = typing.Callable[[], typing.Mapping[str, Any]]
MetricsFn = typing.Callable[[], str]
SwitchesFn = typing.Callable[[], typing.Sequence[typing.Mapping[str, Any]]]
SystemFn = typing.Callable[[], typing.Mapping[str, Any]]

BOUNDARY: Final = "edgesegframe"
MAX_BODY_BYTES: Final = 16 * 1024
SOCKET_TIMEOUT_S: Final = 30.0
"""A viewer whose socket accepts nothing for this long is dropped."""
POLL_S: Final = 0.5
"""How often waiting stream threads look at the stop flag."""
ACCEPT_POLL_S: Final = 0.2
"""How often the accept loop looks at the stop flag (the longest ``stop`` waits for it)."""
SSE_RETRY_MS: Final = 2000
SYSTEM_CACHE_S: Final = 0.5
"""Several viewers share one system reading taken at most this often."""
LATENCY_SAMPLES_PER_EVENT: Final = 120
PROMETHEUS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
DASHBOARD_NICE: Final = 10
"""Nice value of every dashboard thread: below the pipeline's stages (0 and 5), so that on a
saturated CPU the viewers get what the pipeline leaves rather than taking from it."""
LOOPBACK_HOST_NAMES: Final = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def _step_down() -> None:
    """Lower the calling thread's priority to DASHBOARD_NICE (Linux: nice is per thread)."""
    if hasattr(os, "setpriority"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), DASHBOARD_NICE)
        except OSError:  # not permitted or not supported: the dashboard still works
            pass


class DashboardError(EdgesegError):
    """The dashboard cannot start: an address refused, or no token for a non-loopback address."""


# -- access -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Denied:
    """Why a request is refused: the HTTP status and a one-line reason."""

    status: int
    reason: str


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _host_is_loopback(host_header: str) -> bool:
    host = host_header.strip()
    if host.startswith("["):  # [::1]:8080
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":")[0]
    return host.lower() in LOOPBACK_HOST_NAMES or is_loopback(host)


def authorize(
    token: str | None,
    loopback: bool,
    method: str,
    authorization: str | None,
    query_token: str | None,
    host_header: str | None,
) -> Denied | None:
    """None when the request may proceed, otherwise why not.

    Args:
        token: the configured token, or None (allowed only on loopback).
        loopback: the server listens on a loopback address only.
        method: the HTTP method; only GET/HEAD may carry the token in the query.
        authorization: the Authorization header, if any.
        query_token: the ``token`` query parameter, if any.
        host_header: the Host header, if any.
    """
    if not token:  # None, or an empty string that must never match an empty ?token=
        if not loopback:  # the server refuses to start like this; refuse here too, to be sure
            return Denied(HTTPStatus.UNAUTHORIZED, "no token is configured for a non-loopback address")
        if host_header and not _host_is_loopback(host_header):
            return Denied(HTTPStatus.FORBIDDEN, "the Host header must name this machine (localhost)")
        return None
    presented = [p for p in (_bearer(authorization),) if p is not None]
    if query_token is not None and method in ("GET", "HEAD"):
        presented.append(query_token)
    expected = token.encode("utf-8")
    # Compare every presented value, so the time taken does not depend on which one matched.
    matches = [hmac.compare_digest(p.encode("utf-8"), expected) for p in presented]
    if any(matches):
        return None
    return Denied(HTTPStatus.UNAUTHORIZED, "a valid token is required (Authorization: Bearer, or ?token=)")


# -- wire formats ----------------------------------------------------------------------------


def mjpeg_head(boundary: str = BOUNDARY) -> bytes:
    """What opens a multipart stream: the first boundary line."""
    return f"--{boundary}\r\n".encode("ascii")


def mjpeg_part(jpeg: bytes, boundary: str = BOUNDARY) -> bytes:
    """One JPEG part, followed at once by the next boundary so the browser shows it immediately."""
    head = f"Content-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode("ascii")
    return head + jpeg + f"\r\n--{boundary}\r\n".encode("ascii")


def _finite(value: Any) -> Any:
    """JSON-safe copy: NaN and infinities become null (JavaScript's JSON.parse rejects them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def to_json(value: Any) -> str:
    """Compact one-line JSON; values json cannot encode are given as strings."""
    return json.dumps(_finite(value), separators=(",", ":"), default=str)


def sse_event(data: Any, event: str = "stats", event_id: int | None = None) -> bytes:
    """One Server-Sent Event carrying ``data`` as one line of JSON."""
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"event: {event}")
    lines.append(f"data: {to_json(data)}")
    return ("\n".join(lines) + "\n\n").encode("utf-8")


# -- the page ---------------------------------------------------------------------------------


def _csp_hash(text: str) -> str:
    return "'sha256-" + b64encode(sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


@dataclass(frozen=True)
class Page:
    """index.html with app.js and style.css inlined, and the CSP that allows exactly those."""

    html: bytes
    csp: str

    @classmethod
    def load(cls) -> Page:
        html, script, style = (package_text("edgeseg.dashboard", f"static/{name}")
                               for name in ("index.html", "app.js", "style.css"))
        html = html.replace("<!-- STYLE -->", f"<style>{style}</style>", 1)
        html = html.replace("<!-- SCRIPT -->", f"<script>{script}</script>", 1)
        csp = (
            f"default-src 'none'; script-src {_csp_hash(script)}; style-src {_csp_hash(style)}; "
            "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'"
        )
        return cls(html.encode("utf-8"), csp)


# -- the server -------------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: DashboardServer):
        self.app = app
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can hang where DNS is absent.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


class DashboardServer:
    """Serves the dashboard from a daemon thread until ``stop``.

    Args:
        config: address, token and stream settings.
        feed: the sink the pipeline writes to (frames, counts, latency).
        controls: the pipeline's knobs.
        stats: the daemon's stats snapshot (``Daemon.stats``); may raise while the daemon reloads.
        metrics: Prometheus text for /metrics; None answers 404 there.
        switches: the adaptive resolution picker's switch history, newest last; each entry a
            dict such as {"time": epoch s, "from": 640, "to": 480, "reason": "..."}.
        system: the system monitor's readings; default: CPU, memory, temperatures, Jetson GPU
            (``SystemMonitor``). A telemetry snapshot of ``edgeseg.monitor`` (its ``as_dict()``,
            recognised by its ``readings``) is accepted as it is.
        token: overrides the config's token (tests); default ``config.resolve_token()``.
    """

    def __init__(
        self,
        config: DashboardConfig,
        feed: DashboardSink,
        controls: Controls,
        stats: StatsFn,
        metrics: Optional[MetricsFn] = None,
        switches: Optional[SwitchesFn] = None,
        system: Optional[SystemFn] = None,
        token: Optional[str] = None,
    ):
        self.config = config
        self.feed = feed
        self.controls = controls
        self.stats = stats
        self.metrics = metrics
        self.switches = switches
        resolved = token if token is not None else config.resolve_token()
        self.token = resolved.strip() or None if resolved is not None else None
        self.loopback = config.loopback
        self.page = Page.load()
        self._system = system or SystemMonitor().read
        self._system_cache: tuple[float, Mapping[str, Any]] = (-math.inf, {})
        self._lock = threading.Lock()
        self._streams = 0
        self._event_streams = 0
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Bind and serve; ``DashboardError`` when the address is refused or needs a token."""
        host, port = self.config.host, self.config.port
        if not self.loopback and not self.token:
            raise DashboardError(
                f"dashboard.host {host!r} is reachable from other machines: set dashboard.token or "
                "dashboard.token_file, or listen on 127.0.0.1"
            )
        try:
            self._httpd = _HTTPServer((host.strip("[]"), port), self)
        except (OSError, OverflowError) as exc:
            raise DashboardError(f"dashboard: cannot listen on {host}:{port} ({exc})") from None
        self._stopping.clear()
        self._thread = threading.Thread(target=self._serve, args=(self._httpd,), name="edgeseg-dashboard", daemon=True)
        self._thread.start()
        log.info("dashboard on %s%s", self.url, "" if self.token is None else " (token required)")

    @staticmethod
    def _serve(httpd: _HTTPServer) -> None:
        _step_down()
        httpd.serve_forever(poll_interval=ACCEPT_POLL_S)

    def stop(self) -> None:
        """Stop serving; open streams end within POLL_S. Idempotent."""
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def __enter__(self) -> DashboardServer:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def port(self) -> int:
        """The port listened on (the chosen one when the config says 0)."""
        if self._httpd is None:
            return self.config.port
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = self.config.host.strip("[]")
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}/"

    # -- what the handlers use ----------------------------------------------------------------

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if the server is stopping."""
        return self._stopping.wait(seconds)

    @contextmanager
    def slot(self, kind: str) -> Iterator[bool]:
        """A stream slot of ``kind`` ("stream" or "events"): yields False when all are taken."""
        with self._lock:
            taken = self._streams if kind == "stream" else self._event_streams
            granted = taken < self.config.max_viewers
            if granted:
                if kind == "stream":
                    self._streams += 1
                else:
                    self._event_streams += 1
        try:
            yield granted
        finally:
            if granted:
                with self._lock:
                    if kind == "stream":
                        self._streams -= 1
                    else:
                        self._event_streams -= 1

    def system_reading(self) -> Mapping[str, Any]:
        with self._lock:
            taken, reading = self._system_cache
            if time.monotonic() - taken < SYSTEM_CACHE_S:
                return reading
        try:
            reading = dict(self._system())
            if "readings" in reading:  # an edgeseg.monitor telemetry snapshot
                reading = panel_from_telemetry(reading)
        except Exception as exc:  # a monitor failure must not end the event stream
            reading = {"error": str(exc)}
        with self._lock:
            self._system_cache = (time.monotonic(), reading)
        return reading

    def state(self, latency_after: int = 0) -> dict[str, Any]:
        """One statistics payload: what /events sends and /api/state answers."""
        try:
            stats: Mapping[str, Any] | None = self.stats()
            stats_error = None
        except Exception as exc:  # the daemon between two pipelines (reload), or not started
            stats, stats_error = None, f"{type(exc).__name__}: {exc}"
        try:
            controls: Mapping[str, Any] | None = self.controls.state()
        except Exception as exc:
            controls = None
            log.debug("controls.state() failed: %s", exc)
        try:
            switches = [dict(s) for s in self.switches()] if self.switches is not None else []
        except Exception as exc:
            switches = []
            log.debug("switch history failed: %s", exc)
        return {
            "time": round(time.time(), 3),
            "stats": None if stats is None else dict(stats),
            "stats_error": stats_error,
            "controls": None if controls is None else dict(controls),
            "frame": self.feed.frame_info(),
            "counts": self.feed.counts(),
            "latency": [
                [seq, round(e2e, 2), round(infer, 2)]
                for seq, e2e, infer in self.feed.latency_since(latency_after, LATENCY_SAMPLES_PER_EVENT)
            ],
            "switches": switches,
            "system": dict(self.system_reading()),
            "viewers": {"streams": self._streams, "events": self._event_streams},
        }


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "edgeseg-dashboard"
    sys_version = ""
    timeout = SOCKET_TIMEOUT_S

    @property
    def app(self) -> DashboardServer:
        return self.server.app

    def setup(self) -> None:
        _step_down()  # each connection has its own thread
        super().setup()

    # -- plumbing -----------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        # The request line may carry ?token=: never log the query.
        message = (format % args).replace(self.path, urlsplit(self.path).path) if self.path else format % args
        log.debug("%s %s", self.address_string(), message)

    def _common_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")

    def _send(self, status: int, body: bytes, content_type: str, extra: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self._common_headers()
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, value: Any) -> None:
        self._send(status, to_json(value).encode("utf-8"), "application/json; charset=utf-8")

    def _error(self, status: int, message: str, extra: Mapping[str, str] | None = None) -> None:
        self._send(status, to_json({"error": message}).encode("utf-8"), "application/json; charset=utf-8", extra)

    def _query(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query, keep_blank_values=True).items()}

    def _allowed(self) -> bool:
        query = self._query()
        denied = authorize(
            self.app.token, self.app.loopback, self.command,
            self.headers.get("Authorization"), query.get("token"), self.headers.get("Host"),
        )
        if denied is None:
            return True
        extra = {"WWW-Authenticate": 'Bearer realm="edgeseg"'} if denied.status == HTTPStatus.UNAUTHORIZED else None
        self._error(denied.status, denied.reason, extra)
        return False

    def _dispatch(self, routes: Mapping[str, Callable[[], None]]) -> None:
        try:
            if not self._allowed():
                return
            route = routes.get(urlsplit(self.path).path)
            if route is None:
                known = ("/", "/index.html", "/stream.mjpg", "/events", "/api/state", "/api/control", "/metrics")
                if urlsplit(self.path).path in known:
                    self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not allowed here")
                else:
                    self._error(HTTPStatus.NOT_FOUND, "no such page")
                return
            route()
        # socket.timeout, not TimeoutError: they are one class only from Python 3.10 (3.8 is supported).
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True  # the viewer went away or stalled
        except Exception as exc:
            log.exception("dashboard: %s %s failed", self.command, urlsplit(self.path).path)
            self.close_connection = True
            try:
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(exc).__name__}: {exc}")
            except OSError:
                pass

    def do_GET(self) -> None:
        self._dispatch({
            "/": self._page,
            "/index.html": self._page,
            "/stream.mjpg": self._stream,
            "/events": self._events,
            "/api/state": self._state,
            "/metrics": self._metrics,
        })

    def do_HEAD(self) -> None:
        self._dispatch({"/": self._page, "/index.html": self._page, "/api/state": self._state})

    def do_POST(self) -> None:
        self._dispatch({"/api/control": self._control})

    # -- routes -------------------------------------------------------------------------------

    def _page(self) -> None:
        page = self.app.page
        self._send(HTTPStatus.OK, page.html, "text/html; charset=utf-8", {"Content-Security-Policy": page.csp})

    def _state(self) -> None:
        self._json(HTTPStatus.OK, self.app.state())

    def _metrics(self) -> None:
        if self.app.metrics is None:
            self._error(HTTPStatus.NOT_FOUND, "metrics are not enabled")
            return
        self._send(HTTPStatus.OK, self.app.metrics().encode("utf-8"), PROMETHEUS_CONTENT_TYPE)

    def _control(self) -> None:
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "expected Content-Type: application/json")
            return
        length_header = self.headers.get("Content-Length")
        if length_header is None or not length_header.strip().isdigit():
            self._error(HTTPStatus.LENGTH_REQUIRED, "expected a Content-Length header")
            return
        length = int(length_header)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY_BYTES} bytes")
            return
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self._error(HTTPStatus.BAD_REQUEST, f"invalid JSON: {exc}")
            return
        try:
            request = parse_control(body)
        except ValueError as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
            return
        try:
            applied = request.apply(self.app.controls)
        except (ValueError, EdgesegError) as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return
        shown = ", ".join(f"{k}={mask_credentials(repr(getattr(request, k)))}" for k in applied)
        log.info("dashboard control from %s: %s", self.address_string(), shown)
        self._json(HTTPStatus.OK, {"applied": applied, "controls": self.app.controls.state()})

    def _begin_stream(self, content_type: str) -> None:
        self.close_connection = True
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Connection", "close")
        self.send_header("X-Accel-Buffering", "no")  # a reverse proxy must not buffer the stream
        self._common_headers()
        self.end_headers()

    def _stream(self) -> None:
        query = self._query()
        view_name = query.get("view", "result")
        if view_name not in VIEWS:
            self._error(HTTPStatus.BAD_REQUEST, f"view: expected one of {', '.join(VIEWS)}, got {view_name!r}")
            return
        view: View = "input" if view_name == "input" else "result"
        fps = self.app.config.stream_fps
        if "fps" in query:
            try:
                fps = min(fps, float(query["fps"]))
            except ValueError:
                fps = -1.0
            if not fps > 0:
                self._error(HTTPStatus.BAD_REQUEST, f"fps: expected a positive number, got {query['fps']!r}")
                return
        period = 1.0 / fps
        feed = self.app.feed
        with self.app.slot("stream") as granted:
            if not granted:
                self._error(HTTPStatus.SERVICE_UNAVAILABLE, f"at most {self.app.config.max_viewers} live streams")
                return
            self._begin_stream(f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.wfile.write(mjpeg_head())
            self.wfile.flush()
            feed.add_viewer()
            try:
                last = 0
                while not self.app.stopping and not feed.closed:
                    started = time.monotonic()
                    got = feed.next_jpeg(last, view, timeout=POLL_S)
                    if got is None:
                        continue
                    last, jpeg = got
                    self.wfile.write(mjpeg_part(jpeg))
                    self.wfile.flush()
                    rest = period - (time.monotonic() - started)
                    if rest > 0 and self.app.wait(rest):
                        break
            finally:
                feed.remove_viewer()

    def _events(self) -> None:
        period = 1.0 / self.app.config.events_hz
        with self.app.slot("events") as granted:
            if not granted:
                self._error(HTTPStatus.SERVICE_UNAVAILABLE, f"at most {self.app.config.max_viewers} event streams")
                return
            self._begin_stream("text/event-stream; charset=utf-8")
            self.wfile.write(f"retry: {SSE_RETRY_MS}\n\n".encode("ascii"))
            event_id = 0
            latency_after = max(0, self.app.feed.seq - LATENCY_SAMPLES_PER_EVENT)
            while not self.app.stopping:
                payload = self.app.state(latency_after)
                if payload["latency"]:
                    latency_after = payload["latency"][-1][0]
                event_id += 1
                self.wfile.write(sse_event(payload, "stats", event_id))
                self.wfile.flush()
                if self.app.wait(period):
                    break
