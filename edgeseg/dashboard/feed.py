"""The dashboard's sink: the newest frame result, encoded for viewers only when there are any.

``write`` runs in the pipeline's output thread, so it does the least possible: it keeps a
reference to the newest ``FrameResult``, adds its class ids to the running totals and records
its latency (a few microseconds). Drawing (``annotate``), scaling and JPEG encoding happen in the
HTTP thread of a viewer that asks for a frame, at that viewer's pace: with no viewer connected no
frame is ever drawn or encoded, and a slow viewer simply skips frames. Two viewers asking for the
same frame share one encoding.

Everything about frames is kept per camera (``FrameResult.camera``): the newest result and its
encodings, the class totals, the latency samples, the zone occupancy and the line counts, so that
a viewer of one camera sees only that camera. Results are numbered across all cameras (``seq``),
so a number says which of two results is newer whatever their cameras. A query without a camera
means the default one: the first configured (``set_overlay(cameras=...)``), else the first seen;
with one camera everything reads as it did before cameras existed.

When tracking is on (``FrameResult.analytics``), ``write`` also keeps the latest event messages
(of every camera, in one bounded ring) and counts line crossings (a few appends per frame); the
zones, lines, track ids and trails are drawn by ``Overlay`` in the viewer's thread, like the
instances. The zones and lines to draw come from the config through ``set_overlay``: one set for
every camera, or one per camera (``CameraSpec.zones``/``lines``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Deque, Dict, Final, List, Literal, Optional, Tuple, Union

import cv2
import numpy as np
import numpy.typing as npt

from edgeseg.analytics.types import Event
from edgeseg.config.dashboard import DashboardConfig
from edgeseg.dashboard.overlay import TRAIL_POINTS, Overlay, camera_overlays
from edgeseg.sinks.annotate import PALETTE_HEX, annotate
from edgeseg.sinks.base import Sink
from edgeseg.structures import FrameResult, ImageArray

View = Literal["result", "input"]
VIEWS: Final[tuple[View, ...]] = ("result", "input")
"""What a stream shows: the annotated result, or the captured frame as it came in."""
LATENCY_HISTORY: Final = 1024
"""Per-frame latency samples kept for the chart (a few seconds at high frame rates)."""
DEFAULT_JPEG_QUALITY: Final = 75
DEFAULT_MAX_WIDTH: Final = 960
EVENTS_HISTORY: Final = 200
"""Event messages kept for the page's events list (/api/events, the SSE ``events`` type)."""
HEAVY_KEYS: Final = frozenset({"mask", "snapshot", "crop", "path"})
"""Keys left out of the dashboard's copy of an event document, at any depth: masks, images and
paths are for the event sinks; the page lists times, classes, zones and crossings."""
LIGHT_DEPTH: Final = 6
"""Deepest nesting of an event document copied for the dashboard; deeper values are dropped."""

log = logging.getLogger("edgeseg.dashboard")


class _CameraFeed:
    """What the feed keeps of one camera; guarded by the feed's lock."""

    def __init__(self, name: str):
        self.name = name
        self.latest: Optional[FrameResult] = None
        self.seq = 0  # the feed-wide number of ``latest``
        self.frames = 0  # results of this camera so far
        self.class_names: Tuple[str, ...] = ()
        self.totals: npt.NDArray[np.int64] = np.zeros(0, np.int64)
        # (seq, end-to-end ms from capture to this sink, inference ms)
        self.latency: Deque[Tuple[int, float, float]] = deque(maxlen=LATENCY_HISTORY)
        self.line_totals: Dict[str, List[int]] = {}  # line name -> [in, out] since start
        self.occupancy: Optional[Mapping[str, Mapping[str, int]]] = None  # the newest frame's, if tracked


