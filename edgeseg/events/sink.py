"""``events:PATH``: one event message per line (schema ``edgeseg/event`` v1), appended and flushed.

It writes the events the analytics attached to each frame result (``result.analytics.events``;
nothing for a frame without analytics), and :meth:`EventsSink.write_events` writes those that
belong to no frame: the ``end`` messages of :meth:`EventManager.finish` when the run stops. Each
line is flushed as it is written (like ``jsonl:``), so a killed daemon keeps every finished event.
"""

from __future__ import annotations

import json
import os
from typing import IO, Iterable

from edgeseg.analytics.types import Event
from edgeseg.errors import SinkError
from edgeseg.sinks.base import Sink
from edgeseg.sinks.jsonl import JSON_SEPARATORS
from edgeseg.sinks.locks import open_locked
from edgeseg.sinks.paths import prepare_file
from edgeseg.structures import FrameResult


class EventsSink(Sink):
    """Writes event documents as JSON lines to a file (truncated on open unless ``append``), holding
    an exclusive lock on it so that a second writer is refused instead of interleaving lines."""

    def __init__(self, path: str | os.PathLike[str], append: bool = False):
        self.path = prepare_file(path)
        self.lines_written = 0
        self._file: IO[str] | None = open_locked(self.path, truncate=not append)

    def write(self, result: FrameResult) -> None:
        analytics = result.analytics
        if analytics is not None and analytics.events:
            self.write_events(analytics.events)

    def write_events(self, events: Iterable[Event]) -> None:
        """Append one line per event, in order. Raises ``SinkError`` when closed or unwritable."""
        if self._file is None:
            raise SinkError(f"events sink {str(self.path)!r} is closed")
        for event in events:
            line = json.dumps(event.document, separators=JSON_SEPARATORS)
            try:
                self._file.write(line + "\n")
                self._file.flush()
            except OSError as exc:
                raise SinkError(f"cannot write to {str(self.path)!r}: {exc}") from exc
            self.lines_written += 1

    def close(self) -> None:
        if self._file is None:
            return
        file, self._file = self._file, None
        try:
            file.close()
        except OSError as exc:
            raise SinkError(f"cannot close {str(self.path)!r}: {exc}") from exc
