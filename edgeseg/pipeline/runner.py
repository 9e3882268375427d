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
from typing import TYPE_CHECKING, Callable, Dict, List, Optional

from edgeseg.errors import SinkError, SourceError
from edgeseg.pipeline import priority
from edgeseg.pipeline.cameras import CameraLane, CameraStats
from edgeseg.pipeline.double_buffer import DoubleBuffer
from edgeseg.pipeline.gather import Gatherer
from edgeseg.pipeline.processor import CameraSetup, FrameProcessor, Work
from edgeseg.pipeline.stats import StageTimes
from edgeseg.sinks.base import Sink
from edgeseg.sources.base import Source
from edgeseg.sources.fsnames import printable_name
from edgeseg.sources.uri import mask_credentials
from edgeseg.structures import Frame, FrameResult

if TYPE_CHECKING:
    from edgeseg.analytics.types import Event

log = logging.getLogger(__name__)

#: How often blocked threads wake to check for a stop request, seconds.
POLL_S = 0.2
#: How long the inference stage waits for more cameras' frames once it holds one, ms.
DEFAULT_GATHER_MS = 5.0

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


def write_to_sinks(result: FrameResult, sinks: Sequence[Sink], failed: set[int], counters: Counters,
                   lock: Optional[threading.Lock] = None) -> None:
    """Write one result to every sink; a failing sink is logged once and the others go on.

    ``lock``: taken to count an error (the caller writes outside the lock that guards counters).
    """
    for i, sink in enumerate(sinks):
        try:
            sink.write(result)
        except SinkError as exc:
            _sink_failed(exc, i, failed, counters, lock)


def _sink_failed(exc: SinkError, i: int, failed: set[int], counters: Counters, lock: Optional[threading.Lock]) -> None:
    if lock is not None:
        with lock:
            counters.sink_errors += 1
    else:
        counters.sink_errors += 1
    if i not in failed:
        failed.add(i)
        log.error("%s (further errors of this sink are counted, not logged)", exc)


