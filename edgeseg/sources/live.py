"""Live sources: V4L2 and CSI cameras, RTSP and HTTP(S) MJPEG streams.

A camera that is unplugged or a stream that drops must not end a daemon that runs for months:
a failed open or a lost stream is logged as one line and retried with exponential backoff, for
as long as the source is open. ``read(timeout)`` returns ``None`` meanwhile, and never sleeps
past its timeout in a backoff wait; ``close()`` from another thread ends such a wait at once.

There is no capture thread in here: the pipeline's capture thread calls ``read`` and keeps only
the newest frame, so a second thread would add a copy and a lock for nothing. OpenCV itself does
not reconnect, so the retry loop below is not duplicated by the library.
"""

from __future__ import annotations

import abc
import logging
import os
import re
import threading
import time
from typing import ClassVar

import cv2
import numpy as np

from edgeseg.errors import SourceError
from edgeseg.sources.base import Source, SourceOptions
from edgeseg.sources.fsnames import opencv_name_problem, printable_name
from edgeseg.sources.images import to_bgr8
from edgeseg.sources.opencv_logs import quiet_opencv_logs
from edgeseg.sources.uri import mask_credentials, split_scheme
from edgeseg.structures import Frame

logger = logging.getLogger(__name__)

#: Backoff growth factor between failed attempts.
BACKOFF_FACTOR = 2.0
#: Milliseconds per second, for OpenCV's millisecond timeouts.
MS_PER_S = 1000
#: Capture format a CSI camera gets where the options leave it at 0 (IMX219/IMX477 modes).
CSI_DEFAULT_WIDTH = 1280
CSI_DEFAULT_HEIGHT = 720
CSI_DEFAULT_FPS = 30
#: Environment variable through which OpenCV passes options to FFmpeg's ``avformat_open_input``.
FFMPEG_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
#: RTSP over TCP: UDP loses packets on Wi-Fi and across NAT, which shows as smeared frames.
FFMPEG_RTSP_TCP = "rtsp_transport;tcp"

_V4L2_DEVICE = re.compile(r"^/dev/video\d+$")
_GSTREAMER_LINE = re.compile(r"^\s*GStreamer:\s*(\S+)", re.MULTILINE)


