"""A video file as a source: every frame, in order, through OpenCV's FFmpeg backend.

The source reads one frame ahead. That lets a corrupt file fail at open (where the CLI can
report it) rather than as an empty run, and lets ``exhausted`` turn True together with the last
frame, so a caller's ``while not source.exhausted`` loop makes no extra empty call.

Timestamps are media time: the moment the file was opened plus the frame's position in it
(frame index / the file's frame rate), not the moment the frame was decoded. The tracker's lost
buffer, stationary timers and the events' dwell times then measure the scene, so a clip gives
the same events whether it is read at 300 FPS on a desktop or 10 FPS on a Jetson.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import ClassVar

import cv2

from edgeseg.errors import SourceError
from edgeseg.sources.base import Source, SourceOptions
from edgeseg.sources.fsnames import opencv_path, printable_name
from edgeseg.sources.images import to_bgr8
from edgeseg.sources.opencv_logs import quiet_opencv_logs
from edgeseg.sources.uri import mask_credentials
from edgeseg.structures import Frame, ImageArray

logger = logging.getLogger(__name__)

#: Frame rate of media time for a file whose container gives none (or an absurd one).
DEFAULT_MEDIA_FPS = 25.0


class VideoFileSource(Source):
    """Frames of one video file; nothing is dropped, ``loop`` restarts it from the beginning."""

    USAGE: ClassVar[str] = (
        "  file://clip.mp4 | clip.mp4           video file (.mp4 .avi .mkv .mov .webm ...), every frame"
    )
    live = False

    def __init__(self, uri: str, path: Path, options: SourceOptions) -> None:
        """Open ``path`` and decode its first frame; ``SourceError`` if either fails."""
        quiet_opencv_logs()
        self.uri = uri
        self._safe_uri = printable_name(mask_credentials(uri))
        self._path = path
        self._cv_path = opencv_path(path, SourceError)  # before OpenCV: a non-UTF-8 name crashes it
        self._options = options
        self._next_id = 0
        self._cap: cv2.VideoCapture | None = self._open()
        self._pending = self._grab()
        if self._pending is None:
            self.close()
            raise SourceError(f"{self._safe_uri}: expected a decodable video, FFmpeg read no frame")
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT)) if self._cap is not None else 0
        self._length = count if count > 0 else None
        rate = float(self._cap.get(cv2.CAP_PROP_FPS)) if self._cap is not None else 0.0
        #: Frames per second of media time (the file's own rate; 25 when it gives none).
        self.media_fps = rate if 0 < rate <= 1000 else DEFAULT_MEDIA_FPS
        self._opened_at = time.time()

    def _open(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(self._cv_path, cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self._safe_uri}: expected a video FFmpeg can open, cannot open {self._cv_path}")
        return cap

    def _grab(self) -> ImageArray | None:
        """The next decoded frame of the current pass, or None at its end."""
        if self._cap is None:
            return None
        ok, image = self._cap.read()
        if not ok or image is None:
            return None
        try:
            return to_bgr8(image)
        except ValueError as exc:
            raise SourceError(f"{self._safe_uri}: {exc}") from exc

    def _advance(self) -> ImageArray | None:
        """The frame after the one just delivered, restarting the file when looping."""
        image = self._grab()
        if image is not None or not self._options.loop:
            return image
        # Reopening rather than seeking to 0: CAP_PROP_POS_FRAMES is unreliable on some codecs.
        if self._cap is not None:
            self._cap.release()
        self._cap = self._open()
        image = self._grab()
        if image is None:
            raise SourceError(f"{self._safe_uri}: expected the video to restart to loop, it read no frame")
        return image

    def read(self, timeout: float | None = None) -> Frame | None:
        """The next frame, or ``None`` once the file has ended (``exhausted`` is then True)."""
        image = self._pending
        if image is None:
            return None
        self._pending = self._advance()
        timestamp = self._opened_at + self._next_id / self.media_fps  # media time, see the module docstring
        frame = Frame(image=image, frame_id=self._next_id, source=self._safe_uri, timestamp=timestamp)
        self._next_id += 1
        return frame

    @property
    def exhausted(self) -> bool:
        return self._pending is None

    @property
    def length(self) -> int | None:
        """Frames in one pass as the container reports them, or None where it does not."""
        return self._length

    def close(self) -> None:
        self._pending = None
        if self._cap is not None:
            self._cap.release()
            self._cap = None
