"""The dashboard's HTTP server: the page, the live stream, live statistics, controls, metrics.

    GET  /              the page (HTML with its script and style inlined: one request, no CDN)
    GET  /stream.mjpg   multipart/x-mixed-replace JPEG stream of a camera's newest frame
                        (?camera=, ?view=input for the raw frames, ?fps= from STREAM_FPS_MIN up,
                        capped at stream_fps), each viewer at its own pace
    GET  /frame.jpg     a camera's newest frame as one JPEG (?camera=, ?view=): the page's grid
                        of cameras polls it, holding no stream slot; 503 before its first frame
    GET  /events        Server-Sent Events: one ``stats`` event per 1/events_hz s (?camera= for
                        whose frame, counts, zones and latency), and, when tracking is on, an
                        ``events`` event with the event messages of every camera that came since
                        the last one (the kept ones first, on connecting)
    GET  /api/state     the same payload as one ``stats`` event, as JSON (?camera=)
    GET  /api/cameras   {"cameras": [...], "default": name}: each camera's name and statistics
    GET  /api/events    the newest event messages, newest first (?limit=, 1..EVENTS_HISTORY;
                        ?camera= for that camera's only)
    GET  /api/zones     a camera's zone occupancy and line crossing counts (?camera=; null
                        before any analytics)
    POST /api/control   JSON {conf_threshold, nms, resolution, source, paused}; 400 + one line
    GET  /metrics       Prometheus text exposition (from the ``metrics`` callable)

Cameras: ``?camera=NAME`` picks one; without it a route means the default camera (the first
configured, else the first seen). A name that is neither a camera of the pipeline
(``cameras``) nor one the feed has seen gets 404 and one line naming it. With one camera
nothing changes: every route answers as it did before cameras existed.

Python's ``http.server.ThreadingHTTPServer`` in a daemon thread: one thread per connection,
nothing to install, and a stream or event connection costs one mostly sleeping thread. A viewer
never blocks the pipeline: frames are taken from ``DashboardSink`` (newest only) and encoded in
the viewer's own thread.

A stream holds one of ``max_viewers`` slots, and gives it back as soon as its client is gone:
every POLL_S the thread looks whether the client closed its end (a readable socket with nothing
to read), something is written at least every STREAM_KEEPALIVE_S (the newest frame again when
none is newer, at any fps), and a write that the client does not take within
STREAM_SEND_TIMEOUT_S ends the stream (a small send buffer makes that come soon).

Every input is bounded and refused with 400 and one line when outside: each route's query
parameters (``QUERY_PARAMS``; unknown, repeated, non-numeric, nan, inf, negative or huge values),
the request line (malformed lines and HTTP versions other than 1.0/1.1 get a clean 400, never a
traceback), and the JSON body (MAX_BODY_BYTES, JSON_MAX_DEPTH, JSON_MAX_NUMBER_CHARS, no
duplicate keys, no NaN). Nothing logged ever holds a token: query strings are left out of every
logged request line, whatever the log level.

Access: on a loopback address the dashboard is open to this machine (a token, when configured,
is still required), and the Host header must name loopback, so a web page elsewhere cannot
reach it by DNS rebinding. On any other address a token is mandatory: the server refuses to
start without one. Clients send ``Authorization: Bearer <token>``; GET requests may carry
``?token=`` instead (``<img>`` and ``EventSource`` cannot set headers). Tokens are compared in
constant time; a request without a valid one gets 401 and nothing else. Without a token, a
request a browser marks as coming from another site (``Sec-Fetch-Site: cross-site`` or
``same-site``, as for an ``<img>`` on a web page elsewhere) is refused with 403. The server hands
out no cookie or session: the token is checked on every request, so a token replaced at a reload
(``reconfigure``) is refused from the next request on, and a stream opened with it ends.
"""

from __future__ import annotations

import errno as errno_codes
import hmac
import json
import logging
import math
import os
import re
import select
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
from urllib.parse import parse_qsl, urlsplit

from edgeseg.config.dashboard import STREAM_FPS_MAX, STREAM_FPS_MIN, TOKEN_MAX_LENGTH, DashboardConfig, is_loopback
from edgeseg.dashboard.controls import Controls, parse_control
from edgeseg.dashboard.feed import EVENTS_HISTORY, VIEWS, DashboardSink, View
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
CamerasFn = typing.Callable[[], typing.Sequence[Any]]

