"""``video:FILE.mp4|.avi|.mkv``: annotated frames as a video file, through ``cv2.VideoWriter``.

The writer is opened at the first frame, whose size fixes the video size; later frames of
another size (a resolution change at the source) are resized to it, because a video stream
cannot change size mid-file.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from edgeseg.errors import SinkError
from edgeseg.sinks.annotate import annotate
from edgeseg.sinks.base import Sink
from edgeseg.sinks.paths import prepare_file
from edgeseg.structures import FrameResult

VIDEO_FOURCC = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "mp4v"}
"""Codec per container; all three are in every OpenCV build with its FFmpeg backend."""
VIDEO_EXTENSIONS = frozenset(VIDEO_FOURCC)
DEFAULT_FPS = 25.0


def is_video_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a video file (by extension) rather than an image directory."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


class VideoSink(Sink):
    """Writes each frame, annotated, to a video file at ``fps`` frames per second."""

    def __init__(self, path: str | os.PathLike[str], fps: float = DEFAULT_FPS):
        if not is_video_path(path):
            extensions = ", ".join(sorted(VIDEO_EXTENSIONS))
            raise SinkError(f"video output {str(path)!r} needs one of the extensions {extensions}")
        if fps <= 0:
            raise SinkError(f"video output {str(path)!r}: fps must be positive, got {fps}")
        self.path = prepare_file(path)
        self.fps = float(fps)
        self.frames_written = 0
        self.size: tuple[int, int] | None = None
        """(width, height) of the video, fixed by the first frame."""
        self._writer: cv2.VideoWriter | None = None
        self._closed = False

    def _open(self, width: int, height: int) -> cv2.VideoWriter:
        fourcc = cv2.VideoWriter.fourcc(*VIDEO_FOURCC[self.path.suffix.lower()])
        writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, (width, height))
        if not writer.isOpened():
            raise SinkError(f"cannot open video writer for {str(self.path)!r} ({width}x{height})")
        return writer

    def write(self, result: FrameResult) -> None:
        if self._closed:
            raise SinkError(f"video sink {str(self.path)!r} is closed")
        image: np.ndarray = annotate(result.frame.image, result.instances)
        height, width = image.shape[:2]
        if self._writer is None or self.size is None:
            self._writer = self._open(width, height)
            self.size = (width, height)
        elif (width, height) != self.size:
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        self._writer.write(image)
        self.frames_written += 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._writer.release()
            self._writer = None