def _passed(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


class Backoff:
    """Delays for successive failed attempts: initial, doubled each time, capped at maximum."""

    def __init__(self, initial_s: float, maximum_s: float) -> None:
        self._initial = initial_s
        self._maximum = maximum_s
        self._current = initial_s

    def next_delay(self) -> float:
        """The wait before the next attempt; each call doubles the following one."""
        delay = self._current
        self._current = min(self._current * BACKOFF_FACTOR, self._maximum)
        return delay

    def reset(self) -> None:
        """Back to the initial delay, after the stream delivered a frame again."""
        self._current = self._initial


class LiveSource(Source):
    """A capture that is reopened with backoff whenever it fails to open or stops delivering.

    Subclasses say only how to open the capture (``_open_capture``).
    """

    USAGE: ClassVar[str] = ""
    live = True

    def __init__(self, uri: str, options: SourceOptions) -> None:
        """Nothing is opened here: the first ``read`` connects, within its own timeout."""
        quiet_opencv_logs()
        self.uri = uri
        self._safe_uri = printable_name(mask_credentials(uri))
        self._options = options
        self._backoff = Backoff(options.reconnect_initial_s, options.reconnect_max_s)
        self._cap: cv2.VideoCapture | None = None
        self._lock = threading.Lock()  # held while the capture is opened, read or released
        self._closed = threading.Event()
        self._next_attempt = 0.0  # time.monotonic() at which the next open may start
        self._attempts = 0
        self._next_id = 0

    @abc.abstractmethod
    def _open_capture(self) -> cv2.VideoCapture:
        """A new capture for this source; it may be unopened (``isOpened()`` False)."""

    @property
    def reconnects(self) -> int:
        """Open attempts after the first one, whether they succeeded or not."""
        return max(self._attempts - 1, 0)

    @property
    def connected(self) -> bool:
        """True while a capture is open."""
        return self._cap is not None

    def read(self, timeout: float | None = None) -> Frame | None:
        """The next frame; ``None`` when none came within ``timeout`` or after ``close()``.

        Reconnects as needed and never raises for a failed open or a dropped stream.
        """
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        with self._lock:
            frame = self._read_locked(deadline)
        if self._closed.is_set():
            self._release_if_idle()
        return frame

    def close(self) -> None:
        """Stop waiting and release the capture; a ``read`` in another thread returns None.

        If that ``read`` is inside OpenCV at this moment, it releases the capture itself when
        OpenCV returns (within ``read_timeout_s``): releasing under it would crash.
        """
        self._closed.set()
        self._release_if_idle()

    def _release_if_idle(self) -> None:
        if self._lock.acquire(blocking=False):
            try:
                self._release()
            finally:
                self._lock.release()

    def _release(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def _read_locked(self, deadline: float | None) -> Frame | None:
        while not self._closed.is_set():
            if self._cap is None:
                if not self._wait_for_attempt(deadline):
                    return None
                self._connect()
                if self._cap is None and _passed(deadline):
                    return None
                continue
            ok, image = self._cap.read()
            timestamp = time.time()
            if self._closed.is_set():
                return None
            if ok and image is not None:
                self._backoff.reset()
                return self._frame(image, timestamp)
            self._release()
            self._schedule_retry("stream dropped (no frame within the read timeout or end of stream)")
            if _passed(deadline):
                return None
        return None

    def _frame(self, image: np.ndarray, timestamp: float) -> Frame:
        try:
            bgr = to_bgr8(image)
        except ValueError as exc:
            raise SourceError(f"{self._safe_uri}: {exc}") from exc
        frame = Frame(image=bgr, frame_id=self._next_id, source=self._safe_uri, timestamp=timestamp)
        self._next_id += 1
        return frame

    def _wait_for_attempt(self, deadline: float | None) -> bool:
        """Wait out the backoff, but not past ``deadline`` nor past ``close()``.

        True when an attempt may start now.
        """
        now = time.monotonic()
        wait = self._next_attempt - now
        if wait > 0:
            if deadline is not None:
                wait = min(wait, deadline - now)
            if wait > 0:
                self._closed.wait(wait)
            if self._closed.is_set() or time.monotonic() < self._next_attempt:
                return False
        return not self._closed.is_set()

    def _connect(self) -> None:
        self._attempts += 1
        try:
            cap = self._open_capture()
        except cv2.error as exc:
            self._schedule_retry(f"cannot open ({str(exc).strip().splitlines()[-1]})")
            return
        if not cap.isOpened():
            cap.release()
            self._schedule_retry("cannot open")
            return
        self._cap = cap
        if self._attempts > 1:
            logger.info("%s: reconnected after %d attempt(s)", self._safe_uri, self.reconnects)

    def _schedule_retry(self, reason: str) -> None:
        delay = self._backoff.next_delay()
        self._next_attempt = time.monotonic() + delay
        logger.warning(
            "%s: %s; retrying in %.2f s (attempt %d)",
            self._safe_uri, printable_name(mask_credentials(reason)), delay, self._attempts + 1,
        )


class V4L2Source(LiveSource):
    """A V4L2 camera (USB webcam, or a CSI sensor exposed through V4L2)."""

    USAGE: ClassVar[str] = (
        "  v4l2:///dev/video0 | /dev/video0     V4L2 camera; width/height/fps options apply when set"
    )

    def __init__(self, uri: str, options: SourceOptions) -> None:
        """Accepts ``v4l2:///dev/videoN``, ``v4l2://N`` and a plain ``/dev/videoN``."""
        super().__init__(uri, options)
        _, rest = split_scheme(uri)
        self.device = f"/dev/video{rest}" if rest.isdigit() else rest
        if not _V4L2_DEVICE.match(self.device):
            raise SourceError(f"{uri}: expected a V4L2 device like v4l2:///dev/video0")

    def _open_capture(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(self.device, cv2.CAP_V4L2)
        if cap.isOpened():
            for prop, value in (
                (cv2.CAP_PROP_FRAME_WIDTH, self._options.width),
                (cv2.CAP_PROP_FRAME_HEIGHT, self._options.height),
                (cv2.CAP_PROP_FPS, self._options.fps),
            ):
                if value:
                    cap.set(prop, value)
        return cap


def opencv_has_gstreamer(build_information: str | None = None) -> bool:
    """True when OpenCV was built with GStreamer (JetPack's is; the PyPI wheels are not)."""
    info = cv2.getBuildInformation() if build_information is None else build_information
    match = _GSTREAMER_LINE.search(info)
    return match is not None and match.group(1).upper().startswith("YES")


def csi_pipeline(sensor_id: int, width: int, height: int, fps: int) -> str:
    """The GStreamer pipeline for a Jetson CSI camera, ending in a BGR appsink.

    nvarguscamerasrc delivers NV12 in NVMM (GPU) memory; nvvidconv converts it to BGRx in system
    memory on the VIC, and videoconvert drops the x. ``drop=1 max-buffers=1`` keeps only the
    newest frame, as a live source should.
    """
    return (
        f"nvarguscamerasrc sensor-id={sensor_id} ! "
        f"video/x-raw(memory:NVMM), width=(int){width}, height=(int){height}, "
        f"framerate=(fraction){fps}/1, format=(string)NV12 ! "
        "nvvidconv ! video/x-raw, format=(string)BGRx ! "
        "videoconvert ! video/x-raw, format=(string)BGR ! "
        "appsink drop=1 max-buffers=1"
    )


class CSISource(LiveSource):
    """A MIPI CSI camera on Jetson, through nvarguscamerasrc."""

    USAGE: ClassVar[str] = (
        "  csi://0                              Jetson CSI camera N (needs JetPack's OpenCV with GStreamer)"
    )

    def __init__(self, uri: str, options: SourceOptions) -> None:
        """Raises ``SourceError`` where OpenCV has no GStreamer: no retry can fix that."""
        super().__init__(uri, options)
        _, rest = split_scheme(uri)
        if not rest.isdigit():
            raise SourceError(f"{uri}: expected a CSI sensor number like csi://0")
        if not opencv_has_gstreamer():
            raise SourceError(
                f"{uri}: CSI cameras need JetPack's OpenCV with GStreamer; this OpenCV "
                f"{cv2.__version__} has no GStreamer (the PyPI wheel never has)"
            )
        self.pipeline = csi_pipeline(
            int(rest),
            options.width or CSI_DEFAULT_WIDTH,
            options.height or CSI_DEFAULT_HEIGHT,
            options.fps or CSI_DEFAULT_FPS,
        )

    def _open_capture(self) -> cv2.VideoCapture:
        return cv2.VideoCapture(self.pipeline, cv2.CAP_GSTREAMER)


class NetworkStreamSource(LiveSource):
    """An RTSP stream or an HTTP(S) MJPEG stream, through OpenCV's FFmpeg backend."""

    USAGE: ClassVar[str] = (
        "  rtsp://[user:pass@]host[:port]/path  RTSP stream (over TCP), reconnects with backoff\n"
        "  http(s)://host[:port]/path           MJPEG stream over HTTP(S), reconnects with backoff"
    )

    def __init__(self, uri: str, options: SourceOptions) -> None:
        """Refuses at once (``SourceError``) a URI OpenCV cannot take; no retry can fix that."""
        super().__init__(uri, options)
        problem = opencv_name_problem(uri)
        if problem is not None:
            raise SourceError(mask_credentials(problem))  # the password stays out of the message
        self._cv_uri = uri

    def _open_capture(self) -> cv2.VideoCapture:
        scheme, _ = split_scheme(self.uri)
        if scheme in ("rtsp", "rtsps") and FFMPEG_OPTIONS_ENV not in os.environ:
            # OpenCV reads this at every open; a value the user set is left alone.
            os.environ[FFMPEG_OPTIONS_ENV] = FFMPEG_RTSP_TCP
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self._options.open_timeout_s * MS_PER_S),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self._options.read_timeout_s * MS_PER_S),
        ]
        return cv2.VideoCapture(self._cv_uri, cv2.CAP_FFMPEG, params)