BOUNDARY: Final = "edgesegframe"
MAX_BODY_BYTES: Final = 16 * 1024
SOCKET_TIMEOUT_S: Final = 30.0
"""A request (line, headers, body) that does not arrive within this long is dropped."""
STREAM_SEND_TIMEOUT_S: Final = 10.0
"""A stream or event viewer that takes nothing of a write for this long is dropped."""
STREAM_SEND_BUFFER: Final = 64 * 1024
"""Send buffer of a stream's socket: small, so that a client that stops reading blocks a write
(and meets STREAM_SEND_TIMEOUT_S) after a few frames, not after megabytes."""
STREAM_KEEPALIVE_S: Final = 5.0
"""Longest time a stream goes without a write (the newest frame is sent again): a client that
went away is noticed by the write at the latest, whatever the fps."""
POLL_S: Final = 0.5
"""How often waiting stream threads look at the stop flag and whether the client is gone."""
JSON_MAX_DEPTH: Final = 8
"""Deepest nesting of arrays/objects accepted in a body (a control body is one flat object)."""
JSON_MAX_NUMBER_CHARS: Final = 32
"""Longest number accepted in a body: Python 3.8 parses any length of digits (slowly), 3.11+
refuses over 4300 with an error of its own; both become one 400 here."""
QUERY_MAX_CHARS: Final = 2048
QUERY_MAX_FIELDS: Final = 8
QUERY_NUMBER = re.compile(r"[0-9]{1,6}(?:\.[0-9]{1,6})?")
"""A decimal number as a query value: no sign, exponent, nan or inf, at most 6+6 digits."""
CROSS_SITE: Final = frozenset({"cross-site", "same-site"})
MALFORMED_REQUEST_LINE: Final = "malformed request line: expected 'METHOD /path HTTP/1.1' (or HTTP/1.0)"
ACCEPT_POLL_S: Final = 0.2
"""How often the accept loop looks at the stop flag (the longest ``stop`` waits for it)."""
SSE_RETRY_MS: Final = 2000
SYSTEM_CACHE_S: Final = 0.5
"""Several viewers share one system reading taken at most this often."""
LATENCY_SAMPLES_PER_EVENT: Final = 120
EVENTS_DEFAULT_LIMIT: Final = 50
"""Event messages /api/events answers without ``?limit=``."""
PROMETHEUS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
DASHBOARD_NICE: Final = 10
"""Nice value of every dashboard thread: below the pipeline's stages (0 and 5), so that on a
saturated CPU the viewers get what the pipeline leaves rather than taking from it."""
LOOPBACK_HOST_NAMES: Final = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
CAMERA_NAME_MAX_CHARS: Final = 64
"""Longest camera name (edgeseg.sources.camera_name: letters, digits, _ and -, 1..64)."""
CAMERA_FIELDS: Final = ("name", "uri", "live", "online", "captured", "processed", "dropped", "skipped",
                        "restarts", "fps")
"""What /api/cameras gives of each camera: the fields of ``edgeseg.pipeline.cameras.CameraStats``
(null for a camera the pipeline does not report), and ``frames``: results the dashboard got."""


def _step_down() -> None:
    """Lower the calling thread's priority to DASHBOARD_NICE (Linux: nice is per thread)."""
    if hasattr(os, "setpriority"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), DASHBOARD_NICE)
        except OSError:  # not permitted or not supported: the dashboard still works
            pass


class DashboardError(EdgesegError):
    """The dashboard cannot start: an address refused, or no token for a non-loopback address.

    ``errno``: the socket error's number when binding failed (``errno.EADDRINUSE``: the port is
    taken), else None.
    """

    def __init__(self, message: str, errno: Optional[int] = None):
        super().__init__(message)
        self.errno = errno


@dataclass(frozen=True)
class Access:
    """Who may use a running server: replaced as one object, so a request reads a consistent pair.

    ``generation`` counts token changes: a stream admitted under an older generation ends.
    """

    token: Optional[str]
    loopback: bool
    generation: int = 0


def _clean_token(token: Optional[str]) -> Optional[str]:
    """A blank token counts as none (it must never match an empty ``?token=``)."""
    return token.strip() or None if token is not None else None


def _listen_error(host: str, port: int, exc: BaseException) -> DashboardError:
    """Why binding ``host:port`` failed, in one line naming the field to change."""
    number = getattr(exc, "errno", None)
    field = "dashboard.port" if number == errno_codes.EADDRINUSE else "dashboard.host"
    reason = getattr(exc, "strerror", None) or str(exc)
    taken = "; another process listens there" if number == errno_codes.EADDRINUSE else ""
    return DashboardError(f"field '{field}': cannot listen on {host}:{port} ({reason}{taken})", number)


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


# -- query parameters ------------------------------------------------------------------------


