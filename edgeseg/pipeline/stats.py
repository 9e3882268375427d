"""Per-stage latency records: what each frame cost, stage by stage.

Every stage of every frame is timed; a bounded window of recent values per stage gives medians
and percentiles (for ``edgeseg bench``, the adaptive picker and the dashboard) without growing
over a months-long run.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

#: Recent samples kept per stage.
WINDOW = 4096

#: Stage names in pipeline order, and the thread each runs in.
STAGES = ("capture", "preprocess", "infer", "decode", "postprocess", "sink")
THREAD_OF_STAGE = {
    "capture": "capture", "preprocess": "capture",
    "infer": "inference",
    "decode": "output", "postprocess": "output", "sink": "output",
}


@dataclass(frozen=True)
class Summary:
    """Latency distribution of one stage, milliseconds."""

    count: int
    median: float
    p90: float
    mean: float

    def as_dict(self) -> dict[str, float]:
        return {"count": self.count, "median_ms": self.median, "p90_ms": self.p90, "mean_ms": self.mean}


class StageTimes:
    """Thread-safe windows of per-stage latencies in milliseconds."""

    def __init__(self, window: int = WINDOW):
        self._lock = threading.Lock()
        self._window = window
        self._samples: dict[str, deque[float]] = {}
        self._totals: dict[str, int] = {}

    def add(self, latency_ms: dict[str, float]) -> None:
        """Record one frame's stage latencies."""
        with self._lock:
            for stage, ms in latency_ms.items():
                samples = self._samples.get(stage)
                if samples is None:
                    samples = self._samples[stage] = deque(maxlen=self._window)
                samples.append(ms)
                self._totals[stage] = self._totals.get(stage, 0) + 1

    def summary(self, stage: str) -> Summary | None:
        with self._lock:
            samples = list(self._samples.get(stage, ()))
        if not samples:
            return None
        a = np.asarray(samples)
        return Summary(len(a), float(np.median(a)), float(np.percentile(a, 90)), float(a.mean()))

    def summaries(self) -> dict[str, Summary]:
        """Summary per recorded stage, in pipeline order, plus the per-thread totals."""
        with self._lock:
            stages = [s for s in STAGES if s in self._samples] + [
                s for s in self._samples if s not in STAGES
            ]
        out = {s: self.summary(s) for s in stages}
        return {k: v for k, v in out.items() if v is not None}
