"""``events:PATH``: one event message per line (schema ``edgeseg/event`` v1), appended and flushed.

It writes the events the analytics attached to each frame result (``result.analytics.events``;
nothing for a frame without analytics), and :meth:`EventsSink.write_events` writes those that
belong to no frame: the ``end`` messages of :meth:`EventManager.finish` when the run stops. Each
line is flushed as it is written (like ``jsonl:``), so a killed daemon keeps every finished event.
"""

from __future__ import annotations

import os
from typing import Iterable

from edgeseg.analytics.types import Event
from edgeseg.sinks.jsonl import JsonLinesFile
from edgeseg.structures import FrameResult


class EventsSink(JsonLinesFile):
    """Writes event documents as JSON lines (``events:PATH``; the file handling is ``jsonl:``'s)."""

    KIND = "events"

    def __init__(self, path: str | os.PathLike[str], append: bool = False):
        super().__init__(path, append)

    def write(self, result: FrameResult) -> None:
        analytics = result.analytics
        if analytics is not None and analytics.events:
            self.write_events(analytics.events)

    def write_events(self, events: Iterable[Event]) -> None:
        """Append one line per event, in order. Raises ``SinkError`` when closed or unwritable."""
        for event in events:
            self.write_line(event.document)