class QueryError(ValueError):
    """A query string or parameter outside its bounds; the message is the one-line 400 reason."""


@dataclass(frozen=True)
class QueryParam:
    """One query parameter a route accepts: a choice, a bounded decimal number or bounded text."""

    name: str
    choices: typing.Tuple[str, ...] = ()
    low: Optional[float] = None
    high: Optional[float] = None
    max_chars: int = 0

    def parse(self, raw: str) -> Any:
        if self.choices:
            if raw not in self.choices:
                raise QueryError(f"{self.name}: expected one of {', '.join(self.choices)}, got {_shown(raw)}")
            return raw
        if self.low is not None and self.high is not None:
            expected = f"a decimal number from {self.low:g} to {self.high:g}"
            if QUERY_NUMBER.fullmatch(raw) is None:
                raise QueryError(f"{self.name}: expected {expected}, got {_shown(raw)}")
            value = float(raw)
            if not self.low <= value <= self.high:
                raise QueryError(f"{self.name}: expected {expected}, got {_shown(raw)}")
            return value
        if len(raw) > self.max_chars:
            raise QueryError(f"{self.name}: expected at most {self.max_chars} characters, got {len(raw)}")
        return raw


TOKEN_PARAM: Final = QueryParam("token", max_chars=TOKEN_MAX_LENGTH)
CAMERA_PARAM: Final = QueryParam("camera", max_chars=CAMERA_NAME_MAX_CHARS)
VIEW_PARAM: Final = QueryParam("view", choices=VIEWS)
QUERY_PARAMS: Final[typing.Mapping[str, typing.Tuple[QueryParam, ...]]] = {
    "/": (TOKEN_PARAM,),
    "/index.html": (TOKEN_PARAM,),
    "/stream.mjpg": (TOKEN_PARAM, CAMERA_PARAM, VIEW_PARAM,
                     QueryParam("fps", low=STREAM_FPS_MIN, high=STREAM_FPS_MAX)),
    "/frame.jpg": (TOKEN_PARAM, CAMERA_PARAM, VIEW_PARAM),
    "/events": (TOKEN_PARAM, CAMERA_PARAM),
    "/api/state": (TOKEN_PARAM, CAMERA_PARAM),
    "/api/cameras": (TOKEN_PARAM,),
    "/api/events": (TOKEN_PARAM, CAMERA_PARAM, QueryParam("limit", low=1, high=EVENTS_HISTORY)),
    "/api/zones": (TOKEN_PARAM, CAMERA_PARAM),
    "/api/control": (TOKEN_PARAM,),  # refused by authorize() on POST, but bounded all the same
    "/metrics": (TOKEN_PARAM,),
}
"""Every query parameter of every route; anything else is refused."""


def _shown(value: str, limit: int = 40) -> str:
    """``value`` as it may appear in a one-line reason: quoted, escaped, cut to ``limit``."""
    text = ascii(value[:limit])
    return text + ("..." if len(value) > limit else "")


def split_query(query: str) -> typing.Dict[str, str]:
    """The query's parameters by name; ``QueryError`` when too long, too many, or one repeated."""
    if len(query) > QUERY_MAX_CHARS:
        raise QueryError(f"query: expected at most {QUERY_MAX_CHARS} characters, got {len(query)}")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, max_num_fields=QUERY_MAX_FIELDS)
    except ValueError:
        raise QueryError(f"query: expected at most {QUERY_MAX_FIELDS} parameters") from None
    params: typing.Dict[str, str] = {}
    for name, value in pairs:
        if name in params:
            raise QueryError(f"{_shown(name)}: given more than once")
        params[name] = value
    return params


def parse_query(params: typing.Mapping[str, str], accepted: typing.Sequence[QueryParam]) -> typing.Dict[str, Any]:
    """Each given parameter parsed by its spec; ``QueryError`` for an unknown or an out-of-bounds one."""
    specs = {p.name: p for p in accepted}
    parsed: typing.Dict[str, Any] = {}
    for name, raw in params.items():
        spec = specs.get(name)
        if spec is None:
            known = ", ".join(specs) or "none"
            raise QueryError(f"unknown query parameter {_shown(name)}; expected {known}")
        parsed[name] = spec.parse(raw)
    return parsed


# -- request bodies --------------------------------------------------------------------------


