"""Pipeline: double-buffer semantics, buffer pool, lossless files, newest-only live, clean stops."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import DEMO_BUNDLE, demo_images

from edgeseg.errors import SinkError
from edgeseg.model import Model, load_model
from edgeseg.pipeline.double_buffer import DoubleBuffer
from edgeseg.pipeline.pool import BufferPool
from edgeseg.pipeline.processor import FrameProcessor
from edgeseg.pipeline.runner import Pipeline, run_sequential
from edgeseg.postprocess import Postprocessor
from edgeseg.postprocess.settings import PostprocessSettings
from edgeseg.sinks.base import Sink
from edgeseg.sources import open_source
from edgeseg.sources.base import Source, SourceOptions
from edgeseg.structures import Frame, FrameResult

# -- double buffer ------------------------------------------------------------------------------

def test_lossless_buffer_keeps_every_item_in_order_and_never_holds_more_than_two() -> None:
    buf: DoubleBuffer[int] = DoubleBuffer()
    received: list[int] = []
    peak = [0]

    def consume() -> None:
        while (item := buf.get()) is not None:
            peak[0] = max(peak[0], len(buf) + 1)
            received.append(item)
            time.sleep(0.001)

    consumer = threading.Thread(target=consume)
    consumer.start()
    for i in range(200):
        assert buf.put(i)
        assert len(buf) <= 2
    buf.close()
    consumer.join(5)
    assert received == list(range(200))
    assert buf.drops == 0
    assert peak[0] <= 3  # two slots plus the one in the consumer's hands


def test_newest_only_buffer_drops_oldest_and_hands_them_back() -> None:
    dropped: list[int] = []
    buf: DoubleBuffer[int] = DoubleBuffer(newest_only=True, on_drop=dropped.append)
    for i in range(5):
        assert buf.put(i)
    assert buf.drops == 3
    assert dropped == [0, 1, 2]
    assert [buf.get(0), buf.get(0)] == [3, 4]
    assert buf.get(0.01) is None


def test_closed_buffer_drains_then_returns_none_and_refuses_puts() -> None:
    buf: DoubleBuffer[str] = DoubleBuffer()
    buf.put("a")
    buf.close()
    assert buf.put("b") is False
    assert buf.get() == "a"
    assert buf.get() is None
    assert buf.closed_and_empty


def test_lossless_put_times_out_when_full() -> None:
    buf: DoubleBuffer[int] = DoubleBuffer()
    assert buf.put(1) and buf.put(2)
    assert buf.put(3, timeout=0.05) is False


# -- buffer pool --------------------------------------------------------------------------------

def test_pool_hands_out_fixed_buffers_and_blocks_when_empty() -> None:
    pool = BufferPool((2, 2), np.float32, count=2)
    a, b = pool.acquire(0), pool.acquire(0)
    assert a is not None and b is not None and a is not b
    assert pool.acquire(0.02) is None
    pool.release(a)
    assert pool.acquire(0) is a


@pytest.mark.parametrize("bad", ["foreign", "twice"])
def test_pool_refuses_foreign_and_double_release(bad: str) -> None:
    pool = BufferPool((2,), np.float32, count=1)
    buf = pool.acquire(0)
    assert buf is not None
    if bad == "foreign":
        with pytest.raises(ValueError, match="does not belong"):
            pool.release(np.empty((2,), np.float32))
    else:
        pool.release(buf)
        with pytest.raises(ValueError, match="released twice"):
            pool.release(buf)


# -- the pipeline on the real model -------------------------------------------------------------

class ListSink(Sink):
    def __init__(self) -> None:
        self.results: list[FrameResult] = []
        self.closed = False

    def write(self, result: FrameResult) -> None:
        self.results.append(result)

    def close(self) -> None:
        self.closed = True


class FailingSink(Sink):
    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    def write(self, result: FrameResult) -> None:
        self.calls += 1
        raise self.error


class PacedSource(Source):
    """An in-memory live source delivering copies of one image every ``period`` seconds."""

    live = True

    def __init__(self, image: np.ndarray, period: float, frames: int) -> None:
        self.uri = "memory://paced"
        self.image, self.period, self.frames = image, period, frames
        self.sent = 0

    def read(self, timeout: float | None = None) -> Frame | None:
        if self.sent >= self.frames:
            time.sleep(min(timeout or 0.01, 0.01))
            return None
        time.sleep(self.period)
        self.sent += 1
        return Frame(self.image.copy(), self.sent - 1, self.uri, time.time())


@pytest.fixture(scope="module")
def model() -> Iterator[Model]:
    # The repository's demo bundle: a real network at 320, quick enough for unit tests on 2 cores,
    # and present without ../shared/realdata. Pipeline semantics do not depend on which model.
    loaded = load_model(DEMO_BUNDLE, imgsz=320, threads=1)
    yield loaded
    loaded.close()


def _processor(model: Model) -> FrameProcessor:
    return FrameProcessor(model, Postprocessor(PostprocessSettings(), model.spec.class_names))


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    return demo_images(tmp_path / "imgs", 6)


def test_files_are_processed_losslessly_in_order(model: Model, images: Path) -> None:
    sink = ListSink()
    with open_source(str(images)) as source:
        counters = Pipeline(source, _processor(model), [sink]).run()
    assert counters.processed == counters.captured == 6
    assert [r.frame.frame_id for r in sink.results] == list(range(6))
    assert [r.frame.name for r in sink.results] == sorted(p.name for p in images.iterdir())
    assert all(len(r.instances) > 0 for r in sink.results)
    assert {"capture", "preprocess", "infer", "decode", "postprocess", "sink"} <= set(sink.results[0].latency_ms)


def test_pipeline_and_sequential_loop_give_the_same_instances(model: Model, images: Path) -> None:
    piped, seq = ListSink(), ListSink()
    with open_source(str(images)) as source:
        Pipeline(source, _processor(model), [piped]).run()
    with open_source(str(images)) as source:
        run_sequential(source, _processor(model), [seq])
    assert len(piped.results) == len(seq.results) == 6
    for a, b in zip(piped.results, seq.results):
        np.testing.assert_array_equal(a.instances.class_ids, b.instances.class_ids)
        np.testing.assert_allclose(a.instances.boxes, b.instances.boxes, atol=1e-3)


def test_parallel_inference_workers_keep_frame_order(model: Model, images: Path) -> None:
    piped, seq = ListSink(), ListSink()
    with open_source(str(images), SourceOptions(loop=True)) as source:
        processor = FrameProcessor(model, Postprocessor(PostprocessSettings(), model.spec.class_names),
                                   inference_workers=3)
        Pipeline(source, processor, [piped], max_frames=14, inference_workers=3).run()
    with open_source(str(images), SourceOptions(loop=True)) as source:
        run_sequential(source, _processor(model), [seq], max_frames=14)
    assert [r.frame.frame_id for r in piped.results] == list(range(14))
    for a, b in zip(piped.results, seq.results):
        np.testing.assert_array_equal(a.instances.class_ids, b.instances.class_ids)


def test_live_source_keeps_newest_and_counts_drops(model: Model, images: Path) -> None:
    import cv2

    image = cv2.imread(str(next(images.iterdir())))
    # Unthrottled: the source produces a frame in well under a millisecond, inference takes tens;
    # default thread priorities so that a loaded machine cannot starve the producer.
    source = PacedSource(image, period=0.0, frames=40)
    sink = ListSink()
    pipeline = Pipeline(source, _processor(model), [sink], inference_priority=False)
    pipeline.start()
    deadline = time.monotonic() + 60
    while source.sent < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    pipeline.stop()
    assert pipeline.join(30)
    assert pipeline.drops > 0
    assert pipeline.counters.processed + pipeline.drops == pipeline.counters.captured
    ids = [r.frame.frame_id for r in sink.results]
    assert ids == sorted(ids)


def test_stop_finishes_frames_in_flight(model: Model, images: Path) -> None:
    sink = ListSink()
    with open_source(str(images), SourceOptions(loop=True)) as source:
        pipeline = Pipeline(source, _processor(model), [sink])
        pipeline.start()
        while pipeline.counters.processed < 2:
            time.sleep(0.01)
        pipeline.stop()
        assert pipeline.join(30)
    assert pipeline.counters.captured == pipeline.counters.processed == len(sink.results)


def test_pause_holds_a_file_source_without_skipping(model: Model, images: Path) -> None:
    sink = ListSink()
    with open_source(str(images), SourceOptions(loop=True)) as source:
        pipeline = Pipeline(source, _processor(model), [sink])
        pipeline.set_paused(True)
        pipeline.start()
        time.sleep(0.6)
        assert pipeline.counters.captured == 0 and pipeline.paused
        pipeline.set_paused(False)
        while pipeline.counters.processed < 3:
            time.sleep(0.01)
        pipeline.stop()
        assert pipeline.join(30)
    assert [r.frame.frame_id for r in sink.results][:3] == [0, 1, 2]  # resumed where it held, nothing lost


def test_sink_error_is_counted_and_the_run_goes_on(model: Model, images: Path) -> None:
    failing, good = FailingSink(SinkError("disk full: /x")), ListSink()
    with open_source(str(images)) as source:
        counters = Pipeline(source, _processor(model), [failing, good]).run()
    assert failing.calls == 6 and counters.sink_errors == 6
    assert len(good.results) == 6


def test_unexpected_stage_failure_ends_the_run_and_is_reraised(model: Model, images: Path) -> None:
    with open_source(str(images)) as source:
        pipeline = Pipeline(source, _processor(model), [FailingSink(RuntimeError("boom"))])
        with pytest.raises(RuntimeError, match="boom"):
            pipeline.run()


class FailsOnceOutputIsBehind(Sink):
    """Fails on its first write, but only once the next frame already waits for the output thread:
    the inference stage then holds frames that no output thread will ever take."""

    def __init__(self) -> None:
        self.pipeline: Pipeline | None = None

    def write(self, result: FrameResult) -> None:
        assert self.pipeline is not None
        lane = self.pipeline._all[0]
        deadline = time.monotonic() + 10
        while len(lane.to_output) == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        raise RuntimeError("boom with frames in flight")


def test_a_failure_with_frames_in_flight_still_ends_every_thread(model: Model, images: Path) -> None:
    sink = FailsOnceOutputIsBehind()
    with open_source(str(images)) as source:
        pipeline = Pipeline(source, _processor(model), [sink], inference_priority=False)
        sink.pipeline = pipeline
        with pytest.raises(RuntimeError, match="frames in flight"):
            pipeline.run()
    assert not pipeline.running
