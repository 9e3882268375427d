"""Zone and line events, and zone membership, of a run against a scene's truth.

What is compared (the truth is ``edgeseg synth --tracking-scene``'s, see ``export/data/scenes.py``):

- zone enter and leave events: the runtime's ``ZoneTracker`` (with its inertia) reports when a
  track entered or left; the time of the event is when it really began
  (``ZoneTracker.transition_times``, what an event's ``entered_at``/``left_at`` carry), turned
  into a frame index. Each true event is paired with the nearest unpaired predicted event of the
  same zone, kind and object; its error is predicted frame - true frame. Unpaired predicted
  events are spurious.
- line crossings: counts per line and direction (the issue asks for exact counts), and how many
  predicted crossings are the right object's in the right direction within ``tolerance`` frames.
- membership: in every frame, each true object matched by an instance (mask IoU >= 0.5) is
  judged inside or outside each zone by the runtime's rule on that instance, once with the mask
  (``method: mask``) and once with the box anchor (``method: box_anchor``), without inertia;
  the accuracy of each is the share of such object-frames that agree with the truth's
  mask-based membership.

A predicted track is the true object it is matched to in the frame of its event, else in the
nearest frame where it is matched (a track that is never matched is nobody: its events are
spurious).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from edgeseg.analytics.types import ZoneUpdate
from edgeseg.evaluation.track_truth import Truth
from edgeseg.structures import Instances

#: Largest |frame error| of an event that the issue accepts.
TOLERANCE_FRAMES = 3


@dataclass
class Identities:
    """Which true object each predicted track is, frame by frame (from the per-frame matching)."""

    frames_of: Dict[int, List[int]] = field(default_factory=dict)
    truth_at: Dict[Tuple[int, int], int] = field(default_factory=dict)

    def add(self, frame: int, track_id: int, truth_id: int) -> None:
        if track_id < 0:
            return
        bisect.insort(self.frames_of.setdefault(track_id, []), frame)
        self.truth_at[(track_id, frame)] = truth_id

    def truth_of(self, track_id: int, frame: int) -> Optional[int]:
        """The true object of ``track_id`` at ``frame``, else at its nearest matched frame."""
        frames = self.frames_of.get(track_id)
        if not frames:
            return None
        k = bisect.bisect_left(frames, frame)
        nearest = min(frames[max(k - 1, 0):k + 1], key=lambda f: (abs(f - frame), f))
        return self.truth_at[(track_id, nearest)]


@dataclass(frozen=True)
class PredictedZoneEvent:
    track_id: int
    zone: str
    kind: str  # "enter" or "leave"
    frame: int


@dataclass(frozen=True)
class PredictedCrossing:
    track_id: int
    line: str
    direction: str
    frame: int


@dataclass(frozen=True)
class EventAccuracy:
    """One kind of zone event in one zone: how many true ones were found, their frame errors."""

    zone: str
    kind: str
    truth: int
    errors: Tuple[int, ...]
    spurious: int

    @property
    def found(self) -> int:
        return len(self.errors)

    @property
    def max_error(self) -> int:
        return max((abs(e) for e in self.errors), default=0)

    @property
    def mean_error(self) -> float:
        return float(np.mean([abs(e) for e in self.errors])) if self.errors else 0.0

    def text(self) -> str:
        return (f"{self.kind} {self.found}/{self.truth} (|error| max {self.max_error}, mean {self.mean_error:.1f} "
                f"frames; {self.spurious} spurious)")


@dataclass(frozen=True)
class LineAccuracy:
    line: str
    counts: Mapping[str, Tuple[int, int]]  # direction -> (predicted, truth)
    attributed: int
    truth: int

    @property
    def exact(self) -> bool:
        return all(p == t for p, t in self.counts.values())

    def text(self) -> str:
        counts = " ".join(f"{d} {p}/{t}" for d, (p, t) in self.counts.items())
        verdict = "exact" if self.exact else "NOT exact"
        return (f"line {self.line}: {counts} (predicted/true): {verdict}; {self.attributed} of {self.truth} by the "
                f"right object in the right direction within {TOLERANCE_FRAMES} frames")


@dataclass(frozen=True)
class MembershipAccuracy:
    zone: str
    object_frames: int
    mask: float
    box_anchor: float
    truth_box_anchor: float
    truth_object_frames: int

    def text(self) -> str:
        return (f"membership {self.zone}: mask {self.mask:.3f}, box anchor {self.box_anchor:.3f} "
                f"({self.object_frames} matched object-frames); box anchor on the true boxes "
                f"{self.truth_box_anchor:.3f} ({self.truth_object_frames} object-frames)")


def predicted_events(
    frame: int, update: ZoneUpdate, transitions: Mapping[Tuple[int, str], float], fps: float
) -> Tuple[List[PredictedZoneEvent], List[PredictedCrossing]]:
    """The events of one frame's ``ZoneUpdate``, at the frames they began (``transitions``)."""
    def began(key: Tuple[int, str]) -> int:
        ts = transitions.get(key)
        return frame if ts is None else int(round(ts * fps))

    zone_events = [PredictedZoneEvent(t, z, "enter", began((t, z))) for t, z in update.entered]
    zone_events += [PredictedZoneEvent(t, z, "leave", began((t, z))) for t, z in update.left]
    crossings = [PredictedCrossing(c.track_id, c.line, c.direction, int(round(c.timestamp * fps)))
                 for c in update.crossings]
    return zone_events, crossings


