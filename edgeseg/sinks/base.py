"""The one interface every output implements: ``write`` a frame result, ``close`` at the end."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Literal

from edgeseg.resources import Closeable
from edgeseg.structures import FrameResult

MaskFormat = Literal["rle", "polygon", "none"]


@dataclass(frozen=True)
class SinkOptions:
    """Settings shared by the sinks.

    Attributes:
        mask_format: how masks appear in JSON outputs: COCO RLE, polygons, or left out.
        fps: frame rate written into annotated videos.
        append: files are appended to rather than replaced (the service: a restart or reload
            must not erase what was written before).
    """

    mask_format: MaskFormat = "rle"
    fps: float = 25.0
    append: bool = False


class Sink(Closeable, abc.ABC):
    """A destination for frame results."""

    @abc.abstractmethod
    def write(self, result: FrameResult) -> None:
        """Consume one frame result. Raises ``SinkError`` if it cannot be written."""

    def close(self) -> None:
        """Flush and release. Idempotent; called once the last frame has been written."""
