"""Many cameras in one pipeline: round-robin batches, isolation, per-camera order, status,
restart of a stuck capture, cameras added and removed while the others run.

On the repository's demo bundle (a real network) with file cameras from its self-test images and
in-memory live sources where a test needs a camera that stalls, floods or fails.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pytest
from conftest import DEMO_BUNDLE, demo_images

from edgeseg.errors import SourceError
from edgeseg.model import Model, load_model
from edgeseg.pipeline.cameras import CameraLane, RateMeter
from edgeseg.pipeline.double_buffer import DoubleBuffer
from edgeseg.pipeline.gather import Gatherer
from edgeseg.pipeline.processor import CameraSetup, FrameProcessor
from edgeseg.pipeline.runner import Pipeline
from edgeseg.postprocess import Postprocessor
from edgeseg.postprocess.settings import PostprocessSettings
from edgeseg.preprocess import Preprocessor
from edgeseg.sinks.base import Sink
from edgeseg.sources import open_source
from edgeseg.sources.base import Source, SourceOptions
from edgeseg.structures import Frame, FrameResult

# -- the gatherer alone ----------------------------------------------------------------------------


def _buffers(*contents: List[int]) -> List[DoubleBuffer[int]]:
    out = []
    for items in contents:
        buf: DoubleBuffer[int] = DoubleBuffer()
        for item in items:
            buf.put(item)
        out.append(buf)
    return out


def test_one_frame_per_camera_per_sweep_and_the_start_rotates() -> None:
    g = Gatherer()
    queues = _buffers([10, 11], [20, 21], [30, 31])
    assert g.take(queues, limit=2, gather_s=0, wait_s=0) == [10, 20]
    assert g.take(queues, limit=2, gather_s=0, wait_s=0) == [21, 30]  # starts one camera further on
    assert g.take(queues, limit=2, gather_s=0, wait_s=0) == [31, 11]


def test_a_batch_larger_than_the_cameras_takes_second_frames_already_waiting() -> None:
    queues = _buffers([1, 2], [3])
    assert sorted(Gatherer().take(queues, limit=4, gather_s=0, wait_s=0)) == [1, 2, 3]


def test_a_flooding_camera_gets_one_slot_per_round_like_the_others() -> None:
    g = Gatherer()
    queues = _buffers([1, 2], [100])
    first = g.take(queues, limit=2, gather_s=0, wait_s=0)
    assert first == [1, 100]


def test_the_gather_deadline_bounds_the_wait_for_a_silent_camera() -> None:
    clock = [0.0]
    g = Gatherer(clock=lambda: clock[0])
    queues = _buffers([1], [])

    waits: List[float] = []
    real_wait = g._wait

    def wait(seen: int, timeout: float) -> None:
        waits.append(timeout)
        clock[0] += timeout  # nothing comes: the deadline passes
        real_wait(seen, 0)

    g._wait = wait  # type: ignore[method-assign]
    assert g.take(queues, limit=2, gather_s=0.005, wait_s=1.0) == [1]
    assert waits == [pytest.approx(0.005)]


def test_no_wait_for_a_camera_that_ended_or_once_every_camera_gave() -> None:
    g = Gatherer()
    queues = _buffers([1], [])
    t0 = time.monotonic()
    assert g.take(queues, limit=4, gather_s=5.0, wait_s=0, active=[True, False]) == [1]
    queues = _buffers([1], [2])
    assert sorted(g.take(queues, limit=4, gather_s=5.0, wait_s=0)) == [1, 2]
    assert time.monotonic() - t0 < 4.0  # neither call waited out the 5 s deadline


def test_a_frame_put_while_waiting_wakes_the_gatherer() -> None:
    g = Gatherer()
    queues = _buffers([], [])

    def later() -> None:
        time.sleep(0.05)
        queues[1].put(7)
        g.wake()

    threading.Thread(target=later).start()
    assert g.take(queues, limit=1, gather_s=0, wait_s=5.0) == [7]


def test_rate_meter_counts_ticks_in_its_window() -> None:
    clock = [0.0]
    meter = RateMeter(window_s=5.0, clock=lambda: clock[0])
    for _ in range(11):
        meter.tick()
        clock[0] += 0.1
    assert meter.rate() == pytest.approx(10 / 1.1, rel=0.01)
    clock[0] += 10
    assert meter.rate() == 0.0


# -- the pipeline on the demo network ----------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> Iterator[Model]:
    loaded = load_model(DEMO_BUNDLE, imgsz=320, threads=1)
    yield loaded
    loaded.close()


class RecordingSink(Sink):
    def __init__(self) -> None:
        self.results: List[FrameResult] = []
        self.status: List[Tuple[str, bool]] = []
        self.lock = threading.Lock()

    def write(self, result: FrameResult) -> None:
        with self.lock:
            self.results.append(result)

    def write_status(self, camera: str, online: bool) -> None:
        with self.lock:
            self.status.append((camera, online))

    def frames_of(self, camera: str) -> List[int]:
        return [r.frame.frame_id for r in self.results if r.camera == camera]


class MemoryLive(Source):
    """A live camera in memory: a frame every ``period`` s; ``hang`` blocks a read until set free;
    ``fail`` raises on the next read."""

    live = True

    def __init__(self, image: np.ndarray, period: float = 0.0, name: str = "memory") -> None:
        self.uri = f"memory://{name}"
        self.image, self.period = image, period
        self.sent = 0
        self.connected = True
        self.hang = threading.Event()
        self.release = threading.Event()
        self.fail: Optional[str] = None
        self.closed = False

    def read(self, timeout: float | None = None) -> Frame | None:
        if self.fail:
            raise SourceError(self.fail)
        if self.hang.is_set():
            self.release.wait(30)
            return None
        if self.closed:
            return None
        time.sleep(self.period)
        self.sent += 1
        return Frame(self.image.copy(), self.sent - 1, self.uri, time.time())

    def close(self) -> None:
        self.closed = True
        self.release.set()


def _processor(model: Model) -> FrameProcessor:
    return FrameProcessor(model, Postprocessor(PostprocessSettings(), model.spec.class_names))


def _lane(model: Model, name: str, source: Source, reopen: Optional[Source] = None,
          overrides: Optional[Dict[str, object]] = None) -> CameraLane:
    setup = CameraSetup(name, Preprocessor(model.spec.normalization, pool_size=4), overrides=overrides or {})
    return CameraLane(setup, source, uri=name, reopen=(lambda: reopen) if reopen is not None else None)


@pytest.fixture()
def folders(tmp_path: Path) -> List[Path]:
    base = demo_images(tmp_path / "all", 6)
    out = []
    for i, count in enumerate((6, 4, 5)):
        folder = tmp_path / f"cam{i}"
        folder.mkdir()
        for k, path in enumerate(sorted(base.glob("*.jpg"))[:count]):
            (folder / f"{k:03d}.jpg").write_bytes(path.read_bytes())
        out.append(folder)
    return out


def _files(folder: Path) -> Source:
    return open_source(str(folder), SourceOptions())


def test_three_file_cameras_each_lose_nothing_and_keep_their_order(model: Model, folders: List[Path]) -> None:
    sink = RecordingSink()
    lanes = [_lane(model, f"cam{i}", _files(f)) for i, f in enumerate(folders)]
    pipeline = Pipeline(None, _processor(model), [sink], cameras=lanes, inference_priority=False)
    counters = pipeline.run()
    assert counters.processed == 15
    assert [sink.frames_of(f"cam{i}") for i in range(3)] == [list(range(6)), list(range(4)), list(range(5))]
    stats = {c.name: c for c in pipeline.cameras()}
    assert {n: (c.captured, c.processed, c.online) for n, c in stats.items()} == {
        "cam0": (6, 6, False), "cam1": (4, 4, False), "cam2": (5, 5, False)}
    # Each camera went online with its first frame and offline when its files ended.
    for i in range(3):
        assert [s for s in sink.status if s[0] == f"cam{i}"] == [(f"cam{i}", True), (f"cam{i}", False)]


def test_a_camera_override_changes_its_results_only(model: Model, folders: List[Path]) -> None:
    sink = RecordingSink()
    lanes = [_lane(model, "all", _files(folders[0])),
             _lane(model, "strict", _files(folders[0]), overrides={"conf_threshold": 0.99})]
    Pipeline(None, _processor(model), [sink], cameras=lanes, inference_priority=False).run()
    found = {cam: sum(len(r.instances) for r in sink.results if r.camera == cam) for cam in ("all", "strict")}
    assert found["all"] > 0 and found["strict"] == 0


def test_a_failing_camera_stops_alone_and_the_others_finish(model: Model, folders: List[Path]) -> None:
    image = np.full((240, 320, 3), 90, np.uint8)
    broken = MemoryLive(image, name="broken")
    broken.fail = "memory://broken: device vanished"
    sink = RecordingSink()
    lanes = [_lane(model, "ok", _files(folders[1])), _lane(model, "broken", broken)]
    pipeline = Pipeline(None, _processor(model), [sink], cameras=lanes, inference_priority=False)
    pipeline.run()  # does not raise: one camera of two failed
    assert sink.frames_of("ok") == list(range(4))
    assert ("broken", False) in sink.status


def test_every_camera_failing_is_the_pipeline_failing(model: Model) -> None:
    image = np.full((240, 320, 3), 90, np.uint8)
    broken = MemoryLive(image)
    broken.fail = "memory://x: gone"
    pipeline = Pipeline(None, _processor(model), [], cameras=[_lane(model, "x", broken)], inference_priority=False)
    with pytest.raises(SourceError, match="gone"):
        pipeline.run()


def test_a_flooding_live_camera_drops_its_own_frames_not_the_files_of_another(model: Model,
                                                                              folders: List[Path]) -> None:
    image = np.full((240, 320, 3), 90, np.uint8)
    flood = MemoryLive(image, period=0.0, name="flood")
    sink = RecordingSink()
    lanes = [_lane(model, "files", _files(folders[0])), _lane(model, "flood", flood)]
    pipeline = Pipeline(None, _processor(model), [sink], cameras=lanes, inference_priority=False)
    pipeline.start()
    deadline = time.monotonic() + 60
    while len(sink.frames_of("files")) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    pipeline.stop()
    pipeline.join(30)
    assert sink.frames_of("files") == list(range(6))
    flood_stats = next(c for c in pipeline.cameras() if c.name == "flood")
    assert flood_stats.dropped > 0 and flood_stats.processed > 0
    assert next(c for c in pipeline.cameras() if c.name == "files").dropped == 0


def test_a_stuck_capture_is_restarted_alone(model: Model, folders: List[Path]) -> None:
    image = np.full((240, 320, 3), 90, np.uint8)
    stuck = MemoryLive(image, period=0.01, name="stuck")
    fresh = MemoryLive(image, period=0.01, name="fresh")
    sink = RecordingSink()
    lanes = [_lane(model, "stuck", stuck, reopen=fresh), _lane(model, "other", MemoryLive(image, 0.01))]
    pipeline = Pipeline(None, _processor(model), [sink], cameras=lanes, inference_priority=False)
    pipeline.start()
    try:
        time.sleep(0.3)
        stuck.hang.set()
        deadline = time.monotonic() + 10
        while not pipeline.stalled_cameras(0.5) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pipeline.stalled_cameras(0.5) == ["stuck"]
        assert pipeline.restart_camera("stuck")
        before = fresh.sent
        deadline = time.monotonic() + 10
        while fresh.sent < before + 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fresh.sent >= before + 5  # the new source delivers
        stats = next(c for c in pipeline.cameras() if c.name == "stuck")
        assert stats.restarts == 1
        assert stuck.closed  # the stuck source was closed (in a thread of its own)
        assert pipeline.stalled_cameras(0.5) == []
    finally:
        pipeline.stop()
        pipeline.join(30)


def test_cameras_come_and_go_while_the_others_run(model: Model, folders: List[Path]) -> None:
    image = np.full((240, 320, 3), 90, np.uint8)
    sink = RecordingSink()
    keep = MemoryLive(image, 0.02, "keep")
    going = MemoryLive(image, 0.02, "going")
    lanes = [_lane(model, "keep", keep), _lane(model, "going", going)]
    pipeline = Pipeline(None, _processor(model), [sink], cameras=lanes, inference_priority=False)
    pipeline.start()
    try:
        time.sleep(0.5)
        assert pipeline.remove_camera("going", timeout=10)
        assert going.closed
        assert pipeline.camera_names() == ["keep"]
        pipeline.add_camera(_lane(model, "files", _files(folders[1])))
        deadline = time.monotonic() + 30
        while len(sink.frames_of("files")) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sink.frames_of("files") == list(range(4))
        kept = sink.frames_of("keep")
        assert kept == list(range(len(kept)))  # nothing of the kept camera lost or reordered
        with pytest.raises(ValueError, match="already"):
            pipeline.add_camera(_lane(model, "keep", MemoryLive(image)))
    finally:
        pipeline.stop()
        pipeline.join(30)
    assert ("going", False) in sink.status


class BlockedSink(RecordingSink):
    """A camera's own output stuck (a dead disk): every write waits until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, result: FrameResult) -> None:
        self.release.wait(60)
        super().write(result)


def test_a_camera_whose_output_is_stuck_does_not_hold_up_the_others(model: Model, folders: List[Path]) -> None:
    image = np.full((240, 320, 3), 90, np.uint8)
    stuck_sink = BlockedSink()
    shared = RecordingSink()
    stuck = _lane(model, "stuck", MemoryLive(image, 0.005, "stuck"))
    stuck.sinks.append(stuck_sink)
    pipeline = Pipeline(None, _processor(model), [shared], cameras=[stuck, _lane(model, "files", _files(folders[0]))],
                        inference_priority=False)
    pipeline.start()
    try:
        deadline = time.monotonic() + 60
        while len(shared.frames_of("files")) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        # Every frame of the file camera went through while the other camera's output was stuck
        # on its first frame (the inference stage took no more of its frames meanwhile).
        assert shared.frames_of("files") == list(range(6))
        assert stuck_sink.results == []
    finally:
        stuck_sink.release.set()
        pipeline.stop()
        pipeline.join(30)
