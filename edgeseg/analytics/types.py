"""The records the tracker, the zones and the events hand each other and the sinks.

They are frozen and hold plain values (tuples, ints, floats, strings), so a sink in the output
thread, the dashboard's HTTP threads and the MQTT feeder can read the same record without a
lock. Times are seconds since the epoch (the frame's capture ``timestamp``), so that recorded
clips give the same events whatever the machine's speed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, FrozenSet, Literal, Mapping, Optional, Tuple

import numpy as np
import numpy.typing as npt

TrackState = Literal["tentative", "confirmed", "lost", "removed"]
EventType = Literal["new", "update", "end"]
Point = Tuple[float, float]
Box = Tuple[float, float, float, float]


@dataclass(frozen=True)
class TrackView:
    """One track as it stands after a frame's update.

    Attributes:
        track_id: unique for the run (per class identities: a track never changes class).
        class_id, class_name: the class it was confirmed with.
        state: "tentative" (not yet confirmed: never published), "confirmed" (matched this
            frame), "lost" (not matched this frame, kept for re-association within the buffer),
            "removed" (reported once, in the frame it was dropped).
        box: xyxy in original pixels: the matched detection's box, else the Kalman prediction.
        score: the matched detection's score this frame (0.0 when not matched).
        instance: index into the frame's ``Instances`` when matched this frame, else None.
        centroid: the mask's centroid when the matched instance has a mask, else the box centre.
        stationary: has not moved more than the tracker's threshold for ``stationary_after_s``.
        first_seen: timestamp of its first detection.
        last_seen: timestamp of its last matched detection.
        hits: frames it was matched in.
    """

    track_id: int
    class_id: int
    class_name: str
    state: TrackState
    box: Box
    score: float
    instance: Optional[int]
    centroid: Point
    stationary: bool
    first_seen: float
    last_seen: float
    hits: int


@dataclass(frozen=True, eq=False)
class TrackUpdate:
    """What the tracker says about one frame.

    Attributes:
        frame_id, timestamp: the frame's.
        track_ids: (n,) int32 aligned with the frame's instances: the confirmed track each
            instance belongs to, -1 for none (a tentative track, or a detection left unmatched).
        tracks: every track that is not tentative after this frame (confirmed and lost), plus the
            tracks removed in this frame (state "removed", reported exactly once).
    """

    frame_id: int
    timestamp: float
    track_ids: npt.NDArray[np.int32]
    tracks: Tuple[TrackView, ...]


@dataclass(frozen=True)
class Crossing:
    """A track's mask centroid crossed a line in this frame.

    Attributes:
        line: the line's name.
        track_id: the track that crossed.
        direction: "in" or "out": "in" when it crossed from the line's left to its right, seen
            from its first point towards its second (the config documents which side is which).
        timestamp: the frame's timestamp.
    """

    line: str
    track_id: int
    direction: Literal["in", "out"]
    timestamp: float


@dataclass(frozen=True)
class ZoneUpdate:
    """Zone membership and line crossings after one frame (membership after inertia).

    Attributes:
        inside: track id -> the zones it is in now.
        entered: (track id, zone) pairs that entered in this frame.
        left: (track id, zone) pairs that left in this frame (also when the track was removed).
        crossings: the line crossings of this frame.
        occupancy: zone -> class name -> number of tracks inside, confirmed and lost (a lost track
            counts until it is removed; every zone, every class the zone counts, zeros included,
            so retained counts go back to 0).
        since: (track id, zone) -> when each enter or leave reported in this frame really began:
            the first frame of the streak that inertia waited out, or a removed track's last
            sighting. Events date ``entered_at`` and ``left_at`` by it, not by the reporting frame.
    """

    inside: Mapping[int, FrozenSet[str]] = field(default_factory=dict)
    entered: Tuple[Tuple[int, str], ...] = ()
    left: Tuple[Tuple[int, str], ...] = ()
    crossings: Tuple[Crossing, ...] = ()
    occupancy: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    since: Mapping[Tuple[int, str], float] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    """One event message: ``new`` when a track is confirmed, ``update`` on a meaningful change,
    ``end`` exactly once per track (removed, or the run stops).

    Attributes:
        type: "new", "update" or "end".
        event_id: unique per track and run (stable across the track's messages).
        track_id: the track.
        reasons: why this message (for updates: "entered_zone", "left_zone", "crossed_line",
            "stationary", "moving", "better_snapshot", "loitering"; for new/end: the type).
        document: the whole JSON-able event (``edgeseg/schemas/event.v1.json``).
        snapshot: the best frame's JPEG, when snapshots are on and this message carries a new one.
    """

    type: EventType
    event_id: str
    track_id: int
    reasons: Tuple[str, ...]
    document: Mapping[str, Any]
    snapshot: Optional[bytes] = None


@dataclass(frozen=True, eq=False)
class Analytics:
    """The analytics of one frame, attached to its ``FrameResult``."""

    tracks: TrackUpdate
    zones: ZoneUpdate = field(default_factory=ZoneUpdate)
    events: Tuple[Event, ...] = ()
    trails: Mapping[int, Tuple[Point, ...]] = field(default_factory=dict)
    """Recent centroids of each confirmed track (for drawing), oldest first."""

