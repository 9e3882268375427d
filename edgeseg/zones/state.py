"""Zone membership with inertia, occupancy and line crossings, frame by frame.

``ZoneTracker.update`` takes a frame's instances and the tracker's ``TrackUpdate`` and returns
a ``ZoneUpdate``. The rules, chosen so that a published count or event does not flicker:

- Only tracks the tracker reports count (confirmed and lost; tentative ones are never reported).
  A track is *observed* in a frame when it was matched to an instance of that frame.
- Inertia: a track enters a zone after ``enter_frames`` consecutive observed frames inside it and
  leaves after ``leave_frames`` consecutive observed frames outside; one contrary frame in a
  streak starts it again, so flicker at the threshold does not toggle membership. A lost
  (unobserved) frame neither advances nor breaks a streak: the track keeps its state and still
  counts in the occupancy until it is removed.
- A removed track (or one the tracker stopped reporting) leaves every zone it was in, in that
  frame.
- Lines: each track has a side per line, known once its centroid is more than the line's
  ``dead_band_px`` from the (infinite) line; centroids inside the band are ignored. A crossing
  is a change of side where the move from the last point on the old side to the first point on
  the new side passes through the line's segment (not beyond its ends). Jitter on the line
  therefore never counts, and a track crosses once per actual passage. Only observed centroids
  (the matched mask's centroid) are used, never the tracker's prediction for a lost track; a
  track seen again on the other side after an occlusion crosses in the frame it is seen again.
  The first side is set when the track is first reported (confirmed), so a passage made while
  it was still tentative is not counted.

State is kept in arrays with one row per track (reused after removal) and one column per zone or
line, so that a frame costs a few numpy operations per zone and per line, whatever the number of
tracks; Python only loops over the tracks that enter, leave or change side.

Times are the frames' timestamps. ``transition_times`` gives, for each enter and leave of the
latest frame, when it really began (the first frame of the streak that led to it, or the removed
track's last sighting), which is earlier than the frame that reports it by the inertia.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Literal, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

from edgeseg.analytics.types import Crossing, TrackUpdate, TrackView, ZoneUpdate
from edgeseg.config.zones import LineConfig, ZoneConfig, check_classes
from edgeseg.structures import Instances
from edgeseg.zones.geometry import LineGeometry, Observations, ZoneRaster

log = logging.getLogger(__name__)

#: Frame sizes whose rasters are kept; a camera changes size rarely.
_SIZES_KEPT = 4
#: Track rows allocated at first; the table doubles when full.
_INITIAL_ROWS = 64
_NONE: FrozenSet[str] = frozenset()


@dataclass(frozen=True, eq=False)
class _FrameGeometry:
    zones: Tuple[ZoneRaster, ...]
    lines: Tuple[LineGeometry, ...]
    #: (3, lines): rows nx, ny, c of each line, so that ``xy @ normals[:2] + normals[2]`` gives the
    #: signed distances of points to every line at once
    normals: npt.NDArray[np.float64]


class _Table:
    """Per-track state, one row per track: zone membership with its streak, side of each line.

    A fresh row is outside every zone with no streak and on no side of any line.
    """

    def __init__(self, zones: int, lines: int) -> None:
        rows = _INITIAL_ROWS
        self.rows: Dict[int, int] = {}  # track id -> row
        self.free: List[int] = list(range(rows - 1, -1, -1))
        self.inside = np.zeros((rows, zones), np.bool_)
        #: consecutive observed frames contrary to ``inside``, and the timestamp of the first
        self.streak = np.zeros((rows, zones), np.int32)
        self.start = np.zeros((rows, zones), np.float64)
        #: -1 left, +1 right, 0 not known yet; with the last point off the line and its distance
        self.side = np.zeros((rows, lines), np.int8)
        self.point = np.zeros((rows, lines, 2), np.float64)
        self.distance = np.zeros((rows, lines), np.float64)

    def _grow(self) -> None:
        """Twice the rows, the new ones fresh."""
        old = len(self.inside)
        self.inside = np.concatenate([self.inside, np.zeros_like(self.inside)])
        self.streak = np.concatenate([self.streak, np.zeros_like(self.streak)])
        self.start = np.concatenate([self.start, np.zeros_like(self.start)])
        self.side = np.concatenate([self.side, np.zeros_like(self.side)])
        self.point = np.concatenate([self.point, np.zeros_like(self.point)])
        self.distance = np.concatenate([self.distance, np.zeros_like(self.distance)])
        self.free.extend(range(2 * old - 1, old - 1, -1))

    def row(self, track_id: int) -> int:
        row = self.rows.get(track_id)
        if row is None:
            if not self.free:
                self._grow()
            row = self.rows[track_id] = self.free.pop()
        return row

    def release(self, track_id: int) -> Optional[int]:
        """Forget a track; returns its row (still holding its state until reused) or None."""
        row = self.rows.pop(track_id, None)
        if row is not None:
            self.free.append(row)
        return row

    def reset(self, row: int) -> None:
        self.inside[row] = False
        self.streak[row] = 0
        self.side[row] = 0


class ZoneTracker:
    """Zone membership, occupancy and line crossings of the tracks of one camera.

    Args:
        zones, lines: the validated configuration (``ZoneConfig``, ``LineConfig``).
        class_names: the model's class table; ``classes`` filters are checked against it and a
            zone without a filter counts all of them.

    Raises:
        ConfigError: a class in a zone's or line's filter, or in ``loiter_s``, that the model
            does not have (one line naming the field).
    """

    def __init__(
        self, zones: Sequence[ZoneConfig], lines: Sequence[LineConfig], class_names: Sequence[str]
    ) -> None:
        check_classes(zones, lines, class_names)
        self.zones: Tuple[ZoneConfig, ...] = tuple(zones)
        self.lines: Tuple[LineConfig, ...] = tuple(lines)
        self.class_names: Tuple[str, ...] = tuple(class_names)
        self._zone_classes = tuple(z.counted_classes(self.class_names) for z in self.zones)
        self._zone_sets = tuple(frozenset(c) for c in self._zone_classes)
        self._line_sets = tuple(frozenset(ln.classes or self.class_names) for ln in self.lines)
        self._zone_order = {z.name: i for i, z in enumerate(self.zones)}
        self._enter_frames = np.array([z.enter_frames for z in self.zones], np.int32)
        self._leave_frames = np.array([z.leave_frames for z in self.zones], np.int32)
        self._bands = np.array([ln.dead_band_px for ln in self.lines], np.float64)
        self._geometry: OrderedDict[Tuple[int, int], _FrameGeometry] = OrderedDict()
        self._table = _Table(len(self.zones), len(self.lines))
        #: track id -> the zones it is in (after inertia); only tracks inside at least one zone.
        self._inside: Dict[int, FrozenSet[str]] = {}
        self._transition_times: Dict[Tuple[int, str], float] = {}

    @property
    def transition_times(self) -> Dict[Tuple[int, str], float]:
        """(track id, zone) -> when each enter or leave of the latest update began: the first
        frame of the streak that led to it, or a removed track's last sighting."""
        return dict(self._transition_times)

    def inside(self, track_id: int) -> FrozenSet[str]:
        """The zones ``track_id`` is in now (after inertia)."""
        return self._inside.get(track_id, _NONE)

    def membership_state(self, track_id: int, zone: str) -> Optional[Tuple[bool, int]]:
        """(inside, frames of the current contrary streak) of a track in a zone, None for a track
        never observed (or forgotten). For tests and diagnostics."""
        row = self._table.rows.get(track_id)
        if row is None:
            return None
        z = self._zone_order[zone]
        return bool(self._table.inside[row, z]), int(self._table.streak[row, z])

    def update(self, instances: Instances, track_update: TrackUpdate) -> ZoneUpdate:
        """Membership, occupancy and crossings after one frame; frames must come in order."""
        ts = float(track_update.timestamp)
        geometry = self._frame_geometry(instances.image_size)
        table = self._table
        present: Dict[int, TrackView] = {}
        gone: Dict[int, float] = {}  # track id -> when it was last seen
        for track in track_update.tracks:
            if track.state == "removed":
                gone[track.track_id] = float(track.last_seen)
            elif track.state != "tentative":  # never reported by the tracker; ignored if it were
                present[track.track_id] = track
        for track_id in table.rows:
            if track_id not in present and track_id not in gone:  # no longer reported at all
                gone[track_id] = ts
        n = len(instances)
        observed = [t for t in present.values() if t.instance is not None and 0 <= t.instance < n]
        rows = np.fromiter((table.row(t.track_id) for t in observed), np.int64, len(observed))

        entered: List[Tuple[int, str]] = []
        left: List[Tuple[int, str]] = []
        self._transition_times = {}
        if observed and self.zones:
            self._observe_zones(instances, observed, rows, geometry, ts, entered, left)
        for track_id, last_seen in gone.items():
            row = table.release(track_id)
            if row is None:
                continue
            for z in np.flatnonzero(table.inside[row]).tolist():
                name = self.zones[z].name
                left.append((track_id, name))
                self._transition_times[(track_id, name)] = last_seen
            table.reset(row)
            self._inside.pop(track_id, None)
        crossings = self._observe_lines(observed, rows, geometry, ts) if observed and self.lines else []

        order = self._zone_order
        if len(entered) > 1:
            entered.sort(key=lambda p: (p[0], order[p[1]]))
        if len(left) > 1:
            left.sort(key=lambda p: (p[0], order[p[1]]))
        occupancy: Dict[str, Dict[str, int]] = {
            z.name: dict.fromkeys(classes, 0) for z, classes in zip(self.zones, self._zone_classes)
        }
        inside: Dict[int, FrozenSet[str]] = dict.fromkeys(present, _NONE)
        for track_id, zone_names in self._inside.items():
            view = present.get(track_id)
            if view is None:  # cannot happen: a track not reported was dropped above
                continue
            inside[track_id] = zone_names
            cls = view.class_name
            for name in zone_names:
                counts = occupancy[name]
                if cls in counts:
                    counts[cls] += 1
        return ZoneUpdate(
            inside=inside, entered=tuple(entered), left=tuple(left), crossings=tuple(crossings), occupancy=occupancy,
            since=dict(self._transition_times),
        )

    def _observe_zones(
        self, instances: Instances, observed: List[TrackView], rows: npt.NDArray[np.int64],
        geometry: _FrameGeometry, ts: float, entered: List[Tuple[int, str]], left: List[Tuple[int, str]],
    ) -> None:
        """One observation per (observed track, zone counting its class), then inertia, for all
        tracks and zones at once on (tracks, zones) arrays."""
        table = self._table
        obs = Observations(instances, np.fromiter((t.instance for t in observed), np.int64, len(observed)))
        counted = self._counted(observed, self._zone_sets)
        flags = np.zeros((len(observed), len(self.zones)), np.bool_)
        for z, (zone, raster) in enumerate(zip(self.zones, geometry.zones)):
            select = counted[:, z]
            if select.any():
                flags[:, z] = obs.inside(raster, zone.method, zone.min_fraction, select)
        was = table.inside[rows]
        streak = table.streak[rows]
        start = table.start[rows]
        contrary = (flags != was) & counted
        streak[~contrary & counted] = 0
        start[contrary & (streak == 0)] = ts
        streak[contrary] += 1
        done = contrary & (streak >= np.where(was, self._leave_frames, self._enter_frames))
        streak[done] = 0
        table.inside[rows] = was ^ done
        table.streak[rows] = streak
        table.start[rows] = start
        for k, z in np.argwhere(done).tolist():
            track_id, name = observed[k].track_id, self.zones[z].name
            self._flip(track_id, name, not was[k, z], entered, left)
            self._transition_times[(track_id, name)] = float(start[k, z])

    def _counted(self, observed: List[TrackView], sets: Tuple[FrozenSet[str], ...]) -> npt.NDArray[np.bool_]:
        """(tracks, zones or lines) bool: whether each item counts each track's class."""
        classes_seen = [t.class_name for t in observed]
        out = np.ones((len(observed), len(sets)), np.bool_)
        for j, classes in enumerate(sets):
            if not classes.issuperset(classes_seen):
                out[:, j] = [c in classes for c in classes_seen]
        return out

    def _flip(
        self, track_id: int, name: str, now_in: bool, entered: List[Tuple[int, str]], left: List[Tuple[int, str]]
    ) -> None:
        zones = self._inside.get(track_id, _NONE)
        if now_in:
            entered.append((track_id, name))
            self._inside[track_id] = zones | {name}
            return
        left.append((track_id, name))
        zones = zones - {name}
        if zones:
            self._inside[track_id] = zones
        else:
            self._inside.pop(track_id, None)

    def _observe_lines(
        self, observed: List[TrackView], rows: npt.NDArray[np.int64], geometry: _FrameGeometry, ts: float
    ) -> List[Crossing]:
        """Side of each observed centroid of each line, all at once on (tracks, lines) arrays; a
        change of side through the segment is a crossing."""
        table = self._table
        crossings: List[Crossing] = []
        centroids = np.array([t.centroid for t in observed], np.float64).reshape(-1, 2)
        distance = centroids @ geometry.normals[:2] + geometry.normals[2]  # (tracks, lines)
        side = np.where(distance > self._bands, 1, np.where(distance < -self._bands, -1, 0))
        side[~self._counted(observed, self._line_sets)] = 0
        off = side != 0  # points in the dead band, or of other classes, leave the state alone
        before = table.side[rows]
        for k, n in np.argwhere(off & (before != 0) & (before != side)).tolist():
            row = int(rows[k])
            p = (float(table.point[row, n, 0]), float(table.point[row, n, 1]))
            q = (float(centroids[k, 0]), float(centroids[k, 1]))
            if not geometry.lines[n].crosses_segment(p, q, float(table.distance[row, n]), float(distance[k, n])):
                continue  # went round the line's end
            direction: Literal["in", "out"] = "in" if before[k, n] < 0 else "out"
            line = self.lines[n]
            if line.directions in ("both", direction):
                crossings.append(Crossing(line.name, observed[k].track_id, direction, ts))
        table.side[rows] = np.where(off, side, before)
        table.point[rows] = np.where(off[:, :, None], centroids[:, None, :], table.point[rows])
        table.distance[rows] = np.where(off, distance, table.distance[rows])
        return crossings

    def _frame_geometry(self, frame_size: Tuple[int, int]) -> _FrameGeometry:
        """Rasters and pixel lines for a frame size, built at its first frame and kept."""
        key = (int(frame_size[0]), int(frame_size[1]))
        geometry = self._geometry.get(key)
        if geometry is not None:
            self._geometry.move_to_end(key)
            return geometry
        rasters = tuple(ZoneRaster.build(z.pixel_points(key), key) for z in self.zones)
        for zone, raster in zip(self.zones, rasters):
            if raster.empty:  # refused at start by check_against; a later size change lands here
                log.warning("zone %r covers no pixel of a %dx%d frame: nothing can be inside it",
                            zone.name, key[1], key[0])
        lines = tuple(LineGeometry(*ln.pixel_points(key)) for ln in self.lines)
        normals = np.array([lg.normal for lg in lines], np.float64).reshape(-1, 3).T.copy()
        geometry = _FrameGeometry(rasters, lines, normals)
        self._geometry[key] = geometry
        while len(self._geometry) > _SIZES_KEPT:
            self._geometry.popitem(last=False)
        return geometry
