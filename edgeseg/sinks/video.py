"""``video:FILE.mp4|.avi|.mkv``: annotated frames as a video file, through ``cv2.VideoWriter``.

The writer is opened at the first frame, whose size fixes the video size; later frames of
another size (a resolution change at the source) are resized to it, because a video stream
cannot change size mid-file.

Several cameras (one sink shared by a ``cameras:`` list): one video per camera, since frames of
two cameras interleaved in one file would make a video of neither, and their sizes differ. The
first camera the sink sees writes to the given file; each other camera to the same name with
``-<camera>`` before the suffix (``out.mp4`` -> ``out-door.mp4``), opened at its first frame,
logged once, with its own size and room checks. Where the service asks to append, each camera's
file is started beside an existing one as for the first (``paths.unused_path``).

A full disk or a file-size limit (``ulimit -f``, systemd's ``LimitFSIZE``) must not leave an
unreadable file: ``cv2.VideoWriter.write`` reports nothing, and an MP4 whose index (the ``moov``
atom, written at release) did not fit cannot be played at all. So before each frame the sink
compares the room left (free space of the filesystem, and the process's file-size limit) with
what the next frames and the index need; when room runs short it finishes the file there, while
the index still fits, and from then on refuses frames with a ``SinkError`` (counted as sink
errors by the pipeline) that says where the video stopped. A file found unreadable at close
anyway (another process filled the disk faster) is reported as incomplete. While open, the sink
holds an exclusive lock on its file, so a second writer is refused.
"""

from __future__ import annotations

import logging
import os
import resource
from pathlib import Path
from typing import IO, Dict, List, Optional

import cv2
import numpy as np

from edgeseg.errors import SinkError
from edgeseg.sinks.annotate import annotate
from edgeseg.sinks.base import Sink
from edgeseg.sinks.locks import lock_exclusive, release
from edgeseg.sinks.paths import prepare_file, unused_path
from edgeseg.sources.fsnames import opencv_path
from edgeseg.structures import FrameResult

VIDEO_FOURCC = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "mp4v"}
"""Codec per container; all three are in every OpenCV build with its FFmpeg backend."""
VIDEO_EXTENSIONS = frozenset(VIDEO_FOURCC)
DEFAULT_FPS = 25.0
ROOM_MIN_BYTES = 512 * 1024
"""Room always kept free: the container's header and trailer, and FFmpeg's unflushed buffer."""
INDEX_BYTES_PER_FRAME = 64
"""What one frame adds to an MP4 index (sample size, time and offset tables), with margin."""
ROOM_FRAMES = 30
"""Frames of room kept beyond the index: a keyframe is several times the average frame."""
FIRST_FRAME_RATIO = 10
"""Until ROOM_FRAMES frames are on disk, one coded frame is guessed at raw size / this."""

LOG = logging.getLogger(__name__)


def room_left(path: Path) -> int:
    """Bytes that can still be added to ``path``: free space for this user on its filesystem, and
    no more than the process's file-size limit allows (``RLIMIT_FSIZE``, soft)."""
    stats = os.statvfs(path.parent)
    room = stats.f_bavail * stats.f_frsize
    limit, _hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    if limit != resource.RLIM_INFINITY:
        size = path.stat().st_size if path.exists() else 0
        room = min(room, max(0, limit - size))
    return room


def is_readable_video(path: Path) -> bool:
    """Whether OpenCV can open ``path`` and decode its first frame."""
    capture = cv2.VideoCapture(str(path))
    try:
        return bool(capture.isOpened()) and bool(capture.read()[0])
    finally:
        capture.release()


def is_video_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a video file (by extension) rather than an image directory."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


CAMERA_FALLBACK = "camera"
"""The name part for a camera without a name (a result of no camera, beside named ones)."""


def camera_path(path: Path, camera: str, directory: bool = False) -> Path:
    """Where another camera's output goes beside ``path``: ``out.mp4`` -> ``out-<camera>.mp4``; a
    directory (``directory``) ``frames`` -> ``frames-<camera>``. Camera names are file-name safe."""
    name = camera or CAMERA_FALLBACK
    if directory:
        return path.with_name(f"{path.name}-{name}")
    return path.with_name(f"{path.stem}-{name}{path.suffix}")


