"""The one interface every frame source implements.

In the manner of jetson-utils' ``videoSource``: one abstract source, picked by URI scheme. A
caller loops on ``read(timeout)``; a ``None`` means "nothing yet" (a timeout, a skipped
unreadable image, a live stream reconnecting), and ``exhausted`` tells a finite source's end
from a pause. Failures that make the source unusable raise ``SourceError``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from edgeseg import MAX_IMAGE_PIXELS
from edgeseg.errors import SourceError
from edgeseg.resources import Closeable
from edgeseg.structures import Frame

#: First wait before reconnecting a dropped live source, seconds.
RECONNECT_INITIAL_S = 0.5
#: Longest wait between reconnection attempts, seconds.
RECONNECT_MAX_S = 30.0
#: How long a network stream may take to connect before the attempt counts as failed, seconds.
OPEN_TIMEOUT_S = 5.0
#: How long a connected network stream may stall before it counts as dropped, seconds.
READ_TIMEOUT_S = 5.0
#: Largest still image decoded, width x height: above a 48 MP (8064x6048) phone or camera still
#: and an 8K frame (33 MP), far below a decompression bomb (20000x20000 = 400 MP, 2.4 GB).
DEFAULT_MAX_PIXELS = 50_000_000


@dataclass(frozen=True)
class SourceOptions:
    """How to open a source; the same for every scheme, each using what applies to it.

    Attributes:
        loop: restart a finite source (file, folder) from the beginning when it ends.
        reconnect_initial_s: first backoff delay after a live source drops.
        reconnect_max_s: cap of the exponential backoff.
        width, height, fps: requested capture format for cameras (v4l2, csi); 0 = default.
        open_timeout_s: network streams (rtsp, http): longest wait for a connection.
        read_timeout_s: network streams: longest stall before the stream counts as dropped.
        max_pixels: images (files, folders, globs): an image whose header gives more pixels
            than this is skipped with one line before it is decoded (decompression bombs).

    A live ``read(timeout)`` never sleeps past ``timeout`` in its own backoff waits, but one
    call into OpenCV (connect or read) can block up to ``open_timeout_s``/``read_timeout_s``;
    keep those small where a caller needs short reads.
    """

    loop: bool = False
    reconnect_initial_s: float = RECONNECT_INITIAL_S
    reconnect_max_s: float = RECONNECT_MAX_S
    width: int = 0
    height: int = 0
    fps: int = 0
    open_timeout_s: float = OPEN_TIMEOUT_S
    read_timeout_s: float = READ_TIMEOUT_S
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.reconnect_initial_s <= 0 or self.reconnect_max_s < self.reconnect_initial_s:
            raise SourceError(
                f"source options: expected 0 < reconnect_initial_s <= reconnect_max_s, got "
                f"{self.reconnect_initial_s} and {self.reconnect_max_s}"
            )
        if min(self.width, self.height, self.fps) < 0:
            raise SourceError(
                f"source options: expected width, height, fps >= 0 (0 = camera default), got "
                f"{self.width}x{self.height}@{self.fps}"
            )
        if self.open_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise SourceError(
                f"source options: expected positive open/read timeouts, got "
                f"{self.open_timeout_s} and {self.read_timeout_s}"
            )
        if not 0 < self.max_pixels <= MAX_IMAGE_PIXELS:
            raise SourceError(
                f"source options: expected 0 < max_pixels <= {MAX_IMAGE_PIXELS} (OpenCV's own limit, "
                f"OPENCV_IO_MAX_IMAGE_PIXELS), got {self.max_pixels}"
            )


class Source(Closeable, abc.ABC):
    """A stream of frames from one URI."""

    #: The URI this source reads, as given by the user.
    uri: str
    #: True for cameras and network streams: the pipeline keeps only the newest frame and
    #: counts the drops. False for files and folders: every frame is processed.
    live: bool = False

    @abc.abstractmethod
    def read(self, timeout: float | None = None) -> Frame | None:
        """The next frame, or ``None`` if none is ready within ``timeout`` seconds.

        Also returns ``None`` for an image that was skipped because it could not be decoded
        (after logging one line naming the file) and when a finite source is exhausted (then
        ``exhausted`` is True). Raises ``SourceError`` when the source cannot be used at all.
        """

    @property
    def exhausted(self) -> bool:
        """True once a finite, non-looping source has delivered its last frame."""
        return False

    @property
    def length(self) -> int | None:
        """Number of frames for finite sources when known (for progress bars), else None."""
        return None

    @property
    def skipped(self) -> int:
        """Number of unreadable items skipped so far."""
        return 0

    def close(self) -> None:
        """Release the device, stream or file. Idempotent."""