def _json_depth(text: str) -> int:
    """Deepest nesting of ``[``/``{`` in JSON text, strings skipped (checked before parsing, so
    a deep body never reaches the parser's recursion)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _json_int(text: str) -> int:
    if len(text) > JSON_MAX_NUMBER_CHARS:
        raise ValueError(f"a number of {len(text)} characters; expected at most {JSON_MAX_NUMBER_CHARS}")
    return int(text)


def _json_float(text: str) -> float:
    if len(text) > JSON_MAX_NUMBER_CHARS:
        raise ValueError(f"a number of {len(text)} characters; expected at most {JSON_MAX_NUMBER_CHARS}")
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range of a number")
    return value


def _json_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def _json_object(pairs: typing.List[typing.Tuple[str, Any]]) -> typing.Dict[str, Any]:
    obj: typing.Dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"key {_shown(key)} given more than once")
        obj[key] = value
    return obj


def parse_json_body(raw: bytes) -> Any:
    """A request body as JSON within bounds; ``ValueError`` with a one-line reason otherwise.

    Bounded before the parser sees it: size (by the caller, MAX_BODY_BYTES), nesting depth,
    length of each number (Python's own int-from-text limit exists only from 3.11, and 3.8 has
    none), duplicate keys, NaN and Infinity (not JSON, and not comparable).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"invalid JSON: not UTF-8 (byte {exc.start})") from None
    depth = _json_depth(text)
    if depth > JSON_MAX_DEPTH:
        raise ValueError(f"invalid JSON: nested {depth} deep; expected at most {JSON_MAX_DEPTH}")
    try:
        return json.loads(text, parse_int=_json_int, parse_float=_json_float, parse_constant=_json_constant,
                          object_pairs_hook=_json_object)
    except (ValueError, RecursionError) as exc:  # json.JSONDecodeError is a ValueError
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"invalid JSON: {first}") from None


# -- what may be logged ----------------------------------------------------------------------

_QUERY_IN_TEXT = re.compile(r"\?[^\s\"']*")
_TOKEN_IN_TEXT = re.compile(r"(token(?:=|%3d))[^&\s\"']*", re.IGNORECASE)


def mask_secrets(text: str, token: Optional[str] = None) -> str:
    """``text`` (a request line, a path, an error) without anything that may be a token.

    Query strings are dropped whole (a token parameter may be spelled ``%74oken=``), ``token=``
    values are masked wherever they stand, and the configured token itself is replaced.
    """
    text = _QUERY_IN_TEXT.sub("?<query>", text)
    text = _TOKEN_IN_TEXT.sub(r"\1***", text)
    if token:
        text = text.replace(token, "***")
    return text


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
    """index.html with app.js and style.css inlined, and the CSP that allows exactly those (and
    images from this server, or made by the page's script from frames it fetched: ``blob:``)."""

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
            "img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'"
        )
        return cls(html.encode("utf-8"), csp)


# -- cameras ----------------------------------------------------------------------------------


class UnknownCamera(LookupError):
    """A query names a camera that is not one; the message is the one-line 404 reason."""

    def __init__(self, name: str, known: typing.Sequence[str]):
        shown = ", ".join(known[:16]) + (", ..." if len(known) > 16 else "") if known else "none yet"
        super().__init__(f"camera: no camera named {_shown(name, CAMERA_NAME_MAX_CHARS)} (cameras: {shown})")
        self.name = name