def zone_event_accuracy(
    truth: Truth, predicted: Sequence[PredictedZoneEvent], identities: Identities
) -> List[EventAccuracy]:
    """Per zone and kind (enter, leave): true events found and their frame errors."""
    out = []
    for zone in truth.zones:
        for kind in ("enter", "leave"):
            key = f"{kind}_frame"
            wanted = [(int(r["track_id"]), int(r[key])) for r in truth.zone_events
                      if r["zone"] == zone.name and r.get(key) is not None]
            pool = [(identities.truth_of(e.track_id, e.frame), e.frame) for e in predicted
                    if e.zone == zone.name and e.kind == kind]
            errors, used = _pair(wanted, pool)
            out.append(EventAccuracy(zone.name, kind, len(wanted), tuple(errors), len(pool) - used))
    return out


def _pair(wanted: Sequence[Tuple[int, int]], pool: Sequence[Tuple[Optional[int], int]]) -> Tuple[List[int], int]:
    """Pair true (object, frame) with predicted ones of the same object, nearest frames first."""
    candidates = sorted(
        (abs(pf - tf), i, j) for i, (obj, tf) in enumerate(wanted) for j, (pobj, pf) in enumerate(pool) if pobj == obj
    )
    done_t, done_p = set(), set()
    errors: Dict[int, int] = {}
    for _, i, j in candidates:
        if i in done_t or j in done_p:
            continue
        done_t.add(i)
        done_p.add(j)
        errors[i] = pool[j][1] - wanted[i][1]
    return [errors[i] for i in sorted(errors)], len(done_p)


def line_accuracy(
    truth: Truth, predicted: Sequence[PredictedCrossing], identities: Identities
) -> List[LineAccuracy]:
    """Per line: predicted and true counts per direction, and crossings by the right object."""
    out = []
    for line in truth.lines:
        true_rows = [(int(r["track_id"]), str(r["direction"]), int(r["frame"])) for r in truth.crossings
                     if r["line"] == line.name]
        mine = [c for c in predicted if c.line == line.name]
        counts = {d: (sum(c.direction == d for c in mine), sum(r[1] == d for r in true_rows)) for d in ("in", "out")}
        attributed = 0
        for direction in ("in", "out"):
            wanted = [(obj, f) for obj, d, f in true_rows if d == direction]
            pool = [(identities.truth_of(c.track_id, c.frame), c.frame) for c in mine if c.direction == direction]
            errors, _ = _pair(wanted, pool)
            attributed += sum(abs(e) <= TOLERANCE_FRAMES for e in errors)
        out.append(LineAccuracy(line.name, counts, attributed, len(true_rows)))
    return out


@dataclass
class MembershipTally:
    """Running counts of the membership comparison, fed frame by frame."""

    truth: Truth
    _lookup: Dict[Tuple[str, int, int], bool] = field(default_factory=dict)
    _agree: Dict[Tuple[str, str], int] = field(default_factory=dict)
    _total: Dict[str, int] = field(default_factory=dict)
    _rasters: Dict[Tuple[str, Tuple[int, int]], Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for row in self.truth.membership:
            for frame, inside in zip(row["frames"], row["inside"]):
                self._lookup[(str(row["zone"]), int(row["track_id"]), int(frame))] = bool(inside)

    def add(self, frame: int, instances: Instances, pairs: Sequence[Tuple[int, int]]) -> None:
        """``pairs``: (true track id, instance index) matched in ``frame``."""
        from edgeseg.zones.geometry import ZoneRaster, inside_zone

        if not pairs or not self._lookup:
            return
        for zone in self.truth.zones:
            known = [(tid, k) for tid, k in pairs if (zone.name, tid, frame) in self._lookup]
            if not known:
                continue
            key = (zone.name, instances.image_size)
            raster = self._rasters.get(key)
            if raster is None:
                raster = ZoneRaster.build(zone.pixel_points(instances.image_size), instances.image_size)
                self._rasters[key] = raster
            idx = np.array([k for _, k in known], np.int64)
            want = np.array([self._lookup[(zone.name, tid, frame)] for tid, _ in known])
            for method in ("mask", "box_anchor"):
                got = inside_zone(raster, instances, idx, method, zone.min_fraction)
                self._agree[(zone.name, method)] = self._agree.get((zone.name, method), 0) + int(np.sum(got == want))
            self._total[zone.name] = self._total.get(zone.name, 0) + len(known)

    def results(self) -> List[MembershipAccuracy]:
        out = []
        for zone in self.truth.zones:
            rows = [r for r in self.truth.membership if r["zone"] == zone.name]
            if not rows:
                continue
            truth_total = sum(len(r["frames"]) for r in rows)
            truth_same = sum(bool(a) == bool(b) for r in rows for a, b in zip(r["inside"], r.get("anchor_inside", ())))
            total = self._total.get(zone.name, 0)
            out.append(MembershipAccuracy(
                zone.name, total,
                self._agree.get((zone.name, "mask"), 0) / total if total else 0.0,
                self._agree.get((zone.name, "box_anchor"), 0) / total if total else 0.0,
                truth_same / truth_total if truth_total else 0.0, truth_total,
            ))
        return out