class Pipeline:
    """Stage threads over one or more cameras, one shared FrameProcessor and any number of sinks.

    Each camera has a capture thread and an output thread of its own; the inference workers are
    shared and take frames from every camera in turn, in batches of up to ``batch`` frames (one
    backend call per batch, see ``edgeseg.pipeline.gather``). One camera's failing source ends
    that camera alone (logged in one line); the pipeline ends when every camera has ended, and
    re-raises a camera's error only when every camera failed (so a single-source run fails as
    before).

    Args:
        source: a single camera's source (the classic form); or None with ``cameras``.
        processor: the per-frame work (model, shared postprocessing settings).
        sinks: where every camera's results go, in order (written one result at a time).
        max_frames: stop capturing after this many frames per camera (0: until the source ends).
        inference_priority: raise the inference threads and lower the others.
        on_result: called after the sinks for every result (under the shared-output lock, so
            it is never called from two cameras' threads at once).
        inference_workers: threads running the backend concurrently.
        cameras: the cameras (``CameraLane``), instead of ``source``.
        batch: most frames per backend call.
        gather_ms: how long the inference stage waits for more cameras' frames once it holds one.
        camera: the single camera's name (the classic form).
    """

    def __init__(
        self,
        source: Optional[Source],
        processor: FrameProcessor,
        sinks: Sequence[Sink] = (),
        max_frames: int = 0,
        inference_priority: bool = True,
        on_result: ResultCallback | None = None,
        inference_workers: int = 1,
        cameras: Sequence[CameraLane] = (),
        batch: int = 1,
        gather_ms: float = DEFAULT_GATHER_MS,
        camera: str = "",
    ):
        if inference_workers < 1:
            raise ValueError("inference_workers must be >= 1")
        if batch < 1:
            raise ValueError("batch must be >= 1")
        if (source is None) == (not cameras):
            raise ValueError("give either a source or cameras")
        self.processor = processor
        self.sinks = list(sinks)
        self.max_frames = max_frames
        self.inference_priority = inference_priority
        self.on_result = on_result
        self.batch = batch
        self.gather_s = gather_ms / 1e3
        self.times = StageTimes()
        self.counters = Counters()
        self._classic = source is not None
        if source is not None:
            setup = CameraSetup(camera, processor.preprocessor, analytics=processor.analytics)
            cameras = [CameraLane(setup, source, uri=printable_name(mask_credentials(getattr(source, "uri", ""))))]
        self._lanes: List[CameraLane] = []  # cameras the inference stage takes from
        self._all: List[CameraLane] = []  # every camera still shown (ended ones too, until removed)
        self._lane_of: Dict[int, CameraLane] = {}
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._error: BaseException | None = None
        self._failed_sinks: set[int] = set()
        self._take_lock = threading.Lock()
        self._inflight_lock = threading.Lock()
        self._out_lock = threading.Lock()
        self._gatherer = Gatherer()
        self._ended = False
        self._started = False
        self._announce_offline = True
        self._workers_left = inference_workers
        #: Frames one camera may have between inference and its output thread: enough for every
        #: worker, and never more than its output buffer holds, so a worker never waits on one
        #: camera's slow output (the others would wait with it).
        self._room = max(1, inference_workers)
        self._heartbeats: dict[str, float] = {}
        self._workers = [
            threading.Thread(target=self._guard, args=(self._inference_loop,), name=f"edgeseg-inference-{i}",
                             daemon=True)
            for i in range(inference_workers)
        ]
        for lane in cameras:
            self._admit(lane)
        self._first = self._all[0]

    # -- cameras ---------------------------------------------------------------------------

    def _thread_name(self, stage: str, lane: CameraLane) -> str:
        return f"edgeseg-{stage}" if self._classic else f"edgeseg-{stage}:{lane.name}"

    def _admit(self, lane: CameraLane) -> None:
        if any(other.name == lane.name for other in self._all):
            raise ValueError(f"camera {lane.name!r} is already in the pipeline")
        lane.to_infer.on_drop = self.processor.release
        lane.to_output = DoubleBuffer(slots=self._room)
        lane.threads = [
            threading.Thread(target=self._guard_capture, args=(lane, lane.generation),
                             name=self._thread_name("capture", lane), daemon=True),
            threading.Thread(target=self._guard, args=(lambda: self._output_loop(lane),),
                             name=self._thread_name("output", lane), daemon=True),
        ]
        self._lane_of[id(lane.setup)] = lane
        self._lanes.append(lane)
        self._all.append(lane)

    def add_camera(self, lane: CameraLane) -> None:
        """Start serving one more camera while the others run (a reload that adds it)."""
        with self._take_lock:
            if self._ended or self._stop.is_set():
                raise RuntimeError("the pipeline has ended; cannot add a camera")
            self._admit(lane)
            if self._started:
                self._start_lane(lane)

    def remove_camera(self, name: str, timeout: float | None = None) -> bool:
        """Stop one camera while the others run: its frames in flight are finished and written,
        its open events end, its status goes offline, its source and own sinks close.

        True once its threads ended within ``timeout``.
        """
        lane = self._find(name)
        lane.stop.set()
        lane.source_close_async()
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in lane.threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        done = not any(t.is_alive() for t in lane.threads)
        if done:
            with self._take_lock:
                if lane in self._all:
                    self._all.remove(lane)
                self._lane_of.pop(id(lane.setup), None)
            _close_quietly(lane.sinks)
        return done

    def _find(self, name: str) -> CameraLane:
        for lane in list(self._all):
            if lane.name == name:
                return lane
        raise KeyError(f"no camera named {name!r}")

    def cameras(self) -> List[CameraStats]:
        """Every camera's counters and status, in the order they were added."""
        return [lane.stats() for lane in list(self._all)]

    def camera_names(self) -> List[str]:
        return [lane.name for lane in list(self._all)]

    @property
    def source(self) -> Source:
        """The first camera's source (the classic single-source form's ``source``)."""
        return self._all[0].source if self._all else self._first.source

    @property
    def live(self) -> bool:
        """Any camera is live (sets its own pace, drops rather than waits)."""
        return any(lane.source.live for lane in list(self._all))

    @property
    def drops(self) -> int:
        """Frames dropped because live sources outpaced inference, all cameras."""
        return sum(lane.to_infer.drops for lane in list(self._all))

    def queue_depths(self) -> dict[str, int]:
        """Frames waiting in the hand-off buffers, summed over the cameras."""
        lanes = list(self._all)
        return {"infer": sum(len(lane.to_infer) for lane in lanes),
                "output": sum(len(lane.to_output) for lane in lanes)}

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self.counters = Counters()
        with self._take_lock:
            self._started = True
            now = time.monotonic()
            for t in self._workers:
                self._heartbeats[t.name] = now
                t.start()
            for lane in list(self._lanes):
                self._start_lane(lane)

    def _start_lane(self, lane: CameraLane) -> None:
        now = time.monotonic()
        for t in lane.threads:
            self._heartbeats[t.name] = now
            t.start()

    def _beat(self) -> None:
        self._heartbeats[threading.current_thread().name] = time.monotonic()

    def _threads(self) -> List[threading.Thread]:
        return [*self._workers, *(t for lane in list(self._all) for t in lane.threads)]

    def stalled(self, max_age_s: float) -> list[str]:
        """Live stage threads that have not come round their loop for ``max_age_s`` seconds."""
        now = time.monotonic()
        return [t.name for t in self._threads()
                if t.is_alive() and now - self._heartbeats.get(t.name, now) > max_age_s]

    def stalled_cameras(self, max_age_s: float) -> list[str]:
        """Cameras whose capture thread is stuck in its source for ``max_age_s`` seconds (a hung
        driver or stream): these can be restarted alone (``restart_camera``)."""
        now = time.monotonic()
        out = []
        for lane in list(self._all):
            capture = lane.threads[0]
            if capture.is_alive() and now - self._heartbeats.get(capture.name, now) > max_age_s:
                out.append(lane.name)
        return out

    def restart_camera(self, name: str) -> bool:
        """Abandon a camera's stuck capture and start it again on a freshly opened source.

        The stuck thread is left to return on its own (a thread cannot be killed); it belongs to
        an older generation and puts nothing more. False when the camera cannot be reopened.
        """
        lane = self._find(name)
        if lane.reopen is None or lane.stop.is_set() or self._stop.is_set():
            return False
        try:
            source = lane.reopen()
        except SourceError as exc:
            log.error("camera %s: restart failed: %s", name, exc)
            return False
        old = lane.source
        lane.generation += 1
        lane.skipped_before += old.skipped
        lane.source = source
        lane.restarts += 1
        lane.source_close_async(old)
        capture = threading.Thread(target=self._guard_capture, args=(lane, lane.generation),
                                   name=lane.threads[0].name, daemon=True)
        lane.threads[0] = capture
        self._heartbeats[capture.name] = time.monotonic()
        capture.start()
        log.warning("camera %s: capture stuck; restarted (restart %d)", name, lane.restarts)
        return True

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads())

    def stop(self, announce_offline: bool = True) -> None:
        """Stop capturing; frames in flight are still finished and written.

        ``announce_offline``: tell the sinks that every camera went offline. A reload that
        starts a new pipeline over the same cameras passes False, so that subscribers do not see
        each camera flap offline and online at every SIGHUP.
        """
        self._announce_offline = announce_offline
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
        """Wait for the threads; True once all ended. Re-raises a stage's fatal error, or a
        camera's when every camera failed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads():
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            t.join(remaining)
        done = not any(t.is_alive() for t in self._threads())
        if done and self.counters.finished is None:
            self.counters.finished = time.perf_counter()
        if done and self._error is not None:
            raise self._error
        if done:
            errors = [lane.error for lane in self._all]
            if errors and all(e is not None for e in errors):
                raise errors[0]  # type: ignore[misc]
        return done

    def run(self) -> Counters:
        """Start, wait until every source ends (or ``stop``), and return the counters."""
        self.start()
        while not self.join(POLL_S):
            pass
        return self.counters

    # -- stage threads ---------------------------------------------------------------------

    def _guard(self, loop: Callable[[], None]) -> None:
        try:
            loop()
        except BaseException as exc:  # any stage failure ends the whole pipeline, reported by join
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        """A stage failed: keep the first error, stop, and close every buffer so all threads end."""
        if self._error is None:
            self._error = exc
        self._stop.set()
        for lane in list(self._all):
            lane.to_infer.close()
            lane.to_output.close()
        self._gatherer.wake()

    def _guard_capture(self, lane: CameraLane, generation: int) -> None:
        """One camera's capture; its source failing ends this camera alone."""
        try:
            self._capture_loop(lane, generation)
        except SourceError as exc:
            lane.error = exc
            log.error("camera %s: %s (the camera stops; the others go on)", lane.name or "source", exc)
        except BaseException as exc:  # anything else is a fault of the pipeline: it ends whole
            self._fail(exc)
        finally:
            if generation == lane.generation:
                lane.capture_done.set()
                lane.to_infer.close()
                if self._announce_offline or lane.stop.is_set() or not self._stop.is_set():
                    self._set_online(lane, False)
                self._gatherer.wake()

    def _capture_loop(self, lane: CameraLane, generation: int) -> None:
        if self.inference_priority:
            priority.lower_current_thread()
        source = lane.source
        while not (self._stop.is_set() or lane.stop.is_set()) and generation == lane.generation:
            self._beat()
            if self.max_frames and lane.captured >= self.max_frames:
                break
            if self._paused.is_set():
                if source.live:
                    source.read(timeout=POLL_S)
                else:
                    self._stop.wait(POLL_S)
                continue
            t0 = time.perf_counter()
            frame = source.read(timeout=POLL_S)
            if generation != lane.generation:
                return  # restarted meanwhile: the new capture thread owns the camera now
            self._set_online(lane, _online(source, frame))
            if frame is None:
                if source.exhausted:
                    break
                continue
            capture_ms = (time.perf_counter() - t0) * 1e3
            work = self._prepare(frame, lane)
            if work is None:
                return
            work.latency_ms["capture"] = capture_ms
            lane.captured += 1
            with self._out_lock:
                self.counters.captured += 1
            if not lane.to_infer.put(work):
                self.processor.release(work)
                return
            self._gatherer.wake()

    def _set_online(self, lane: CameraLane, online: bool) -> None:
        """Tell the sinks when a camera's stream comes up or goes away (once per change)."""
        if lane.online is online or self._classic:
            return
        lane.online = online
        announce_status(lane.sinks, lane.name, online)
        with self._out_lock:
            announce_status(self.sinks, lane.name, online)

    def _prepare(self, frame: Frame, lane: CameraLane) -> Work | None:
        """Preprocess into a pooled tensor, waiting while downstream still holds all of them.

        Downstream keeps draining even after ``stop()``, so the wait ends unless a stage failed.
        """
        while self._error is None:
            self._beat()
            work = self.processor.prepare(frame, timeout=POLL_S, camera=lane.setup)
            if work is not None:
                return work
        return None

    def _batch_limit(self) -> int:
        cap = self.processor.model.spec.max_batch
        return self.batch if cap is None else max(1, min(self.batch, cap))

    def _take(self) -> List[Work] | None:
        """The next batch for an inference worker, each frame numbered in its camera's order;
        None once every camera has ended and been drained."""
        while True:
            self._beat()
            with self._take_lock:
                if self._error is not None:
                    self._discard_waiting()  # a stage failed: its output thread may be gone
                    return None
                self._retire_drained()
                if not self._lanes:
                    self._ended = True
                    return None
                lanes = list(self._lanes)

                def room(i: int, lanes: List[CameraLane] = lanes) -> int:
                    return self._room - lanes[i].inflight - len(lanes[i].to_output)

                batch = self._gatherer.take(
                    [lane.to_infer for lane in lanes], self._batch_limit(), self.gather_s, POLL_S,
                    active=[not lane.capture_done.is_set() for lane in lanes],
                    room=room,
                )
                for work in batch:
                    lane = self._lane_of[id(work.camera)]
                    work.seq = lane.next_seq
                    lane.next_seq += 1
                    with self._inflight_lock:
                        lane.inflight += 1
                if batch:
                    return batch

    def _discard_waiting(self) -> None:
        """After a fatal error: give the tensors of frames still waiting back to their pools (the
        cameras' output threads may have ended, so nothing waits for these frames any more)."""
        for lane in list(self._lanes):
            while (work := lane.to_infer.get(timeout=0)) is not None:
                self.processor.release(work)

    def _retire_drained(self) -> None:
        """Cameras whose capture ended and whose frames all left inference: their output ends."""
        for lane in list(self._lanes):
            if lane.to_infer.closed_and_empty and lane.inflight == 0:
                self._lanes.remove(lane)
                lane.to_output.close()

    def _inference_loop(self) -> None:
        if self.inference_priority:
            priority.raise_current_thread()
        try:
            while True:
                batch = self._take()
                if batch is None:
                    return
                self.processor.infer_batch(batch)
                for work in batch:
                    lane = self._lane_of[id(work.camera)]
                    lane.to_output.put(work)
                    with self._inflight_lock:  # not the take lock: a gathering worker holds that
                        lane.inflight -= 1
                self._gatherer.wake()
        finally:
            with self._take_lock:
                self._workers_left -= 1
                last = self._workers_left == 0
            if last:
                for lane in list(self._all):
                    lane.to_output.close()

    def _in_order(self, lane: CameraLane) -> Iterator[Work]:
        """A camera's inferred frames in the order the workers took them."""
        pending: dict[int, Work] = {}
        expected = 0
        while True:
            self._beat()
            work = lane.to_output.get(timeout=POLL_S)
            if work is None:
                if lane.to_output.closed_and_empty:
                    break
                continue
            pending[work.seq] = work
            while expected in pending:
                yield pending.pop(expected)
                expected += 1
        yield from (pending[k] for k in sorted(pending))  # only after a failure left a gap

    def _output_loop(self, lane: CameraLane) -> None:
        if self.inference_priority:
            priority.lower_current_thread()
        for work in self._in_order(lane):
            self._gatherer.wake()  # room for this camera's next frame
            result = self.processor.finish(work)
            t0 = time.perf_counter()
            write_to_sinks(result, lane.sinks, lane.failed_sinks, self.counters, self._out_lock)
            with self._out_lock:
                write_to_sinks(result, self.sinks, self._failed_sinks, self.counters)
                result.latency_ms["sink"] = (time.perf_counter() - t0) * 1e3
                self.times.add(result.latency_ms)
                self.counters.processed += 1
                self.counters.instances += len(result.instances)
                lane.processed += 1
                lane.instances += len(result.instances)
                lane.rate.tick()
                if self.on_result is not None:
                    self.on_result(result)
        events = self.processor.finish_analytics(lane.setup)
        write_events_to_sinks(events, lane.sinks, lane.failed_sinks, self.counters, self._out_lock)
        with self._out_lock:
            write_events_to_sinks(events, self.sinks, self._failed_sinks, self.counters)


