"""The event lifecycle: one event per confirmed track, ``new`` -> ``update``... -> ``end`` once.

:class:`EventManager` reads each frame's tracker and zone results (in frame order, in the output
thread) and says what subscribers need to hear, not what changed by a pixel:

* ``new`` when a track is first seen confirmed;
* ``update`` on a meaningful change, all of a frame's reasons in one message: entered or left a
  zone, crossed a line, became stationary or moving, a clearly better best frame (its score beats
  the last published one by ``better_snapshot_delta``, at most every ``snapshot_interval_s``), or
  loitering (the current visit of a zone lasts the zone's threshold for the class, once per visit);
* ``end`` exactly once: the track was removed, its object stayed stationary ``stationary_end_s``
  (a parked car's event does not stay open forever; the parked track starts a new event only when
  it moves again), or the run stopped (:meth:`EventManager.finish`).

Every message carries the whole event document (``edgeseg/schemas/event.v1.json``), so a
subscriber that missed earlier messages still has everything. The per-frame work is a few dict
look-ups per track; documents, mask encodings and snapshots are built only for messages.

Memory per open event is bounded: a sparse path of ``path_points`` points, the last
``max_crossings`` crossings, the zones it visited, and one best frame: the mask crop (copied,
small) and, only when snapshots are on, a reference to that frame's image (frames are never
modified, and objects of one frame share it).
"""

from __future__ import annotations

import logging
import math
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

from edgeseg.analytics.types import Box, Crossing, Event, EventType, TrackUpdate, TrackView, ZoneUpdate
from edgeseg.config.events import ANY_CLASS, EventsConfig
from edgeseg.errors import ConfigError
from edgeseg.events.snapshots import SnapshotSource, SnapshotStore, WrittenSnapshot
from edgeseg.sinks.mask_codec import polygons_from_crop, rle_from_crop
from edgeseg.structures import FrameResult, ImageArray

LOG = logging.getLogger(__name__)

SCHEMA_NAME = "edgeseg/event"
SCHEMA_VERSION = 1
SCHEMA_RESOURCE = "schemas/event.v1.json"

TIME_DECIMALS = 6
SCORE_DECIMALS = 4
BOX_DECIMALS = 1
POINT_DECIMALS = 1
DWELL_DECIMALS = 3

END_REMOVED = "removed"
END_STATIONARY = "stationary_timeout"
END_STOPPED = "stopped"

EventIdFactory = Callable[[str, int, float], str]
"""(camera, track id, start time) -> a unique event id, safe as a file name."""

_NO_ZONES: FrozenSet[str] = frozenset()


def random_event_id(camera: str, track_id: int, start: float) -> str:
    """A uuid4 in hex: unique across runs and cameras, whatever the clock says."""
    return uuid.uuid4().hex


def load_event_schema() -> Dict[str, Any]:
    """The event JSON Schema (draft 2020-12), read from the installed package."""
    import json  # noqa: PLC0415 - only tests and tools read the schema

    from edgeseg.package_data import package_text  # noqa: PLC0415

    schema: Dict[str, Any] = json.loads(package_text("edgeseg", SCHEMA_RESOURCE))
    return schema


@dataclass
class _Visit:
    """One zone's record in an event: the latest visit's times and the dwell of closed visits."""

    entered_at: float
    left_at: Optional[float] = None
    closed_dwell: float = 0.0
    visits: int = 1
    loitering: bool = False


@dataclass
class _Best:
    """The best frame of an event. The mask's encoding is made once, when first published."""

    frame_id: int
    time: float
    box: Box
    score: float
    image_size: Tuple[int, int]
    crop: Optional[npt.NDArray[np.bool_]] = None
    region: Optional[Tuple[int, int, int, int]] = None
    image: Optional[ImageArray] = None
    mask_doc: Optional[Dict[str, Any]] = None
    mask_encoded: bool = False


