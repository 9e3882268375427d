"""One camera inside a pipeline: its source, hand-off buffers, counters and status.

A pipeline serves one or more cameras. Each has its own capture thread and output thread and
two buffers of its own (``to_infer``: newest-only for a live camera, lossless for a file;
``to_output``: lossless); only the inference stage and the shared sinks are common. So a camera
that stalls, reconnects or floods fills or starves only its own buffers, and the inference
stage takes from every camera in turn (``edgeseg.pipeline.gather``).

``CameraLane`` is the pipeline's private record of a camera; ``CameraStats`` is what it shows of
it (the daemon's status line, ``/metrics``, the dashboard, ``edgeseg run``'s summary).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, List, Optional

from edgeseg.pipeline.double_buffer import DoubleBuffer
from edgeseg.pipeline.processor import CameraSetup, Work
from edgeseg.sinks.base import Sink
from edgeseg.sources.base import Source

#: The window over which a camera's recent frame rate is measured, seconds.
FPS_WINDOW_S = 5.0


@dataclass(frozen=True)
class CameraStats:
    """What a camera has done so far, as the daemon, /metrics and the dashboard show it.

    Attributes:
        name: the camera's name.
        uri: its source, credentials masked.
        live: a camera or stream (newest frame kept) rather than a file or folder (lossless).
        online: its stream is delivering (a file: until it ends).
        captured, processed, dropped, skipped: frames read, finished, dropped because inference
            was busy (live only), unreadable items skipped.
        restarts: times the watchdog restarted its capture.
        fps: finished frames per second over the last ``FPS_WINDOW_S`` seconds.
    """

    name: str
    uri: str
    live: bool
    online: bool
    captured: int
    processed: int
    dropped: int
    skipped: int
    restarts: int
    fps: float

    def as_dict(self) -> Dict[str, object]:
        return {
            "name": self.name, "uri": self.uri, "live": self.live, "online": self.online,
            "captured": self.captured, "processed": self.processed, "dropped": self.dropped,
            "skipped": self.skipped, "restarts": self.restarts, "fps": round(self.fps, 2),
        }


class RateMeter:
    """Events per second over a sliding window (finished frames of one camera)."""

    def __init__(self, window_s: float = FPS_WINDOW_S, clock: Callable[[], float] = time.monotonic):
        self.window_s = window_s
        self._clock = clock
        self._times: Deque[float] = deque()
        self._lock = threading.Lock()

    def tick(self) -> None:
        now = self._clock()
        with self._lock:
            self._times.append(now)
            self._trim(now)

    def rate(self) -> float:
        now = self._clock()
        with self._lock:
            self._trim(now)
            if len(self._times) < 2:
                return 0.0
            span = max(now - self._times[0], 1e-6)
            return (len(self._times) - 1) / span if span < self.window_s else len(self._times) / self.window_s

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()


@dataclass(eq=False)
class CameraLane:
    """The pipeline's state of one camera. Written by the camera's own threads; read by anyone.

    Args:
        setup: what the shared processor needs of the camera (name, pool, overrides, analytics).
        source: the opened source.
        uri: the source as shown (credentials masked).
        reopen: opens the source again (a restart by the watchdog); None: cannot be restarted.
        sinks: this camera's own outputs (the pipeline's shared sinks get its results too).
    """

    setup: CameraSetup
    source: Source
    uri: str = ""
    reopen: Optional[Callable[[], Source]] = None
    sinks: List[Sink] = field(default_factory=list)
    to_infer: DoubleBuffer[Work] = field(init=False)
    to_output: DoubleBuffer[Work] = field(init=False)
    captured: int = 0
    processed: int = 0
    instances: int = 0
    restarts: int = 0
    #: Unreadable items of sources this camera closed (restarts), added to the current one's.
    skipped_before: int = 0
    #: None until the first read attempt tells; then whether the stream delivers.
    online: Optional[bool] = None
    #: A fatal error of this camera's source (the camera ended; the others go on).
    error: Optional[BaseException] = None
    #: Raised once the capture thread will put nothing more (source ended, removed, failed).
    capture_done: threading.Event = field(default_factory=threading.Event)
    #: Ask this camera alone to stop capturing (removal); frames in flight are still finished.
    stop: threading.Event = field(default_factory=threading.Event)
    #: Incremented by a restart: a capture thread of an older generation puts nothing more.
    generation: int = 0
    rate: RateMeter = field(default_factory=RateMeter)
    #: Next sequence number for the frames inference workers take (restores the camera's order).
    next_seq: int = 0
    #: Frames of this camera taken by inference workers and not yet handed to its output.
    inflight: int = 0
    threads: List[threading.Thread] = field(default_factory=list)
    failed_sinks: set = field(default_factory=set)

    def __post_init__(self) -> None:
        self.to_infer = DoubleBuffer(newest_only=self.source.live)
        self.to_output = DoubleBuffer()

    @property
    def name(self) -> str:
        return self.setup.name

    def source_close_async(self, source: Optional[Source] = None) -> None:
        """Close a source (the current one by default) in a thread of its own: a source whose
        read hangs may hang its close too, and the caller (reload, watchdog) must not."""
        target = source if source is not None else self.source
        threading.Thread(target=target.close, name=f"edgeseg-close:{self.name}", daemon=True).start()

    @property
    def skipped(self) -> int:
        return self.skipped_before + self.source.skipped

    def stats(self) -> CameraStats:
        return CameraStats(
            name=self.name, uri=self.uri, live=self.source.live, online=bool(self.online),
            captured=self.captured, processed=self.processed, dropped=self.to_infer.drops,
            skipped=self.skipped, restarts=self.restarts, fps=self.rate.rate(),
        )
