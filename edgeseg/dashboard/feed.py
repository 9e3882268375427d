"""The dashboard's sink: the newest frame result, encoded for viewers only when there are any.

``write`` runs in the pipeline's output thread, so it does the least possible: it keeps a
reference to the newest ``FrameResult``, adds its class ids to the running totals and records
its latency (a few microseconds). Drawing (``annotate``), scaling and JPEG encoding happen in the
HTTP thread of a viewer that asks for a frame, at that viewer's pace: with no viewer connected no
frame is ever drawn or encoded, and a slow viewer simply skips frames. Two viewers asking for the
same frame share one encoding.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Any, Final, Literal

import cv2
import numpy as np
import numpy.typing as npt

from edgeseg.config.dashboard import DashboardConfig
from edgeseg.sinks.annotate import PALETTE_HEX, annotate
from edgeseg.sinks.base import Sink
from edgeseg.structures import FrameResult, ImageArray

View = Literal["result", "input"]
VIEWS: Final[tuple[View, ...]] = ("result", "input")
"""What a stream shows: the annotated result, or the captured frame as it came in."""
LATENCY_HISTORY: Final = 1024
"""Per-frame latency samples kept for the chart (a few seconds at high frame rates)."""
DEFAULT_JPEG_QUALITY: Final = 75
DEFAULT_MAX_WIDTH: Final = 960


class DashboardSink(Sink):
    """Keeps the newest frame result for the dashboard; encodes it lazily for viewers.

    Args:
        jpeg_quality: quality of the encoded frames, 10..100.
        max_width: frames wider than this are scaled down before encoding; 0 keeps full size.
    """

    def __init__(self, jpeg_quality: int = DEFAULT_JPEG_QUALITY, max_width: int = DEFAULT_MAX_WIDTH):
        if not 10 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 10..100, got {jpeg_quality}")
        if max_width < 0:
            raise ValueError(f"max_width must be >= 0, got {max_width}")
        self.jpeg_quality = jpeg_quality
        self.max_width = max_width
        self._cond = threading.Condition(threading.Lock())
        self._latest: FrameResult | None = None
        self._seq = 0
        self._closed = False
        self._class_names: tuple[str, ...] = ()
        self._totals: npt.NDArray[np.int64] = np.zeros(0, np.int64)
        # (seq, end-to-end ms from capture to this sink, inference ms)
        self._latency: deque[tuple[int, float, float]] = deque(maxlen=LATENCY_HISTORY)
        self._encode_lock = threading.Lock()
        self._encoded: dict[View, tuple[int, bytes]] = {}
        self._viewers = 0
        #: Frames drawn and encoded so far (the cost a viewer adds; zero while nobody watches).
        self.encodes = 0

    @classmethod
    def from_config(cls, config: DashboardConfig) -> DashboardSink:
        """The sink with the stream settings of the ``dashboard`` config section."""
        return cls(jpeg_quality=config.jpeg_quality, max_width=config.stream_max_width)

    def retune(self, jpeg_quality: int, max_width: int) -> None:
        """New stream settings (a reload), from the next frame a viewer gets; the frames, counts
        and latency history so far are kept."""
        if not 10 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 10..100, got {jpeg_quality}")
        if max_width < 0:
            raise ValueError(f"max_width must be >= 0, got {max_width}")
        with self._encode_lock:
            if (jpeg_quality, max_width) != (self.jpeg_quality, self.max_width):
                self.jpeg_quality, self.max_width = jpeg_quality, max_width
                self._encoded.clear()  # encoded with the old settings

    # -- the pipeline side ------------------------------------------------------------------------

    def write(self, result: FrameResult) -> None:
        age_ms = (time.time() - result.frame.timestamp) * 1e3
        infer_ms = float(result.latency_ms.get("infer", 0.0))
        instances = result.instances
        with self._cond:
            if instances.class_names != self._class_names:
                self._class_names = instances.class_names
                self._totals = np.zeros(len(self._class_names), np.int64)
            if len(instances):
                self._totals += np.bincount(instances.class_ids, minlength=len(self._totals))
            self._latest = result
            self._seq += 1
            self._latency.append((self._seq, age_ms, infer_ms))
            self._cond.notify_all()

    def close(self) -> None:
        """Ends every viewer's stream; idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- the viewer side --------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def seq(self) -> int:
        """How many results have been written (the number of the newest one)."""
        return self._seq

    @property
    def viewers(self) -> int:
        return self._viewers

    def add_viewer(self) -> None:
        with self._cond:
            self._viewers += 1

    def remove_viewer(self) -> None:
        with self._cond:
            self._viewers = max(0, self._viewers - 1)

    def wait_newer(self, after_seq: int, timeout: float) -> tuple[int, FrameResult] | None:
        """The newest result once its number exceeds ``after_seq``; None on timeout or close."""
        with self._cond:
            self._cond.wait_for(lambda: self._seq > after_seq or self._closed, timeout)
            if self._seq <= after_seq or self._latest is None:
                return None
            return self._seq, self._latest

    def next_jpeg(self, after_seq: int, view: View = "result", timeout: float = 1.0) -> tuple[int, bytes] | None:
        """The newest frame as JPEG once newer than ``after_seq``: (its number, the bytes).

        None on timeout or once closed. Called from a viewer's thread, never the pipeline's.
        """
        newest = self.wait_newer(after_seq, timeout)
        if newest is None:
            return None
        seq, result = newest
        with self._encode_lock:
            cached = self._encoded.get(view)
            if cached is not None and cached[0] >= seq:
                return cached
            jpeg = self.encode(result, view)
            self._encoded[view] = (seq, jpeg)
            self.encodes += 1
            return seq, jpeg

    def encode(self, result: FrameResult, view: View = "result") -> bytes:
        """``result`` drawn (or not, for "input"), scaled to ``max_width`` and JPEG-encoded."""
        drawn: ImageArray = annotate(result.frame.image, result.instances) if view == "result" else result.frame.image
        image: npt.NDArray[Any] = drawn
        width = image.shape[1]
        if self.max_width and width > self.max_width:
            height = max(1, round(image.shape[0] * self.max_width / width))
            image = cv2.resize(image, (self.max_width, height), interpolation=cv2.INTER_AREA)
        ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:  # pragma: no cover - OpenCV fails only on an empty or invalid image
            raise ValueError(f"JPEG encoding failed for frame {result.frame.frame_id}")
        return buffer.tobytes()

    def latency_since(self, after_seq: int, limit: int = 120) -> list[tuple[int, float, float]]:
        """Up to ``limit`` newest (seq, end-to-end ms, inference ms) samples after ``after_seq``."""
        with self._cond:
            samples = [s for s in self._latency if s[0] > after_seq]
        return samples[-limit:]

    def counts(self) -> dict[str, Any]:
        """Instances per class in the newest frame and in every frame so far, most frequent first.

        ``{"frames": n, "classes": [{"id", "name", "color", "frame", "total"}, ...]}``, with the
        class's colour as drawn on the stream (``#RRGGBB``).
        """
        with self._cond:
            latest = self._latest
            totals = self._totals.copy()
            names = self._class_names
            frames = self._seq
        in_frame: Counter[int] = Counter()
        if latest is not None:
            in_frame.update(int(c) for c in latest.instances.class_ids)
        ids = sorted(set(np.flatnonzero(totals).tolist()) | set(in_frame), key=lambda i: (-int(totals[i]), i))
        classes = [
            {"id": i, "name": names[i], "color": PALETTE_HEX[i % len(PALETTE_HEX)],
             "frame": in_frame.get(i, 0), "total": int(totals[i])}
            for i in ids
        ]
        return {"frames": frames, "classes": classes}

    def frame_info(self) -> dict[str, Any] | None:
        """What the newest frame is: id, name, source, sizes, instance count, stage latencies."""
        latest = self._latest
        if latest is None:
            return None
        frame = latest.frame
        return {
            "seq": self._seq,
            "frame_id": int(frame.frame_id),
            "name": frame.name,
            "source": frame.source,
            "timestamp": round(float(frame.timestamp), 3),
            "image_size": list(frame.size),
            "resolution": [int(v) for v in latest.resolution],
            "model": latest.model,
            "instances": len(latest.instances),
            "latency_ms": {str(k): round(float(v), 2) for k, v in latest.latency_ms.items()},
        }