def _online(source: Source, frame: Frame | None) -> bool:
    """Whether a camera delivers: a live source while connected; a file until it ends."""
    connected = getattr(source, "connected", None)
    if isinstance(connected, bool):
        return connected
    return frame is not None or not source.exhausted


def announce_status(sinks: Sequence[Sink], camera: str, online: bool) -> None:
    """Tell every sink that ``camera`` came up or went away; a failing sink is logged, not fatal."""
    for sink in sinks:
        try:
            sink.write_status(camera, online)
        except SinkError as exc:
            log.error("%s", exc)


def _close_quietly(sinks: Sequence[Sink]) -> None:
    for sink in sinks:
        try:
            sink.close()
        except SinkError as exc:
            log.error("%s", exc)


def write_events_to_sinks(events: Sequence[Event], sinks: Sequence[Sink], failed: set[int], counters: Counters,
                          lock: Optional[threading.Lock] = None) -> None:
    """Events that belong to no frame (the ends at the end of a run) to every sink that
    publishes events; a failing sink is counted as for frames."""
    if not events:
        return
    for i, sink in enumerate(sinks):
        try:
            sink.write_events(events)
        except SinkError as exc:  # as write_to_sinks: one sink's failure does not stop the others
            _sink_failed(exc, i, failed, counters, lock)


def run_sequential(
    source: Source,
    processor: FrameProcessor,
    sinks: Sequence[Sink] = (),
    max_frames: int = 0,
    on_result: ResultCallback | None = None,
    camera: Optional[CameraSetup] = None,
) -> tuple[Counters, StageTimes]:
    """The same work as Pipeline, one frame at a time in the calling thread (the baseline).

    ``camera``: the camera whose pool, overrides and analytics the frames go through."""
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
        work = processor.prepare(frame, camera=camera)
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
    write_events_to_sinks(processor.finish_analytics(camera), sinks, failed, counters)
    counters.finished = time.perf_counter()
    return counters, times