@dataclass
class _Open:
    """An open event's state (mutable; only the output thread touches it)."""

    event_id: str
    track_id: int
    class_id: int
    class_name: str
    start_time: float
    score_best: float
    score_current: float
    last_seen: float
    stationary: bool
    stationary_since: Optional[float]
    crossings: Deque[Tuple[str, str, float]]
    zones: Dict[str, _Visit] = field(default_factory=dict)
    current: FrozenSet[str] = _NO_ZONES
    path: List[Tuple[float, float, float]] = field(default_factory=list)
    best: Optional[_Best] = None
    published: Optional[_Best] = None
    published_time: float = -math.inf
    snapshot: Optional[Dict[str, Any]] = None


class EventManager:
    """Turns per-frame tracks and zone results into event messages for one camera.

    Args:
        config: the ``events`` section.
        camera: the camera's name, carried by every event.
        class_names: the model's class table (``Instances.class_names``), to check the loiter maps.
        zones_loiter: zone name -> class name (or ``*``) -> loiter threshold in seconds, from the
            zone configs; a zone's own threshold comes before ``config.default_loiter_s``.
        event_ids: how event ids are made (default: uuid4 hex); tests and replays pass their own.

    Raises ``ConfigError`` (one line naming the field) for a loiter threshold of an unknown class,
    and ``SinkError`` when snapshots are on and their directory cannot be written.
    """

    def __init__(
        self,
        config: EventsConfig,
        camera: str,
        class_names: Sequence[str],
        zones_loiter: Optional[Mapping[str, Mapping[str, float]]] = None,
        event_ids: EventIdFactory = random_event_id,
    ):
        self.config = config
        self.camera = camera
        self.class_names = tuple(class_names)
        self._zones_loiter = {zone: dict(by_class) for zone, by_class in (zones_loiter or {}).items()}
        self._check_classes()
        self._event_ids = event_ids
        self._snapshots = SnapshotStore(config.snapshots, camera) if config.snapshots.enabled else None
        self._keep_masks = config.mask != "none" or self._snapshots is not None
        self._loiter_cache: Dict[Tuple[str, str], Optional[float]] = {}
        self._has_loiter = bool(config.default_loiter_s) or any(self._zones_loiter.values())
        self._open: Dict[int, _Open] = {}
        self._parked: set[int] = set()
        self._since: Mapping[Tuple[int, str], float] = {}  # this frame's ZoneUpdate.since
        self._min_path_sq = float(config.min_path_px) ** 2

    # -- checks and thresholds --------------------------------------------------------------

    def _check_classes(self) -> None:
        known = set(self.class_names) | {ANY_CLASS}
        for name in self.config.default_loiter_s:
            if name not in known:
                shown = ", ".join(self.class_names[:10]) + (", ..." if len(self.class_names) > 10 else "")
                raise ConfigError(f"field 'events.default_loiter_s': unknown class {name!r} (the model's: {shown})")
        for zone, by_class in self._zones_loiter.items():
            for name, seconds in by_class.items():
                if name not in known:
                    raise ConfigError(f"zone {zone!r}: loiter threshold for unknown class {name!r}")
                if not 0.0 < float(seconds) < math.inf:
                    raise ConfigError(f"zone {zone!r}: loiter threshold of {name!r} must be positive seconds, "
                                      f"found {seconds}")

    def loiter_threshold(self, zone: str, class_name: str) -> Optional[float]:
        """Seconds of one visit of ``zone`` after which ``class_name`` is loitering, or None."""
        key = (zone, class_name)
        if key not in self._loiter_cache:
            value: Optional[float] = None
            for table in (self._zones_loiter.get(zone, {}), self.config.default_loiter_s):
                value = table.get(class_name, table.get(ANY_CLASS))
                if value is not None:
                    break
            self._loiter_cache[key] = value
        return self._loiter_cache[key]

    @property
    def open_events(self) -> int:
        """Events begun and not yet ended."""
        return len(self._open)

    @property
    def snapshots(self) -> Optional[SnapshotStore]:
        """The snapshot store when snapshots are on (its directory, counts), else None."""
        return self._snapshots

    # -- per frame ---------------------------------------------------------------------------

    def update(self, result: FrameResult, tracks: TrackUpdate, zones: ZoneUpdate) -> Tuple[Event, ...]:
        """The messages of one frame, in track order: ``new``, ``update`` and ``end``."""
        now = float(result.frame.timestamp)
        inside = zones.inside
        self._since = zones.since  # when this frame's enters and leaves really began (inertia)
        crossings: Dict[int, List[Crossing]] = {}
        for crossing in zones.crossings:
            crossings.setdefault(crossing.track_id, []).append(crossing)
        out: List[Event] = []
        for view in tracks.tracks:
            tid = view.track_id
            event = self._open.get(tid)
            if view.state == "removed":
                self._parked.discard(tid)
                if event is not None:
                    self._close_zones(event, now)
                    out.append(self._end(event, now, END_REMOVED))
                continue
            if event is None:
                if view.state != "confirmed":
                    continue
                if tid in self._parked:
                    if view.stationary:
                        continue
                    self._parked.discard(tid)
                event = self._start(view, now, result, inside.get(tid, _NO_ZONES), crossings.get(tid, ()))
                out.append(self._message(event, "new", ("new",), now, self._publish_best(event, now)))
                continue
            reasons = self._advance(event, view, now, result, inside.get(tid, _NO_ZONES), crossings.get(tid, ()))
            if event.stationary and event.stationary_since is not None and (
                now - event.stationary_since >= self.config.stationary_end_s
            ):
                self._close_zones(event, now)
                self._parked.add(tid)
                out.append(self._end(event, now, END_STATIONARY))
                continue
            if reasons:
                snapshot = None
                if "better_snapshot" in reasons:
                    snapshot = self._publish_best(event, now)
                out.append(self._message(event, "update", tuple(reasons), now, snapshot))
        return tuple(out)

    def finish(self, timestamp: float) -> Tuple[Event, ...]:
        """End every open event (the run stops), each exactly once; a second call returns ()."""
        now = float(timestamp)
        out = []
        for event in list(self._open.values()):
            self._close_zones(event, now)
            out.append(self._end(event, now, END_STOPPED))
        self._parked.clear()
        return tuple(out)

    # -- lifecycle steps -----------------------------------------------------------------------

    def _start(
        self, view: TrackView, now: float, result: FrameResult, zones_now: FrozenSet[str],
        crossings: Sequence[Crossing],
    ) -> _Open:
        event = _Open(
            event_id=self._event_ids(self.camera, view.track_id, now),
            track_id=view.track_id,
            class_id=view.class_id,
            class_name=view.class_name,
            start_time=now,
            score_best=float(view.score),
            score_current=float(view.score),
            last_seen=float(view.last_seen),
            stationary=bool(view.stationary),
            stationary_since=now if view.stationary else None,
            crossings=deque(maxlen=self.config.max_crossings),
        )
        for zone in sorted(zones_now):
            event.zones[zone] = _Visit(entered_at=now)
        event.current = frozenset(zones_now)
        for crossing in crossings:
            event.crossings.append((crossing.line, crossing.direction, float(crossing.timestamp)))
        if view.instance is not None:
            x, y = view.centroid
            event.path.append((float(x), float(y), now))
            event.best = self._capture(view, result, now)
        self._open[view.track_id] = event
        return event

    def _advance(
        self, event: _Open, view: TrackView, now: float, result: FrameResult, zones_now: FrozenSet[str],
        crossings: Sequence[Crossing],
    ) -> List[str]:
        """Fold one frame into an open event; the reasons for an update (empty: none)."""
        reasons: List[str] = []
        matched = view.instance is not None
        if matched:
            score = float(view.score)
            event.score_current = score
            event.last_seen = float(view.last_seen)
            if score > event.score_best:
                event.score_best = score
        if bool(view.stationary) != event.stationary:
            event.stationary = bool(view.stationary)
            event.stationary_since = now if event.stationary else None
            reasons.append("stationary" if event.stationary else "moving")
        if zones_now != event.current:
            entered = zones_now - event.current
            left = event.current - zones_now
            for zone in sorted(entered):
                at = self._since.get((event.track_id, zone), now)
                visit = event.zones.get(zone)
                if visit is None:
                    event.zones[zone] = _Visit(entered_at=at)
                else:
                    visit.entered_at, visit.left_at = at, None
                    visit.visits += 1
                    visit.loitering = False
            for zone in left:
                self._leave(event.zones[zone], self._since.get((event.track_id, zone), now))
            event.current = frozenset(zones_now)
            if entered:
                reasons.append("entered_zone")
            if left:
                reasons.append("left_zone")
        if self._has_loiter and event.current:
            for zone in event.current:
                visit = event.zones[zone]
                if visit.loitering:
                    continue
                threshold = self.loiter_threshold(zone, event.class_name)
                if threshold is not None and now - visit.entered_at >= threshold:
                    visit.loitering = True
                    if "loitering" not in reasons:
                        reasons.append("loitering")
        if crossings:
            for crossing in crossings:
                event.crossings.append((crossing.line, crossing.direction, float(crossing.timestamp)))
            reasons.append("crossed_line")
        if matched:
            self._extend_path(event, view.centroid, now)
            if not event.stationary and (event.best is None or view.score > event.best.score):
                event.best = self._capture(view, result, now)
            if self._clearly_better(event, now):
                reasons.append("better_snapshot")
        return reasons

    def _clearly_better(self, event: _Open, now: float) -> bool:
        best, published = event.best, event.published
        if best is None or best is published or event.stationary:
            return False
        if now - event.published_time < self.config.snapshot_interval_s:
            return False
        return published is None or best.score >= published.score + self.config.better_snapshot_delta

    def _extend_path(self, event: _Open, centroid: Tuple[float, float], now: float) -> None:
        """Add the centroid once it is ``min_path_px`` from the last point; over ``path_points``,
        drop the inner point whose neighbours are closest (the path stays spread by distance)."""
        x, y = float(centroid[0]), float(centroid[1])
        path = event.path
        if path:
            lx, ly, _ = path[-1]
            if (x - lx) ** 2 + (y - ly) ** 2 < self._min_path_sq:
                return
        path.append((x, y, now))
        if len(path) > self.config.path_points:
            gaps = [
                (path[i + 1][0] - path[i - 1][0]) ** 2 + (path[i + 1][1] - path[i - 1][1]) ** 2
                for i in range(1, len(path) - 1)
            ]
            del path[1 + gaps.index(min(gaps))]

    def _capture(self, view: TrackView, result: FrameResult, now: float) -> _Best:
        """The track's detection in this frame as a best-frame record (mask crop copied)."""
        instances = result.instances
        crop = region = image = None
        index = view.instance
        if self._keep_masks and index is not None and instances.has_masks and 0 <= index < len(instances):
            crop = np.array(instances.masks[index], dtype=np.bool_, copy=True)
            x0, y0, x1, y1 = (int(v) for v in instances.mask_boxes[index])
            region = (x0, y0, x1, y1)
        if self._snapshots is not None:
            image = result.frame.image
        return _Best(
            frame_id=int(result.frame.frame_id),
            time=now,
            box=(float(view.box[0]), float(view.box[1]), float(view.box[2]), float(view.box[3])),
            score=float(view.score),
            image_size=instances.image_size,
            crop=crop,
            region=region,
            image=image,
        )

    def _publish_best(self, event: _Open, now: float) -> Optional[bytes]:
        """Mark the best frame published; with snapshots on, write it and return its JPEG."""
        best = event.best
        if best is None or best is event.published:
            return None
        event.published, event.published_time = best, now
        if self._snapshots is None or best.image is None:
            return None
        source = SnapshotSource(
            image=best.image, box=best.box, score=best.score, class_id=event.class_id,
            class_names=self.class_names, crop=best.crop, region=best.region,
        )
        try:
            written: WrittenSnapshot = self._snapshots.write(event.event_id, source)
        except (ValueError, OSError) as exc:
            LOG.warning("event %s: no snapshot (%s)", event.event_id, exc)
            return None
        if written.file is not None:
            event.snapshot = {
                "file": written.file,
                "crop": written.crop_file,
                "frame_id": best.frame_id,
                "time": round(best.time, TIME_DECIMALS),
                "score": round(best.score, SCORE_DECIMALS),
            }
        # an older best frame's image is no longer needed once its JPEG exists
        best.image = None
        return written.jpeg

    @staticmethod
    def _leave(visit: _Visit, now: float) -> None:
        visit.closed_dwell += max(now - visit.entered_at, 0.0)
        visit.left_at = now

    def _close_zones(self, event: _Open, now: float) -> None:
        for zone in event.current:  # a removed track left at its last sighting (``ZoneUpdate.since``)
            self._leave(event.zones[zone], self._since.get((event.track_id, zone), now))
        event.current = _NO_ZONES

    def _end(self, event: _Open, now: float, why: str) -> Event:
        del self._open[event.track_id]
        snapshot = self._publish_best(event, now)
        return self._message(event, "end", ("end", why), now, snapshot, end_reason=why)

    # -- documents --------------------------------------------------------------------------

    def _message(
        self, event: _Open, kind: EventType, reasons: Tuple[str, ...], now: float, snapshot: Optional[bytes],
        end_reason: Optional[str] = None,
    ) -> Event:
        return Event(
            type=kind,
            event_id=event.event_id,
            track_id=event.track_id,
            reasons=reasons,
            document=self._document(event, kind, reasons, now, end_reason),
            snapshot=snapshot,
        )

    def _mask_doc(self, best: _Best) -> Optional[Dict[str, Any]]:
        if not best.mask_encoded:
            best.mask_encoded = True
            if self.config.mask != "none" and best.crop is not None and best.region is not None:
                if self.config.mask == "rle":
                    rle = rle_from_crop(best.crop, best.region, best.image_size)
                    best.mask_doc = {"format": "rle", "size": rle["size"], "counts": rle["counts"]}
                else:
                    outlines = polygons_from_crop(best.crop, best.region)
                    polygons = [[round(v, POINT_DECIMALS) for v in p] for p in outlines]
                    best.mask_doc = {"format": "polygon", "polygons": polygons}
        if best.image is None:
            best.crop = None  # encoded, and no snapshot left to draw from it
        return best.mask_doc

    def _document(
        self, event: _Open, kind: EventType, reasons: Tuple[str, ...], now: float, end_reason: Optional[str]
    ) -> Dict[str, Any]:
        zones = {}
        for name, visit in event.zones.items():
            dwell = visit.closed_dwell
            if name in event.current:
                dwell += max(now - visit.entered_at, 0.0)
            zones[name] = {
                "entered_at": round(visit.entered_at, TIME_DECIMALS),
                "left_at": None if visit.left_at is None else round(visit.left_at, TIME_DECIMALS),
                "dwell_s": round(dwell, DWELL_DECIMALS),
                "visits": visit.visits,
                "loitering": visit.loitering,
            }
        best = event.best
        best_doc = None
        if best is not None:
            best_doc = {
                "frame_id": best.frame_id,
                "time": round(best.time, TIME_DECIMALS),
                "box": [round(v, BOX_DECIMALS) for v in best.box],
                "score": round(best.score, SCORE_DECIMALS),
                "mask": self._mask_doc(best),
            }
        return {
            "schema": SCHEMA_NAME,
            "version": SCHEMA_VERSION,
            "type": kind,
            "event_id": event.event_id,
            "track_id": event.track_id,
            "camera": self.camera,
            "class": event.class_name,
            "class_id": event.class_id,
            "time": round(now, TIME_DECIMALS),
            "score": {
                "best": round(_unit(event.score_best), SCORE_DECIMALS),
                "current": round(_unit(event.score_current), SCORE_DECIMALS),
            },
            "start_time": round(event.start_time, TIME_DECIMALS),
            "end_time": round(now, TIME_DECIMALS) if kind == "end" else None,
            "end_reason": end_reason,
            "last_seen": round(event.last_seen, TIME_DECIMALS),
            "stationary": event.stationary,
            "zones": zones,
            "current_zones": sorted(event.current),
            "crossings": [
                {"line": line, "direction": direction, "time": round(t, TIME_DECIMALS)}
                for line, direction, t in event.crossings
            ],
            "best": best_doc,
            "snapshot": dict(event.snapshot) if event.snapshot is not None else None,
            "path": [
                [round(x, POINT_DECIMALS), round(y, POINT_DECIMALS), round(t, TIME_DECIMALS)] for x, y, t in event.path
            ],
            "reasons": list(reasons),
        }


def _unit(score: float) -> float:
    """A score clipped to 0..1 (a NaN from a broken model becomes 0)."""
    return min(max(score, 0.0), 1.0) if score == score else 0.0
