"""Events for security cameras: one per confirmed track, ``new`` -> ``update``... -> ``end``.

:class:`EventManager` (``lifecycle``) turns each frame's tracks and zone results into event
messages; :class:`SnapshotStore` (``snapshots``) writes each event's best frame as a JPEG with
its mask drawn, plus a cut-out, in a bounded directory; :class:`EventsSink` (``sink``) is the
``events:PATH`` output, one event per line.
"""

from __future__ import annotations

from edgeseg.events.lifecycle import EventManager, load_event_schema, random_event_id
from edgeseg.events.sink import EventsSink
from edgeseg.events.snapshots import SnapshotStore, camera_dir_name

__all__ = ["EventManager", "EventsSink", "SnapshotStore", "camera_dir_name", "load_event_schema", "random_event_id"]
