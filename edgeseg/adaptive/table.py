"""The resolution-performance table: what inference costs at each input size, here and now.

Each size has a *relative cost* (its shape on the curve, in arbitrary units) and, once it has
run, a moving average of the inference latency measured at it. The shape comes from the
bundle's manifest (each engine's latency measured at export) or, without a manifest, from the
pixel count (cost proportional to size squared, which the yolov8n-seg CPU timings follow within
a few per cent). A prediction for another size scales the *current* size's measurement by the
ratio of costs:

    predicted_ms(s) = measured_ms(current) * cost(s) / cost(current)

so every row follows the load the current size sees right now. A size's own last measurement is
shown but not used for predictions: it was taken under whatever load there was when it last ran,
and a CPU hog that has since ended would keep a stale value from ever fitting again.

The shape itself is not learnt online. Two sizes are never measured at the same moment, so a
ratio taken across a switch mixes the cost of the sizes with whatever the load did meanwhile,
and a switch is typically taken exactly when the load changes (tried: one hog-disturbed switch
bent the curve enough that the picker never stepped back up). A shape error shifts the decisions
by that error; the picker's hysteresis and its back-off after a failed step up contain it.

With ``workers`` inference threads running frames concurrently the pipeline can finish a frame
every ``latency / workers``: ``frame_ms`` is that figure.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class TableRow:
    """One size of the table, as the dashboard shows it.

    Attributes:
        size: input size (the larger side), pixels.
        seed_ms: the manifest's median latency for this size; None when not in a manifest.
        measured_ms: moving average of the inference latency measured here (the last value
            while this size ran); None until it has run.
        samples: measurements taken at this size.
        last_measured: monotonic time of the last measurement, or None.
        relative_cost: the size's cost relative to the smallest size (the curve's shape).
        predicted_ms: predicted inference latency at this size under the current load, or None
            before any measurement.
    """

    size: int
    seed_ms: Optional[float]
    measured_ms: Optional[float]
    samples: int
    last_measured: Optional[float]
    relative_cost: float
    predicted_ms: Optional[float]

    def as_dict(self) -> dict[str, object]:
        def r(x: Optional[float]) -> Optional[float]:
            return None if x is None else round(x, 2)

        return {
            "size": self.size, "seed_ms": r(self.seed_ms), "measured_ms": r(self.measured_ms),
            "samples": self.samples, "relative_cost": round(self.relative_cost, 3),
            "predicted_ms": r(self.predicted_ms),
        }


def seed_costs(sizes: Iterable[int], seed_ms: Mapping[int, float]) -> dict[int, float]:
    """Relative cost per size: the manifest's latency where known, else area-scaled from the nearest known."""
    sizes = sorted(set(sizes))
    known = {s: ms for s, ms in seed_ms.items() if s in sizes and ms > 0}
    costs: dict[int, float] = {}
    for s in sizes:
        if s in known:
            costs[s] = known[s]
        elif known:
            near = min(known, key=lambda k: (abs(k - s), k))
            costs[s] = known[near] * (s / near) ** 2
        else:
            costs[s] = float(s * s)
    return costs


class ResolutionTable:
    """Seeded costs, measured latencies and predictions per input size; thread-safe.

    Args:
        sizes: the input sizes of the ladder.
        seed_ms: latency per size from the manifest (any subset; empty: area scaling).
        alpha: weight of the newest measurement in each size's moving average.
        workers: inference threads running frames concurrently.
    """

    def __init__(self, sizes: Iterable[int], seed_ms: Mapping[int, float] | None = None, alpha: float = 0.1,
                 workers: int = 1):
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha {alpha}: expected 0 < alpha <= 1")
        if workers < 1:
            raise ValueError(f"workers {workers}: expected >= 1")
        self.sizes = tuple(sorted(set(sizes)))
        if not self.sizes:
            raise ValueError("a resolution table needs at least one size")
        self.alpha = alpha
        self.workers = workers
        self._seed_ms = {s: float(ms) for s, ms in (seed_ms or {}).items() if s in self.sizes}
        self._cost = seed_costs(self.sizes, self._seed_ms)
        self._measured: dict[int, float] = {}
        self._sums: dict[int, float] = {}
        self._weights: dict[int, float] = {}
        self._samples: dict[int, int] = {}
        self._last: dict[int, float] = {}
        self._current: int | None = None
        self._lock = threading.Lock()

    def observe(self, size: int, infer_ms: float, now: float) -> None:
        """Fold one measured inference latency at ``size`` into its moving average."""
        if size not in self._cost or not math.isfinite(infer_ms) or infer_ms < 0:
            return
        with self._lock:
            # Bias-corrected: a plain mean of the first samples, then exponential forgetting.
            a = self.alpha
            self._sums[size] = (1 - a) * self._sums.get(size, 0.0) + a * infer_ms
            self._weights[size] = (1 - a) * self._weights.get(size, 0.0) + a
            self._measured[size] = self._sums[size] / self._weights[size]
            self._samples[size] = self._samples.get(size, 0) + 1
            self._last[size] = now
            self._current = size

    def restart(self, size: int) -> None:
        """Start a new visit to ``size``: its next measurement replaces the average.

        The last visit's average stays on show until then; it was measured under that visit's
        load and must not be blended into this one's (predictions are scaled from it).
        """
        with self._lock:
            self._sums.pop(size, None)
            self._weights.pop(size, None)

    def measured_ms(self, size: int) -> float | None:
        with self._lock:
            return self._measured.get(size)

    def predict_ms(self, size: int, current: int | None = None) -> float | None:
        """Inference latency at ``size`` under the load ``current`` (default: the size measured last) sees now."""
        with self._lock:
            return self._predict(size, current)

    def _predict(self, size: int, current: int | None) -> float | None:
        ref = self._current if current is None else current
        if ref is None or ref not in self._measured or size not in self._cost:
            return self._seed_ms.get(size)
        return self._measured[ref] * self._cost[size] / self._cost[ref]

    def frame_ms(self, size: int, current: int | None = None) -> float | None:
        """Time per frame that inference at ``size`` allows with all workers busy."""
        ms = self.predict_ms(size, current)
        return None if ms is None else ms / self.workers

    def rows(self) -> list[TableRow]:
        """The table, smallest size first."""
        with self._lock:
            smallest = self._cost[self.sizes[0]]
            return [
                TableRow(s, self._seed_ms.get(s), self._measured.get(s), self._samples.get(s, 0), self._last.get(s),
                         self._cost[s] / smallest, self._predict(s, None))
                for s in self.sizes
            ]