class DashboardSink(Sink):
    """Keeps the newest frame result of each camera for the dashboard; encodes it lazily for viewers.

    Args:
        jpeg_quality: quality of the encoded frames, 10..100.
        max_width: frames wider than this are scaled down before encoding; 0 keeps full size.
        overlay: the zones and lines drawn when a frame has analytics (``set_overlay``); default
            none (track ids and trails are still drawn).
        events_history: event messages kept for the events list, newest last.

    Every viewer-side method takes ``camera``: a camera's name, or None for the default camera
    (``default_camera``). A camera nothing was written for reads as no frame yet.
    """

    def __init__(
        self,
        jpeg_quality: int = DEFAULT_JPEG_QUALITY,
        max_width: int = DEFAULT_MAX_WIDTH,
        overlay: Optional[Overlay] = None,
        events_history: int = EVENTS_HISTORY,
    ):
        if events_history < 1:
            raise ValueError(f"events_history must be >= 1, got {events_history}")
        if not 10 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 10..100, got {jpeg_quality}")
        if max_width < 0:
            raise ValueError(f"max_width must be >= 0, got {max_width}")
        self.jpeg_quality = jpeg_quality
        self.max_width = max_width
        self._cond = threading.Condition(threading.Lock())
        self._cameras: Dict[str, _CameraFeed] = {}  # in the order first seen
        self._configured: Tuple[str, ...] = ()
        self._seq = 0
        self._closed = False
        self._encode_lock = threading.Lock()
        self._encoded: Dict[Tuple[str, View], Tuple[int, bytes]] = {}
        self._viewers = 0
        #: Frames drawn and encoded so far (the cost a viewer adds; zero while nobody watches).
        self.encodes = 0
        self._overlay = overlay or Overlay()  # for every camera without one of its own
        self._overlays: Dict[str, Overlay] = {}
        self._overlay_failed = False
        # (number, frame timestamp, camera, event) of the newest event messages; numbered from 1.
        self._events: Deque[Tuple[int, float, str, Event]] = deque(maxlen=events_history)
        self._event_seq = 0

    @classmethod
    def from_config(cls, config: DashboardConfig) -> DashboardSink:
        """The sink with the stream settings of the ``dashboard`` config section."""
        return cls(jpeg_quality=config.jpeg_quality, max_width=config.stream_max_width)

    def retune(self, jpeg_quality: int, max_width: int) -> None:
        """New stream settings (a reload), from the next frame a viewer gets; the frames, counts
        and latency history so far are kept."""
        if not 10 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 10..100, got {jpeg_quality}")
        if max_width < 0:
            raise ValueError(f"max_width must be >= 0, got {max_width}")
        with self._encode_lock:
            if (jpeg_quality, max_width) != (self.jpeg_quality, self.max_width):
                self.jpeg_quality, self.max_width = jpeg_quality, max_width
                self._encoded.clear()  # encoded with the old settings

    def set_overlay(
        self,
        zones: Iterable[Any] = (),
        lines: Iterable[Any] = (),
        trail_points: int = TRAIL_POINTS,
        cameras: Union[Mapping[str, Any], Iterable[Any], None] = None,
    ) -> None:
        """The zones and lines to draw over frames with analytics, from the next frame a viewer gets.

        Each zone or line is a config object with ``name``, ``points`` and ``coordinates``
        ("pixel" or "normalized": ``ZoneConfig``, ``LineConfig``), a mapping with those keys, or a
        tuple ``(name, points)`` (pixels) or ``(name, points, coordinates)``; normalised points are
        scaled to each frame's size.

        ``cameras``: the configured cameras and the zones and lines of each, in config order: the
        ``CameraSpec`` list (``Config.camera_specs()``), or a mapping name -> spec, mapping with
        ``zones``/``lines`` or a ``(zones, lines)`` pair. Their names become the feed's configured
        cameras (the first is the default one), and what was kept of a camera no longer listed is
        forgotten (a camera removed at a reload). ``zones``/``lines`` then apply to any camera not
        listed. Without ``cameras`` every camera draws ``zones``/``lines`` (one camera, as before).

        ``ValueError`` naming ``zones[i]``/``lines[i]`` (and the camera) for a shape that cannot be
        drawn; nothing is changed then. Line crossing counts so far are kept.
        """
        overlay = Overlay(zones, lines, trail_points)
        per_camera = camera_overlays(cameras, trail_points) if cameras is not None else {}
        with self._encode_lock:
            self._overlay = overlay
            self._overlays = per_camera
            self._overlay_failed = False
            self._encoded.clear()
        if cameras is not None:
            with self._cond:
                self._configured = tuple(per_camera)
                for name in [n for n in self._cameras if n not in per_camera]:
                    del self._cameras[name]
                self._cond.notify_all()

    @property
    def overlay(self) -> Overlay:
        """The overlay of the default camera."""
        return self.overlay_for(self.default_camera())

    def overlay_for(self, camera: Optional[str]) -> Overlay:
        """The zones and lines drawn on ``camera``'s frames."""
        return self._overlays.get(camera, self._overlay) if camera is not None else self._overlay

    # -- cameras ------------------------------------------------------------------------------

    def cameras(self) -> List[str]:
        """Every camera's name: the configured ones in config order, then any other seen, in the
        order first seen."""
        with self._cond:
            return self._names()

    def _names(self) -> List[str]:
        configured = set(self._configured)
        return [*self._configured, *(n for n in self._cameras if n not in configured)]

    def default_camera(self) -> Optional[str]:
        """The camera a query without one means: the first configured, else the first seen;
        None before either."""
        with self._cond:
            names = self._names()
        return names[0] if names else None

    def camera_frames(self) -> Dict[str, int]:
        """Results written so far per camera seen."""
        with self._cond:
            return {name: cam.frames for name, cam in self._cameras.items()}

    def _camera(self, camera: Optional[str]) -> Optional[_CameraFeed]:
        """``camera``'s record (the default camera's for None); None while nothing was written for
        it. Call with the lock held."""
        if camera is None:
            names = self._names()
            if not names:
                return None
            camera = names[0]
        return self._cameras.get(camera)

    # -- the pipeline side ------------------------------------------------------------------------

    def write(self, result: FrameResult) -> None:
        age_ms = (time.time() - result.frame.timestamp) * 1e3
        infer_ms = float(result.latency_ms.get("infer", 0.0))
        instances = result.instances
        name = result.camera
        with self._cond:
            cam = self._cameras.get(name)
            if cam is None:
                cam = self._cameras[name] = _CameraFeed(name)
            if instances.class_names != cam.class_names:
                cam.class_names = instances.class_names
                cam.totals = np.zeros(len(cam.class_names), np.int64)
            if len(instances):
                cam.totals += np.bincount(instances.class_ids, minlength=len(cam.totals))
            analytics = result.analytics
            cam.occupancy = None if analytics is None else analytics.zones.occupancy
            if analytics is not None:
                for crossing in analytics.zones.crossings:
                    totals = cam.line_totals.setdefault(crossing.line, [0, 0])
                    totals[0 if crossing.direction == "in" else 1] += 1
                for event in analytics.events:
                    self._event_seq += 1
                    self._events.append((self._event_seq, result.frame.timestamp, name, event))
            self._seq += 1
            cam.latest = result
            cam.seq = self._seq
            cam.frames += 1
            cam.latency.append((self._seq, age_ms, infer_ms))
            self._cond.notify_all()

    def close(self) -> None:
        """Ends every viewer's stream; idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- the viewer side --------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def seq(self) -> int:
        """How many results have been written, of every camera (the number of the newest one)."""
        return self._seq

    @property
    def viewers(self) -> int:
        return self._viewers

    def add_viewer(self) -> None:
        with self._cond:
            self._viewers += 1

    def remove_viewer(self) -> None:
        with self._cond:
            self._viewers = max(0, self._viewers - 1)

    def latest(self, camera: Optional[str] = None) -> Optional[Tuple[int, FrameResult]]:
        """``camera``'s newest result and its number, or None before its first."""
        with self._cond:
            cam = self._camera(camera)
            return None if cam is None or cam.latest is None else (cam.seq, cam.latest)

    def wait_newer(
        self, after_seq: int, timeout: float, camera: Optional[str] = None
    ) -> Optional[Tuple[int, FrameResult]]:
        """``camera``'s newest result once its number exceeds ``after_seq``; None on timeout or close."""

        def newer() -> Optional[_CameraFeed]:
            cam = self._camera(camera)
            return cam if cam is not None and cam.seq > after_seq and cam.latest is not None else None

        with self._cond:
            self._cond.wait_for(lambda: newer() is not None or self._closed, timeout)
            cam = newer()
            return None if cam is None or cam.latest is None else (cam.seq, cam.latest)

    def next_jpeg(
        self, after_seq: int, view: View = "result", timeout: float = 1.0, camera: Optional[str] = None
    ) -> Optional[Tuple[int, bytes]]:
        """``camera``'s newest frame as JPEG once newer than ``after_seq``: (its number, the bytes).

        None on timeout or once closed. Called from a viewer's thread, never the pipeline's.
        """
        newest = self.wait_newer(after_seq, timeout, camera)
        if newest is None:
            return None
        seq, result = newest
        key = (result.camera, view)
        with self._encode_lock:
            cached = self._encoded.get(key)
            if cached is not None and cached[0] >= seq:
                return cached
            jpeg = self.encode(result, view)
            self._encoded[key] = (seq, jpeg)
            self.encodes += 1
            return seq, jpeg

    def latest_jpeg(self, view: View = "result", camera: Optional[str] = None) -> Optional[Tuple[int, bytes]]:
        """``camera``'s newest frame as JPEG, without waiting; None before its first."""
        return self.next_jpeg(0, view, 0.0, camera)

    def render(self, result: FrameResult, view: View = "result") -> ImageArray:
        """``result`` as the stream shows it: the instances drawn (``annotate``) and, when the frame
        has analytics, the track ids, zones, lines and trails over them (``Overlay``; the zones
        and lines of the result's camera), scaled to ``max_width``; for "input", the captured
        frame, scaled."""
        analytics = result.analytics if view == "result" else None
        overlay = self.overlay_for(result.camera)
        image: npt.NDArray[Any] = result.frame.image
        if view == "result":
            image = annotate(image, result.instances)
            if analytics is not None:
                self._guarded(result, lambda: overlay.draw_ids(image, result.instances, analytics))
        width = image.shape[1]
        if self.max_width and width > self.max_width:
            height = max(1, round(image.shape[0] * self.max_width / width))
            image = cv2.resize(image, (self.max_width, height), interpolation=cv2.INTER_AREA)
        if analytics is not None:
            if image is result.frame.image:  # never draw on the captured frame itself
                image = image.copy()
            canvas = image
            counts = self.line_counts(result.camera)
            self._guarded(result, lambda: overlay.draw(canvas, result.frame.size, analytics, counts))
        return image

    def _guarded(self, result: FrameResult, draw: Callable[[], None]) -> None:
        """Run ``draw``; odd analytics must not end a stream: the instances are still shown, and
        the failure is logged once per overlay."""
        try:
            draw()
        except Exception:
            if not self._overlay_failed:
                self._overlay_failed = True
                log.exception("dashboard: drawing the analytics of frame %d failed", result.frame.frame_id)

    def encode(self, result: FrameResult, view: View = "result") -> bytes:
        """``result`` drawn (or not, for "input"), scaled to ``max_width`` and JPEG-encoded."""
        image = self.render(result, view)
        ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:  # pragma: no cover - OpenCV fails only on an empty or invalid image
            raise ValueError(f"JPEG encoding failed for frame {result.frame.frame_id}")
        return buffer.tobytes()

    def latency_since(
        self, after_seq: int, limit: int = 120, camera: Optional[str] = None
    ) -> List[Tuple[int, float, float]]:
        """Up to ``limit`` newest (seq, end-to-end ms, inference ms) samples of ``camera`` after
        ``after_seq``."""
        with self._cond:
            cam = self._camera(camera)
            samples = [] if cam is None else [s for s in cam.latency if s[0] > after_seq]
        return samples[-limit:]

    def counts(self, camera: Optional[str] = None) -> Dict[str, Any]:
        """Instances per class of ``camera`` in its newest frame and in every frame so far, most
        frequent first.

        ``{"frames": n, "classes": [{"id", "name", "color", "frame", "total"}, ...]}``, with the
        class's colour as drawn on the stream (``#RRGGBB``); ``frames`` counts that camera's.
        """
        with self._cond:
            cam = self._camera(camera)
            if cam is None:
                return {"frames": 0, "classes": []}
            latest = cam.latest
            totals = cam.totals.copy()
            names = cam.class_names
            frames = cam.frames
        in_frame: Counter[int] = Counter()
        if latest is not None:
            in_frame.update(int(c) for c in latest.instances.class_ids)
        ids = sorted(set(np.flatnonzero(totals).tolist()) | set(in_frame), key=lambda i: (-int(totals[i]), i))
        classes = [
            {"id": i, "name": names[i], "color": PALETTE_HEX[i % len(PALETTE_HEX)],
             "frame": in_frame.get(i, 0), "total": int(totals[i])}
            for i in ids
        ]
        return {"frames": frames, "classes": classes}

    def frame_info(self, camera: Optional[str] = None) -> Optional[Dict[str, Any]]:
        """What ``camera``'s newest frame is: camera, id, name, source, sizes, instance count,
        stage latencies."""
        newest = self.latest(camera)
        if newest is None:
            return None
        seq, latest = newest
        frame = latest.frame
        return {
            "seq": seq,
            "camera": latest.camera,
            "frame_id": int(frame.frame_id),
            "name": frame.name,
            "source": frame.source,
            "timestamp": round(float(frame.timestamp), 3),
            "image_size": list(frame.size),
            "resolution": [int(v) for v in latest.resolution],
            "model": latest.model,
            "instances": len(latest.instances),
            "latency_ms": {str(k): round(float(v), 2) for k, v in latest.latency_ms.items()},
        }

    # -- analytics ----------------------------------------------------------------------------

    @property
    def event_seq(self) -> int:
        """How many event messages have been written (the number of the newest one)."""
        return self._event_seq

    def events_since(
        self, after: int = 0, limit: int = EVENTS_HISTORY, camera: Optional[str] = None
    ) -> List[Dict[str, Any]]:
        """Up to ``limit`` of the kept event messages numbered above ``after``, newest first, each
        as ``event_entry`` gives it; those of every camera, or of ``camera`` when given."""
        with self._cond:
            kept = [e for e in self._events if e[0] > after and (camera is None or e[2] == camera)]
        return [event_entry(n, t, e, c) for n, t, c, e in reversed(kept[-limit:])] if limit > 0 else []

    def line_counts(self, camera: Optional[str] = None) -> Dict[str, Tuple[int, int]]:
        """Line name -> (in, out) crossings of ``camera``'s lines since the start."""
        with self._cond:
            cam = self._camera(camera)
            return {} if cam is None else {name: (v[0], v[1]) for name, v in cam.line_totals.items()}

    def zone_counts(self, camera: Optional[str] = None) -> Optional[Dict[str, Any]]:
        """``camera``'s zones' occupancy in its newest frame and its lines' crossing counts so far;
        None while that frame has no analytics (tracking off).

        ``{"zones": [{"name", "color", "counts": {class: n}, "total"}], "lines": [{"name",
        "color", "in", "out"}]}``: configured zones and lines first, in config order, with their
        colour as drawn (``#RRGGBB``, null for one that is not configured), then any other seen.
        """
        with self._cond:
            cam = self._camera(camera)
            if cam is None or cam.occupancy is None:
                return None
            occupancy = cam.occupancy
            name = cam.name
        overlay = self.overlay_for(name)
        zone_names = [z.name for z in overlay.zones]
        zone_names += sorted(str(n) for n in occupancy if n not in set(zone_names))
        zones = []
        for zone_name in zone_names:
            index = next((i for i, z in enumerate(overlay.zones) if z.name == zone_name), None)
            counts = {str(c): int(n) for c, n in (occupancy.get(zone_name) or {}).items()}
            zones.append({"name": zone_name, "color": None if index is None else overlay.color("zone", index),
                          "counts": counts, "total": sum(counts.values())})
        totals = self.line_counts(name)
        line_names = [ln.name for ln in overlay.lines]
        line_names += sorted(n for n in totals if n not in set(line_names))
        lines = []
        for line_name in line_names:
            index = next((i for i, ln in enumerate(overlay.lines) if ln.name == line_name), None)
            went_in, went_out = totals.get(line_name, (0, 0))
            lines.append({"name": line_name, "color": None if index is None else overlay.color("line", index),
                          "in": went_in, "out": went_out})
        return {"zones": zones, "lines": lines}


def _light(value: Any, depth: int = 0) -> Any:
    """A JSON-able copy of an event document without ``HEAVY_KEYS`` (at any depth)."""
    if depth > LIGHT_DEPTH:
        return None
    if isinstance(value, Mapping):
        return {str(k): _light(v, depth + 1) for k, v in value.items() if str(k) not in HEAVY_KEYS}
    if isinstance(value, (list, tuple)):
        return [_light(v, depth + 1) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def event_entry(number: int, timestamp: float, event: Event, camera: str = "") -> Dict[str, Any]:
    """One event message as the dashboard lists it.

    ``{"seq", "time", "camera", "type", "event_id", "track_id", "reasons", "document"}``: ``seq``
    numbers the messages the feed received, ``time`` is the timestamp of the frame it came with,
    ``camera`` the camera of that frame (else the document's), and ``document`` is
    ``Event.document`` without masks, snapshots and paths (``HEAVY_KEYS``).
    """
    return {
        "seq": number,
        "time": round(float(timestamp), 3),
        "camera": camera or str(event.document.get("camera") or ""),
        "type": event.type,
        "event_id": event.event_id,
        "track_id": int(event.track_id),
        "reasons": [str(r) for r in event.reasons],
        "document": _light(event.document),
    }