def camera_fields(stats: Any) -> typing.Dict[str, Any]:
    """The ``CAMERA_FIELDS`` of one camera's statistics: a ``CameraStats`` (or any object with
    those attributes), or a mapping with those keys; absent ones are null."""
    if isinstance(stats, Mapping):
        entry = {k: stats.get(k) for k in CAMERA_FIELDS}
    else:
        entry = {k: getattr(stats, k, None) for k in CAMERA_FIELDS}
    entry["name"] = str(entry["name"] if entry["name"] is not None else "")
    if isinstance(entry["fps"], (int, float)) and not isinstance(entry["fps"], bool):
        entry["fps"] = round(float(entry["fps"]), 2)
    if isinstance(entry["uri"], str):
        entry["uri"] = mask_credentials(entry["uri"])  # masked by the pipeline already; to be sure
    return entry


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
        cameras: the running pipeline's cameras (``Pipeline.cameras()``: ``CameraStats``, or
            mappings with the same keys), in config order; may raise while the daemon reloads.
            None: the cameras are those the feed knows (configured through its ``set_overlay``,
            or seen), without statistics.

    Starting is two steps where a reload needs them apart (``edgeseg.service.outputs``):
    ``bind`` opens the listening socket (what can fail: the port is taken, the address is
    refused), ``start`` serves it. ``reconfigure`` applies a changed section to a running server
    on the same address: a new token is in force for the next request, and streams opened with
    the old one end.
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
        cameras: Optional[CamerasFn] = None,
    ):
        self.config = config
        self.feed = feed
        self.controls = controls
        self.stats = stats
        self.metrics = metrics
        self.switches = switches
        self.cameras = cameras
        resolved = token if token is not None else config.resolve_token()
        self._access = Access(_clean_token(resolved), config.loopback)
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

    def bind(self) -> None:
        """Open the listening socket; ``DashboardError`` (one line) when the address is refused,
        the port taken, or the address needs a token. Connections wait in the socket's backlog
        until ``start``. Idempotent."""
        if self._httpd is not None:
            return
        host, port = self.config.host, self.config.port
        if not self.loopback and not self.token:
            raise DashboardError(
                f"dashboard.host {host!r} is reachable from other machines: set dashboard.token or "
                "dashboard.token_file, or listen on 127.0.0.1"
            )
        try:
            self._httpd = _HTTPServer((host.strip("[]"), port), self)
        except (OSError, OverflowError) as exc:
            raise _listen_error(host, port, exc) from None

    def start(self) -> None:
        """Bind (unless ``bind`` did) and serve; ``DashboardError`` as for ``bind``."""
        self.bind()
        if self._thread is not None:
            return
        assert self._httpd is not None
        self._stopping.clear()
        self._thread = threading.Thread(target=self._serve, args=(self._httpd,), name="edgeseg-dashboard", daemon=True)
        self._thread.start()
        log.info("dashboard on %s%s", self.url, "" if self.token is None else " (token required)")

    @staticmethod
    def _serve(httpd: _HTTPServer) -> None:
        _step_down()
        httpd.serve_forever(poll_interval=ACCEPT_POLL_S)

    def stop(self) -> None:
        """Stop serving (or release a socket only bound); open streams end within POLL_S. Idempotent."""
        self._stopping.set()
        if self._httpd is not None:
            if self._thread is not None:  # shutdown() waits for serve_forever, which a bound-only one never ran
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
    def access(self) -> Access:
        """The token and loopback flag in force (one object: read it once per request)."""
        return self._access

    @property
    def token(self) -> Optional[str]:
        return self._access.token

    @property
    def loopback(self) -> bool:
        return self._access.loopback

    @property
    def serving(self) -> bool:
        return self._thread is not None

    def reconfigure(self, config: DashboardConfig, token: Optional[str]) -> bool:
        """Apply ``config`` (same host and port) and ``token`` to this server as it runs.

        Stream pace, event rate and viewer limit hold from the next request; a changed token
        holds from the next request too (the old one gets 401), and a stream admitted with the
        old one ends within POLL_S: revoking a token revokes what it opened. True when the
        token changed. ``DashboardError`` when the address needs a token and none is given;
        ``ValueError`` for another host or port (that needs a new server and socket).
        """
        if (config.host, config.port) != (self.config.host, self.config.port):
            raise ValueError(f"dashboard: {config.host}:{config.port} is not the address served "
                             f"({self.config.host}:{self.config.port}); a new address needs a new server")
        token = _clean_token(token)
        loopback = config.loopback
        if not loopback and not token:
            raise DashboardError(f"dashboard.host {config.host!r} is reachable from other machines: set "
                                 "dashboard.token or dashboard.token_file")
        with self._lock:
            old = self._access
            changed = token != old.token
            self._access = Access(token, loopback, old.generation + (1 if changed else 0))
            self.config = config
        return changed

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

    def camera_list(self) -> typing.List[typing.Dict[str, Any]]:
        """Every camera, pipeline's first (config order), then any other the feed knows: the
        ``CAMERA_FIELDS`` of each (null where the pipeline reports nothing) and ``frames``."""
        reported: typing.List[typing.Dict[str, Any]] = []
        if self.cameras is not None:
            try:
                reported = [camera_fields(c) for c in self.cameras()]
            except Exception as exc:  # the daemon between two pipelines (reload), or not started
                log.debug("cameras() failed: %s", exc)
        frames = self.feed.camera_frames()
        known = {c["name"] for c in reported}
        reported += [{**dict.fromkeys(CAMERA_FIELDS), "name": name}
                     for name in self.feed.cameras() if name not in known]
        for entry in reported:
            entry["frames"] = frames.get(entry["name"], 0)
        return reported

    def camera_names(self) -> typing.List[str]:
        return [c["name"] for c in self.camera_list()]

    def resolve_camera(self, name: Optional[str]) -> Optional[str]:
        """The camera a query means: ``name`` when it is one (``UnknownCamera`` when not), the
        default camera for None or "", or None while no camera is known yet."""
        names = self.camera_names()
        if not name:
            return names[0] if names else None
        if name not in names:
            raise UnknownCamera(name, names)
        return name

    def state(self, latency_after: int = 0, camera: Optional[str] = None) -> dict[str, Any]:
        """One statistics payload: what /events sends and /api/state answers. ``frame``,
        ``counts``, ``zones`` and ``latency`` are ``camera``'s (a resolved name; None: the feed's
        default camera); ``cameras`` lists every camera (``camera_list``)."""
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
            "camera": camera if camera is not None else self.feed.default_camera(),
            "cameras": self.camera_list(),
            "frame": self.feed.frame_info(camera),
            "counts": self.feed.counts(camera),
            "zones": self.feed.zone_counts(camera),
            "latency": [
                [seq, round(e2e, 2), round(infer, 2)]
                for seq, e2e, infer in self.feed.latency_since(latency_after, LATENCY_SAMPLES_PER_EVENT, camera)
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
    _generation = 0  # the token generation this connection's request was admitted under

    @property
    def app(self) -> DashboardServer:
        return self.server.app

    def setup(self) -> None:
        _step_down()  # each connection has its own thread
        super().setup()

    # -- plumbing -----------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        # Called for every request line and error, also before the request line is parsed (no
        # self.path then): the line may carry ?token=, so it is masked whatever the level.
        try:
            message = format % args
        except (TypeError, ValueError):
            message = format
        log.debug("%s %s", self.address_string(), mask_secrets(message, self.app.token))

    def handle_one_request(self) -> None:
        # A client gone while its request line is refused, or between keep-alive requests, is
        # no error of the server's: no traceback on stderr (socketserver's handle_error).
        try:
            super().handle_one_request()
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if self.request_version == "HTTP/0.9":  # "GET /": an answer without a status line
            self.send_error(HTTPStatus.BAD_REQUEST, f"{MALFORMED_REQUEST_LINE} (HTTP/0.9 is not supported)")
            return False
        return True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Every error of the request line and headers as one JSON line; the line never echoed."""
        if getattr(self, "command", None) is None or code == HTTPStatus.HTTP_VERSION_NOT_SUPPORTED:
            # A malformed request line, or HTTP/2+ (which speaks no request line like this one).
            code = HTTPStatus.BAD_REQUEST
            message = MALFORMED_REQUEST_LINE
        reason = (message or HTTPStatus(code).phrase).splitlines()[0] if (message or "").strip() else \
            HTTPStatus(code).phrase
        reason = mask_secrets(reason, self.app.token)
        self.log_error("code %d, message %s", code, reason)
        if not self.request_version.startswith("HTTP/1."):
            self.request_version = "HTTP/1.0"  # so that the answer has a status line and headers
        self.close_connection = True
        body = to_json({"error": reason}).encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self._common_headers()
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

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

    def _allowed(self, params: Mapping[str, str]) -> bool:
        access = self.app.access  # once: a token replaced meanwhile applies from the next request
        if not access.token and (self.headers.get("Sec-Fetch-Site") or "").strip().lower() in CROSS_SITE:
            self._error(HTTPStatus.FORBIDDEN, "requests from other sites need a token (dashboard.token)")
            return False
        denied = authorize(
            access.token, access.loopback, self.command,
            self.headers.get("Authorization"), params.get("token"), self.headers.get("Host"),
        )
        if denied is None:
            self._generation = access.generation
            return True
        extra = {"WWW-Authenticate": 'Bearer realm="edgeseg"'} if denied.status == HTTPStatus.UNAUTHORIZED else None
        self._error(denied.status, denied.reason, extra)
        return False

    def _dispatch(self, routes: Mapping[str, Callable[[Mapping[str, Any]], None]]) -> None:
        path = urlsplit(self.path).path
        try:
            try:
                params = split_query(urlsplit(self.path).query)
            except QueryError as exc:
                self._error(HTTPStatus.BAD_REQUEST, str(exc))
                return
            if not self._allowed(params):
                return
            route = routes.get(path)
            if route is None:
                if path in QUERY_PARAMS:
                    self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not allowed here")
                else:
                    self._error(HTTPStatus.NOT_FOUND, "no such page")
                return
            try:
                query = parse_query(params, QUERY_PARAMS[path])
            except QueryError as exc:
                self._error(HTTPStatus.BAD_REQUEST, str(exc))
                return
            if "camera" in query:  # resolved once: every route gets a camera's name, or None
                try:
                    query["camera"] = self.app.resolve_camera(query["camera"])
                except UnknownCamera as exc:
                    self._error(HTTPStatus.NOT_FOUND, str(exc))
                    return
            route(query)
        # socket.timeout, not TimeoutError: they are one class only from Python 3.10 (3.8 is supported).
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True  # the viewer went away or stalled
        except Exception as exc:
            log.exception("dashboard: %s %s failed", self.command, mask_secrets(path, self.app.token))
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
            "/frame.jpg": self._frame,
            "/events": self._events,
            "/api/state": self._state,
            "/api/cameras": self._cameras,
            "/api/events": self._recent_events,
            "/api/zones": self._zones,
            "/metrics": self._metrics,
        })

    def do_HEAD(self) -> None:
        self._dispatch({"/": self._page, "/index.html": self._page, "/api/state": self._state,
                        "/api/cameras": self._cameras, "/api/events": self._recent_events,
                        "/api/zones": self._zones})

    def do_POST(self) -> None:
        self._dispatch({"/api/control": self._control})

    # -- routes -------------------------------------------------------------------------------

    def _page(self, _query: Mapping[str, Any]) -> None:
        page = self.app.page
        self._send(HTTPStatus.OK, page.html, "text/html; charset=utf-8", {"Content-Security-Policy": page.csp})

    def _camera(self, query: Mapping[str, Any]) -> Optional[str]:
        """The camera a route serves: the one asked for (resolved by ``_dispatch``), else the
        default camera now (None while none is known: the feed's default, when one comes)."""
        if "camera" in query:
            return typing.cast(Optional[str], query["camera"])
        return self.app.resolve_camera(None)

    def _state(self, query: Mapping[str, Any]) -> None:
        self._json(HTTPStatus.OK, self.app.state(camera=self._camera(query)))

    def _cameras(self, _query: Mapping[str, Any]) -> None:
        cameras = self.app.camera_list()
        self._json(HTTPStatus.OK, {"cameras": cameras, "default": cameras[0]["name"] if cameras else None})

    def _recent_events(self, query: Mapping[str, Any]) -> None:
        limit = int(query.get("limit", EVENTS_DEFAULT_LIMIT))
        camera = query.get("camera")  # the events of every camera unless one is asked for
        self._json(HTTPStatus.OK, {"events": self.app.feed.events_since(0, limit, camera)})

    def _zones(self, query: Mapping[str, Any]) -> None:
        self._json(HTTPStatus.OK, self.app.feed.zone_counts(self._camera(query)))

    def _frame(self, query: Mapping[str, Any]) -> None:
        view: View = "input" if query.get("view") == "input" else "result"
        camera = self._camera(query)
        got = self.app.feed.latest_jpeg(view, camera)
        if got is None:
            shown = "" if camera is None else f" of camera {_shown(camera, CAMERA_NAME_MAX_CHARS)}"
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, f"no frame yet{shown}", {"Retry-After": "1"})
            return
        self._send(HTTPStatus.OK, got[1], "image/jpeg")

    def _metrics(self, _query: Mapping[str, Any]) -> None:
        if self.app.metrics is None:
            self._error(HTTPStatus.NOT_FOUND, "metrics are not enabled")
            return
        self._send(HTTPStatus.OK, self.app.metrics().encode("utf-8"), PROMETHEUS_CONTENT_TYPE)

    def _read_body(self) -> bytes | None:
        """The request body within MAX_BODY_BYTES, or None after answering why not."""
        if self.headers.get("Transfer-Encoding") is not None:
            self.close_connection = True
            self._error(HTTPStatus.BAD_REQUEST, "Transfer-Encoding is not supported; send a Content-Length")
            return None
        length_header = (self.headers.get("Content-Length") or "").strip()
        if re.fullmatch(r"[0-9]{1,12}", length_header) is None:  # ASCII digits: "²".isdigit() is True
            self.close_connection = True
            self._error(HTTPStatus.LENGTH_REQUIRED, "expected a Content-Length header (a number of bytes)")
            return None
        length = int(length_header)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY_BYTES} bytes")
            return None
        return self.rfile.read(length)

    def _control(self, _query: Mapping[str, Any]) -> None:
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "expected Content-Type: application/json")
            return
        raw = self._read_body()
        if raw is None:
            return
        try:
            request = parse_control(parse_json_body(raw))
        except ValueError as exc:
            self._error(HTTPStatus.BAD_REQUEST, _one_line(exc))
            return
        try:
            applied = request.apply(self.app.controls)
        except (ValueError, EdgesegError) as exc:
            self._error(HTTPStatus.BAD_REQUEST, _one_line(exc))
            return
        shown = ", ".join(f"{k}={mask_credentials(ascii(getattr(request, k)))}" for k in applied)
        log.info("dashboard control from %s: %s", self.address_string(), shown)
        self._json(HTTPStatus.OK, {"applied": applied, "controls": self.app.controls.state()})

    def _begin_stream(self, content_type: str) -> None:
        self.close_connection = True
        self.connection.settimeout(STREAM_SEND_TIMEOUT_S)
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SEND_BUFFER)
        except OSError:  # the kernel's default then; the send timeout still holds
            pass
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Connection", "close")
        self.send_header("X-Accel-Buffering", "no")  # a reverse proxy must not buffer the stream
        self._common_headers()
        self.end_headers()

    def _client_gone(self) -> bool:
        """True when the client closed its end: the socket reads as ended (or failed).

        A stream's client sends nothing after its request, so a readable socket means it closed
        (or sent something, which is left where it is). Polled, never blocking.
        """
        sock = self.connection
        try:
            if hasattr(select, "poll"):
                poller = select.poll()
                poller.register(sock, select.POLLIN | select.POLLPRI)
                if not poller.poll(0):
                    return False
            elif not select.select([sock], [], [], 0)[0]:
                return False
            return sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):  # reset, or closed under us
            return True

    def _revoked(self) -> bool:
        """True once the token this request was admitted with has been replaced."""
        return self.app.access.generation != self._generation

    def _linger(self, seconds: float) -> bool:
        """Wait ``seconds`` in POLL_S steps; True when the stream must end (stopping, client
        gone, token replaced)."""
        deadline = time.monotonic() + seconds
        while True:
            if self._client_gone() or self._revoked():
                return True
            rest = deadline - time.monotonic()
            if rest <= 0:
                return False
            if self.app.wait(min(rest, POLL_S)):
                return True

    def _stream(self, query: Mapping[str, Any]) -> None:
        view: View = "input" if query.get("view") == "input" else "result"
        camera = self._camera(query)
        fps = min(self.app.config.stream_fps, float(query.get("fps", STREAM_FPS_MAX)))
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
                jpeg: bytes | None = None
                sent = time.monotonic()
                while not self.app.stopping and not feed.closed:
                    if self._client_gone() or self._revoked():
                        break
                    started = time.monotonic()
                    got = feed.next_jpeg(last, view, timeout=POLL_S, camera=camera)
                    if got is None:
                        if jpeg is not None and time.monotonic() - sent >= STREAM_KEEPALIVE_S:
                            self.wfile.write(mjpeg_part(jpeg))  # keepalive: the newest frame again
                            self.wfile.flush()
                            sent = time.monotonic()
                        continue
                    first = jpeg is None
                    last, jpeg = got
                    # The first frame twice: a browser shows a part once the next one begins,
                    # and a quiet camera (a paused pipeline, an ended file) may send none for
                    # STREAM_KEEPALIVE_S; so a viewer sees the camera at once, not seconds later.
                    self.wfile.write(mjpeg_part(jpeg) * (2 if first else 1))
                    self.wfile.flush()
                    sent = time.monotonic()
                    if self._linger(period - (sent - started)):
                        break
            finally:
                feed.remove_viewer()

    def _events(self, query: Mapping[str, Any]) -> None:
        period = 1.0 / self.app.config.events_hz
        asked = query.get("camera")  # else the default camera at each event: it may come later
        with self.app.slot("events") as granted:
            if not granted:
                self._error(HTTPStatus.SERVICE_UNAVAILABLE, f"at most {self.app.config.max_viewers} event streams")
                return
            self._begin_stream("text/event-stream; charset=utf-8")
            self.wfile.write(f"retry: {SSE_RETRY_MS}\n\n".encode("ascii"))
            event_id = 0
            feed = self.app.feed
            latency_after = max(0, feed.seq - LATENCY_SAMPLES_PER_EVENT)
            events_after = 0  # the kept event messages first, then each new one once
            while not self.app.stopping and not self._revoked():
                payload = self.app.state(latency_after, asked if asked is not None else self.app.resolve_camera(None))
                if payload["latency"]:
                    latency_after = payload["latency"][-1][0]
                event_id += 1
                self.wfile.write(sse_event(payload, "stats", event_id))
                fresh = feed.events_since(events_after)
                if fresh:
                    events_after = fresh[0]["seq"]
                    event_id += 1
                    self.wfile.write(sse_event({"events": fresh}, "events", event_id))
                self.wfile.flush()
                if self._linger(period):
                    break


def _one_line(exc: BaseException) -> str:
    """An exception as a one-line 400 reason, credentials masked."""
    text = str(exc).strip()
    return mask_credentials(text.splitlines()[0]) if text else type(exc).__name__
