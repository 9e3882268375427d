"""The one interface every output implements: ``write`` a frame result, ``close`` at the end."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from edgeseg.resources import Closeable
from edgeseg.structures import FrameResult

if TYPE_CHECKING:
    from edgeseg.analytics.types import Event

MaskFormat = Literal["rle", "polygon", "none"]


@dataclass(frozen=True)
class SinkOptions:
    """Settings shared by the sinks.

    Attributes:
        mask_format: how masks appear in JSON outputs: COCO RLE, polygons, or left out.
        fps: frame rate written into annotated videos.
        append: files are appended to rather than replaced (the service: a restart or reload
            must not erase what was written before).
        camera_topics: an MQTT sink publishes each camera under ``<prefix>/<device>/<camera>/``
            (``Config.uses_camera_topics``).
    """

    mask_format: MaskFormat = "rle"
    fps: float = 25.0
    append: bool = False
    camera_topics: bool = False


class Sink(Closeable, abc.ABC):
    """A destination for frame results."""

    @abc.abstractmethod
    def write(self, result: FrameResult) -> None:
        """Consume one frame result. Raises ``SinkError`` if it cannot be written."""

    def write_events(self, events: Sequence[Event]) -> None:
        """Consume events that belong to no frame: the ``end`` of every open event when the run
        stops (``AnalyticsStage.finish``). Sinks that publish events override it; the others
        ignore them (their events arrive with each frame's ``result.analytics``)."""

    def write_status(self, camera: str, online: bool) -> None:
        """A camera's stream came up (``online``) or dropped, ended or was removed. Called from
        the camera's capture thread on every change; sinks that publish status override it."""

    def close(self) -> None:
        """Flush and release. Idempotent; called once the last frame has been written."""
