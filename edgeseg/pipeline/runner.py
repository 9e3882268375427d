"""The pipeline: capture, inference and output threads joined by double buffers.

    source ─► [capture: read + preprocess] ═► [inference: backend] ═► [output: decode +
    postprocess + sinks]          (═► is a DoubleBuffer)

The inference stage may run several workers (``inference_workers``), each with its own share of
the backend (ONNX Runtime sessions are safe to call from several threads; TensorRT gets one
execution context per worker), so that one frame's inference overlaps the next. The output
thread puts their results back into the order in which the workers took the frames.

Live sources feed the first buffer in newest-only mode (drops counted); files and folders, and
the second buffer always, are lossless. ``stop()`` ends capture; the frames already in flight
are inferred, written and flushed before ``join`` returns, which is what SIGINT/SIGTERM call.
A fatal error in any stage closes both buffers so every thread ends, and ``join`` re-raises it.

Every stage thread stamps a heartbeat each time round its loop, at least every POLL_S while it
waits; ``stalled()`` names the threads stuck inside a call (a hung inference, a sink blocked on a
dead disk), which is what the service's watchdog looks at.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Callable

from edgeseg.errors import SinkError
from edgeseg.pipeline import priority
from edgeseg.pipeline.double_buffer import DoubleBuffer
from edgeseg.pipeline.processor import FrameProcessor, Work
from edgeseg.pipeline.stats import StageTimes
from edgeseg.sinks.base import Sink
from edgeseg.sources.base import Source
from edgeseg.structures import Frame, FrameResult

log = logging.getLogger(__name__)

#: How often blocked threads wake to check for a stop request, seconds.
POLL_S = 0.2

ResultCallback = Callable[[FrameResult], None]


@dataclass
class Counters:
    """What the pipeline has done so far (read by the CLI, bench and the monitor)."""

    captured: int = 0
    processed: int = 0
    instances: int = 0
    sink_errors: int = 0
    started: float = field(default_factory=time.perf_counter)
    finished: float | None = None

    @property
    def elapsed_s(self) -> float:
        return (self.finished or time.perf_counter()) - self.started

    @property
    def fps(self) -> float:
        return self.processed / self.elapsed_s if self.elapsed_s > 0 else 0.0


def write_to_sinks(result: FrameResult, sinks: Sequence[Sink], failed: set[int], counters: Counters) -> None:
    """Write one result to every sink; a failing sink is logged once and the others go on."""
    for i, sink in enumerate(sinks):
        try:
            sink.write(result)
        except SinkError as exc:
            counters.sink_errors += 1
            if i not in failed:
                failed.add(i)
                log.error("%s (further errors of this sink are counted, not logged)", exc)


class Pipeline:
    """Three stage threads over one source, one FrameProcessor and any number of sinks.

    Args:
        source: where frames come from.
        processor: the per-frame work.
        sinks: where results go, in order.
        max_frames: stop capturing after this many frames (0: until the source ends).
        inference_priority: raise the inference threads and lower the other two.
        on_result: called in the output thread after the sinks, for every result.
        inference_workers: threads running the backend concurrently (1 keeps the classic
            three-thread pipeline).
    """

    def __init__(
        self,
        source: Source,
        processor: FrameProcessor,
        sinks: Sequence[Sink] = (),
        max_frames: int = 0,
        inference_priority: bool = True,
        on_result: ResultCallback | None = None,
        inference_workers: int = 1,
    ):
        if inference_workers < 1:
            raise ValueError("inference_workers must be >= 1")
        self.source = source
        self.processor = processor
        self.sinks = list(sinks)
        self.max_frames = max_frames
        self.inference_priority = inference_priority
        self.on_result = on_result
        self.times = StageTimes()
        self.counters = Counters()
        self._to_infer: DoubleBuffer[Work] = DoubleBuffer(newest_only=source.live, on_drop=processor.release)
        self._to_output: DoubleBuffer[Work] = DoubleBuffer()
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._error: BaseException | None = None
        self._failed_sinks: set[int] = set()
        self._take_lock = threading.Lock()
        self._next_seq = 0
        self._workers_left = inference_workers
        self._heartbeats: dict[str, float] = {}
        self._threads = [
            threading.Thread(target=self._guard, args=(self._capture_loop,), name="edgeseg-capture", daemon=True),
            *(
                threading.Thread(target=self._guard, args=(self._inference_loop,), name=f"edgeseg-inference-{i}",
                                 daemon=True)
                for i in range(inference_workers)
            ),
            threading.Thread(target=self._guard, args=(self._output_loop,), name="edgeseg-output", daemon=True),
        ]

    @property
    def drops(self) -> int:
        """Frames dropped because the live source outpaced inference."""
        return self._to_infer.drops

    def start(self) -> None:
        self.counters = Counters()
        now = time.monotonic()
        for t in self._threads:
            self._heartbeats[t.name] = now
            t.start()

    def _beat(self) -> None:
        self._heartbeats[threading.current_thread().name] = time.monotonic()

    def stalled(self, max_age_s: float) -> list[str]:
        """Live stage threads that have not come round their loop for ``max_age_s`` seconds."""
        now = time.monotonic()
        return [t.name for t in self._threads if t.is_alive() and now - self._heartbeats.get(t.name, now) > max_age_s]

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def stop(self) -> None:
        """Stop capturing; frames in flight are still finished and written."""
        self._stop.set()

    def set_paused(self, paused: bool) -> None:
        """Hold capture. Files wait where they are (nothing is skipped); live sources keep being
        read and their frames discarded, so that resuming shows the present, not a stale buffer."""
        if paused:
            self._paused.set()
        else:
            self._paused.clear()

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the threads; True once all ended. Re-raises a stage's fatal error."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            t.join(remaining)
        done = not any(t.is_alive() for t in self._threads)
        if done and self.counters.finished is None:
            self.counters.finished = time.perf_counter()
        if done and self._error is not None:
            raise self._error
        return done

    def run(self) -> Counters:
        """Start, wait until the source ends (or ``stop``), and return the counters."""
        self.start()
        while not self.join(POLL_S):
            pass
        return self.counters

    # -- stage threads ---------------------------------------------------------------------

    def _guard(self, loop: Callable[[], None]) -> None:
        try:
            loop()
        except BaseException as exc:  # any stage failure ends the whole pipeline, reported by join
            if self._error is None:
                self._error = exc
            self._stop.set()
            self._to_infer.close()
            self._to_output.close()

    def _capture_loop(self) -> None:
        if self.inference_priority:
            priority.lower_current_thread()
        try:
            while not self._stop.is_set():
                self._beat()
                if self.max_frames and self.counters.captured >= self.max_frames:
                    break
                if self._paused.is_set():
                    if self.source.live:
                        self.source.read(timeout=POLL_S)
                    else:
                        self._stop.wait(POLL_S)
                    continue
                t0 = time.perf_counter()
                frame = self.source.read(timeout=POLL_S)
                if frame is None:
                    if self.source.exhausted:
                        break
                    continue
                capture_ms = (time.perf_counter() - t0) * 1e3
                work = self._prepare(frame)
                if work is None:
                    return
                work.latency_ms["capture"] = capture_ms
                self.counters.captured += 1
                if not self._to_infer.put(work):
                    self.processor.release(work)
                    return
        finally:
            self._to_infer.close()

    def _prepare(self, frame: Frame) -> Work | None:
        """Preprocess into a pooled tensor, waiting while downstream still holds all of them.

        Downstream keeps draining even after ``stop()``, so the wait ends unless a stage failed.
        """
        while self._error is None:
            self._beat()
            work = self.processor.prepare(frame, timeout=POLL_S)
            if work is not None:
                return work
        return None

    def _take(self) -> Work | None:
        """The next frame for an inference worker, numbered in the order workers take them."""
        while True:
            self._beat()
            with self._take_lock:
                work = self._to_infer.get(timeout=POLL_S)
                if work is not None:
                    work.seq = self._next_seq
                    self._next_seq += 1
                    return work
                if self._to_infer.closed_and_empty:
                    return None

    def _inference_loop(self) -> None:
        if self.inference_priority:
            priority.raise_current_thread()
        try:
            while True:
                work = self._take()
                if work is None:
                    return
                self.processor.infer(work)
                if not self._to_output.put(work):
                    return
        finally:
            with self._take_lock:
                self._workers_left -= 1
                last = self._workers_left == 0
            if last:
                self._to_output.close()

    def _in_order(self) -> Iterator[Work]:
        """Inferred frames in the order the workers took them (at most workers - 1 held back)."""
        pending: dict[int, Work] = {}
        expected = 0
        while True:
            self._beat()
            work = self._to_output.get(timeout=POLL_S)
            if work is None:
                if self._to_output.closed_and_empty:
                    break
                continue
            pending[work.seq] = work
            while expected in pending:
                yield pending.pop(expected)
                expected += 1
        yield from (pending[k] for k in sorted(pending))  # only after a failure left a gap

    def _output_loop(self) -> None:
        if self.inference_priority:
            priority.lower_current_thread()
        for work in self._in_order():
            result = self.processor.finish(work)
            t0 = time.perf_counter()
            write_to_sinks(result, self.sinks, self._failed_sinks, self.counters)
            result.latency_ms["sink"] = (time.perf_counter() - t0) * 1e3
            self.times.add(result.latency_ms)
            self.counters.processed += 1
            self.counters.instances += len(result.instances)
            if self.on_result is not None:
                self.on_result(result)
        write_end_events(self.processor, self.sinks, self._failed_sinks, self.counters)


def write_end_events(processor: FrameProcessor, sinks: Sequence[Sink], failed: set[int], counters: Counters) -> None:
    """The run is over (source ended, or stopped and drained): the events still open end, once,
    through every sink that publishes events; a failing sink is counted as for frames."""
    events = processor.finish_analytics()
    if not events:
        return
    for i, sink in enumerate(sinks):
        try:
            sink.write_events(events)
        except SinkError as exc:  # as write_to_sinks: one sink's failure does not stop the others
            counters.sink_errors += 1
            if i not in failed:
                failed.add(i)
                log.error("%s (further errors of this sink are counted, not logged)", exc)


def run_sequential(
    source: Source,
    processor: FrameProcessor,
    sinks: Sequence[Sink] = (),
    max_frames: int = 0,
    on_result: ResultCallback | None = None,
) -> tuple[Counters, StageTimes]:
    """The same work as Pipeline, one frame at a time in the calling thread (the baseline)."""
    times, counters = StageTimes(), Counters()
    failed: set[int] = set()
    while not max_frames or counters.processed < max_frames:
        t0 = time.perf_counter()
        frame = source.read(timeout=POLL_S)
        if frame is None:
            if source.exhausted:
                break
            continue
        capture_ms = (time.perf_counter() - t0) * 1e3
        work = processor.prepare(frame)
        assert work is not None  # no timeout: the pool is never exhausted in one thread
        work.latency_ms["capture"] = capture_ms
        result = processor.finish(processor.infer(work))
        t1 = time.perf_counter()
        write_to_sinks(result, sinks, failed, counters)
        result.latency_ms["sink"] = (time.perf_counter() - t1) * 1e3
        times.add(result.latency_ms)
        counters.captured += 1
        counters.processed += 1
        counters.instances += len(result.instances)
        if on_result is not None:
            on_result(result)
    write_end_events(processor, sinks, failed, counters)
    counters.finished = time.perf_counter()
    return counters, times