class VideoFile:
    """One annotated video file (the writer behind ``VideoSink``, one per camera): opened at its
    first frame, finished early when room runs short, locked while open."""

    def __init__(self, path: str | os.PathLike[str], fps: float):
        opencv_path(path, SinkError)  # refused before a directory is made: OpenCV crashes on it
        self.path = prepare_file(path)
        self._cv_path = str(self.path)
        self.fps = float(fps)
        self.frames_written = 0
        self.size: tuple[int, int] | None = None
        """(width, height) of the video, fixed by the first frame."""
        self._writer: Optional[cv2.VideoWriter] = None
        self._closed = False
        self.frames_dropped = 0
        """Frames refused after the video was finished early for lack of room."""
        self.complete = True
        """False when the file was found unreadable at close (a write failed under the sink)."""
        self._stopped: str | None = None
        """Why the video was finished early; every later frame is refused with it."""
        self._created = not self.path.exists()
        try:  # opened without truncating: a refused second writer must not empty the first's file
            self._lock: IO[bytes] | None = self.path.open("ab")
        except OSError as exc:
            raise SinkError(f"cannot open output file {str(self.path)!r}: {exc}") from exc
        lock_exclusive(self._lock, self.path)

    def _open(self, width: int, height: int) -> cv2.VideoWriter:
        fourcc = cv2.VideoWriter.fourcc(*VIDEO_FOURCC[self.path.suffix.lower()])
        writer = cv2.VideoWriter(self._cv_path, fourcc, self.fps, (width, height))
        if not writer.isOpened():
            raise SinkError(f"cannot open video writer for {str(self.path)!r} ({width}x{height})")
        return writer

    def write(self, result: FrameResult) -> None:
        if self._closed:
            raise SinkError(f"video sink {str(self.path)!r} is closed")
        if self._stopped is not None:
            self.frames_dropped += 1
            raise SinkError(self._stopped)
        image: np.ndarray = annotate(result.frame.image, result.instances)
        height, width = image.shape[:2]
        self._check_room(width, height)
        if self._writer is None or self.size is None:
            self._writer = self._open(width, height)
            self.size = (width, height)
        elif (width, height) != self.size:
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        self._writer.write(image)
        self.frames_written += 1

    def _check_room(self, width: int, height: int) -> None:
        """Finish the video now, while its index still fits, when the room left is short of what
        the next frames and the index need; then refuse this frame (and later ones)."""
        try:
            room = room_left(self.path)
            size = self.path.stat().st_size
        except OSError:
            return  # cannot tell (a filesystem without statvfs): write on, close checks the file
        guess = width * height * 3 // FIRST_FRAME_RATIO  # until enough frames are on disk to measure
        per_frame = size // self.frames_written if self.frames_written >= ROOM_FRAMES else guess
        needed = ROOM_MIN_BYTES + self.frames_written * INDEX_BYTES_PER_FRAME + ROOM_FRAMES * per_frame
        if room >= needed:
            return
        self._finish()
        readable = "readable" if self.frames_written == 0 or self.complete else "NOT readable"
        self._stopped = (
            f"video {str(self.path)!r} stopped after {self.frames_written} frames: only {room} bytes "
            f"left (disk full or file-size limit); the file is finished and {readable}, later frames "
            "are dropped"
        )
        self.frames_dropped += 1
        raise SinkError(self._stopped)

    def _finish(self) -> None:
        """Release the writer (which writes the index) and check that the file can be read."""
        if self._writer is None:
            return
        self._writer.release()
        self._writer = None
        if self.frames_written and not is_readable_video(self.path):
            self.complete = False
            LOG.error(
                "video %r is incomplete and unreadable after %d frames: a write failed (disk full or "
                "file-size limit)", str(self.path), self.frames_written,
            )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._finish()
            if self._created and self.frames_written == 0 and self.path.stat().st_size == 0:
                self.path.unlink()  # the empty file taken for the lock, no frame ever came
        except OSError:
            pass  # already gone, or unremovable: nothing was written to it either way
        finally:
            release(self._lock)
            self._lock = None


class VideoSink(Sink):
    """Writes each frame, annotated, to a video file at ``fps`` frames per second; with several
    cameras, one file per camera (see the module docstring).

    Args:
        path: the video file (of the first camera).
        fps: frames per second written into the videos.
        append: a further camera's file that exists already is kept and a new one started beside
            it (the service); the first camera's ``path`` is the caller's to choose.
    """

    def __init__(self, path: str | os.PathLike[str], fps: float = DEFAULT_FPS, append: bool = False):
        if not is_video_path(path):
            extensions = ", ".join(sorted(VIDEO_EXTENSIONS))
            raise SinkError(f"video output {str(path)!r} needs one of the extensions {extensions}")
        if fps <= 0:
            raise SinkError(f"video output {str(path)!r}: fps must be positive, got {fps}")
        self._first = VideoFile(path, fps)
        self.path = self._first.path
        self.fps = float(fps)
        self.append = append
        self._files: Dict[str, VideoFile] = {}
        """camera -> its file; the first camera seen has ``path``."""
        self._closed = False

    @property
    def files(self) -> List[VideoFile]:
        """Every camera's file, the first camera's first."""
        return [self._first, *(f for f in self._files.values() if f is not self._first)]

    @property
    def paths(self) -> Dict[str, Path]:
        """camera -> the video it writes to (cameras seen so far)."""
        return {camera: f.path for camera, f in self._files.items()}

    @property
    def frames_written(self) -> int:
        return sum(f.frames_written for f in self.files)

    @property
    def frames_dropped(self) -> int:
        """Frames refused after a video was finished early for lack of room."""
        return sum(f.frames_dropped for f in self.files)

    @property
    def complete(self) -> bool:
        """False when a file was found unreadable at close (a write failed under the sink)."""
        return all(f.complete for f in self.files)

    @property
    def size(self) -> tuple[int, int] | None:
        """(width, height) of the first camera's video, fixed by its first frame."""
        return self._first.size

    def write(self, result: FrameResult) -> None:
        if self._closed:
            raise SinkError(f"video sink {str(self.path)!r} is closed")
        self._file_of(result.camera).write(result)

    def _file_of(self, camera: str) -> VideoFile:
        file = self._files.get(camera)
        if file is not None:
            return file
        if not self._files:
            file = self._first
        else:
            target = camera_path(self.path, camera)
            file = VideoFile(unused_path(target) if self.append else target, self.fps)
            LOG.info("video: camera %s is written to %s (%s has camera %s)", camera or "(none)", file.path,
                     self.path, next(iter(self._files)) or "(none)")
        self._files[camera] = file
        return file

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        errors: List[SinkError] = []
        for file in self.files:
            try:
                file.close()
            except SinkError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
