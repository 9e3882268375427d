"""The analytics stage: tracker -> zones and lines -> events, once per frame, in frame order.

It runs in the pipeline's output thread right after postprocessing (``FrameProcessor.finish``),
because every part keeps state from one frame to the next (identities, inertia counters, open
events) and the output thread is the one place where frames arrive in order, whatever the
number of inference workers. Its cost is timed as the ``analytics`` stage.

Zones and lines given in pixels can only be checked against the frame once its size is known:
the first frame's. A zone that covers no pixel of the frame, or a class the model does not
have, is refused there in one line naming the field (``ConfigError``), before any result of that
frame reaches a sink; the pipeline reports it like any refusal at start.

At the end of a run (the source ended, the daemon stops or reloads) ``finish`` removes every live
track, so that each open event gets its ``end`` exactly once; the pipeline hands those events
to the sinks' ``write_events``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Optional, Tuple

from edgeseg.analytics.types import Analytics, Event
from edgeseg.config.events import EventsConfig
from edgeseg.config.tracker import TrackerConfig
from edgeseg.config.zones import LineConfig, ZoneConfig, check_against
from edgeseg.errors import ConfigError
from edgeseg.events.lifecycle import EventManager
from edgeseg.structures import FrameResult
from edgeseg.tracking.tracker import Tracker
from edgeseg.zones.state import ZoneTracker

log = logging.getLogger(__name__)


def zones_loiter(zones: Sequence[ZoneConfig], class_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """zone -> class -> loitering threshold in seconds, for the classes that have one."""
    out: dict[str, dict[str, float]] = {}
    for zone in zones:
        limits = {c: s for c in class_names if (s := zone.loiter_threshold(c)) is not None}
        if limits:
            out[zone.name] = limits
    return out


class AnalyticsStage:
    """Tracks, zones, lines and events for one camera's frames.

    Args:
        tracker: the ``tracker:`` section.
        zones, lines: the ``zones:`` and ``lines:`` sections.
        events: the ``events:`` section.
        camera: the camera's name (events and snapshots carry it).
        class_names: the model's classes (the zones refuse a filter naming another one).
    """

    def __init__(
        self,
        tracker: TrackerConfig,
        zones: Sequence[ZoneConfig],
        lines: Sequence[LineConfig],
        events: EventsConfig,
        camera: str,
        class_names: Sequence[str],
    ):
        self.camera = camera
        self.class_names = tuple(class_names)
        self._zone_configs: Tuple[ZoneConfig, ...] = tuple(zones)
        self._line_configs: Tuple[LineConfig, ...] = tuple(lines)
        self._tracker = Tracker(tracker, class_names)
        self._zones = ZoneTracker(zones, lines, class_names)
        self._events = EventManager(events, camera, class_names, zones_loiter(zones, class_names))
        self._frame_size: Optional[Tuple[int, int]] = None
        self._last_time = 0.0
        self._finished = False

    def _check_frame(self, size: Tuple[int, int]) -> None:
        """Zones and lines against the first frame's size (and a camera that changed size)."""
        if size == self._frame_size:
            return
        first, self._frame_size = self._frame_size is None, size
        try:
            notes = check_against(self._zone_configs, self._line_configs, size, self.class_names)
        except ConfigError as exc:
            if first:
                raise  # at start: refused in one line, before any result reaches a sink
            # A camera that changed resolution mid-run: the zone counts nothing now; say so, go on.
            log.error("%s (frame size changed to %dx%d)", exc, size[1], size[0])
            return
        for note in notes:
            log.warning("%s", note)

    def __call__(self, result: FrameResult) -> FrameResult:
        """``result`` with its analytics attached (track ids, zones, crossings, events, trails)."""
        self._check_frame(result.frame.size)
        timestamp = result.frame.timestamp
        tracks = self._tracker.update(result.instances, timestamp, result.frame.frame_id)
        zones = self._zones.update(result.instances, tracks)
        events = self._events.update(result, tracks, zones)
        self._last_time = timestamp
        analytics = Analytics(tracks=tracks, zones=zones, events=events, trails=self._tracker.trails())
        return replace(result, analytics=analytics)

    def finish(self) -> Tuple[Event, ...]:
        """End the run: every live track removed, every open event ended once. Idempotent."""
        if self._finished:
            return ()
        self._finished = True
        self._tracker.finish()  # the tracker forgets its tracks; their events end below
        return tuple(self._events.finish(self._last_time))
