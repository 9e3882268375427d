"""Sources: URI dispatch, image folders with bad files, video files, and live reconnection.

Images and videos are generated with OpenCV in tmp_path; the live tests run a real MJPEG HTTP
server on loopback and point RTSP at a closed port. Loops that wait on a network have a time
budget only as a safety net: no assertion is about speed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import demo_images
from sources_mjpeg import MjpegServer, free_port

from edgeseg.errors import SourceError
from edgeseg.sources import (
    ImageSource,
    NetworkStreamSource,
    Source,
    SourceOptions,
    V4L2Source,
    VideoFileSource,
    describe_sources,
    open_source,
)
from edgeseg.sources.images import truncation_reason
from edgeseg.sources.live import Backoff, csi_pipeline, opencv_has_gstreamer
from edgeseg.sources.uri import mask_credentials
from edgeseg.structures import Frame

IMAGE_SHAPE = (24, 32, 3)
#: Short backoff for the live tests, so that several attempts happen in well under a second.
FAST_RETRY = SourceOptions(reconnect_initial_s=0.05, reconnect_max_s=0.2, open_timeout_s=2, read_timeout_s=2)
#: Safety net for loops that wait on a network; reaching it fails the test, it is not measured.
NETWORK_BUDGET_S = 15.0
#: JPEG and MPEG-4 shift a flat grey level by a few units.
LEVEL_TOLERANCE = 6


# ---------------------------------------------------------------- helpers


def encode(image: np.ndarray, ext: str) -> bytes:
    ok, data = cv2.imencode(ext, image)
    assert ok
    return data.tobytes()


def flat(level: int, shape: tuple[int, ...] = IMAGE_SHAPE) -> np.ndarray:
    return np.full(shape, level, np.uint8)


def noisy_jpeg() -> bytes:
    """A JPEG with real content (noise), so that half of it is a plausible truncated file."""
    rng = np.random.default_rng(0)
    return encode(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8), ".jpg")


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def drain(source: Source, max_calls: int = 100) -> tuple[list[Frame], int]:
    """All frames of a finite source, and how many reads returned None on the way."""
    frames: list[Frame] = []
    nones = 0
    for _ in range(max_calls):
        if source.exhausted:
            break
        frame = source.read()
        if frame is None:
            nones += 1
        else:
            frames.append(frame)
    assert source.exhausted, "source did not end"
    return frames, nones


def read_live(source: Source, stop: Callable[[Frame | None], bool]) -> list[Frame]:
    """Frames read until ``stop(last result)`` is true; fails past NETWORK_BUDGET_S."""
    frames: list[Frame] = []
    deadline = time.monotonic() + NETWORK_BUDGET_S
    while time.monotonic() < deadline:
        frame = source.read(timeout=0.2)
        if frame is not None:
            frames.append(frame)
        if stop(frame):
            return frames
    pytest.fail(f"live source gave no expected result within {NETWORK_BUDGET_S} s")


def level(frame: Frame) -> float:
    return float(frame.image.mean())


# ---------------------------------------------------------------- URIs and registry


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("rtsp://user:secret@cam.local:554/stream", "rtsp://user:***@cam.local:554/stream"),
        ("http://admin:@10.0.0.2/mjpg", "http://admin:***@10.0.0.2/mjpg"),
        ("rtsp://cam.local/stream", "rtsp://cam.local/stream"),
        ("rtsp://user@cam.local/stream", "rtsp://user@cam.local/stream"),
        ("/data/a:b@c.jpg", "/data/a:b@c.jpg"),
        ("cannot open rtsp://u:p@h/s (401)", "cannot open rtsp://u:***@h/s (401)"),
    ],
)
def test_mask_credentials(uri: str, expected: str) -> None:
    assert mask_credentials(uri) == expected


@pytest.mark.parametrize(
    ("uri", "expected_class", "device"),
    [
        ("v4l2:///dev/video0", V4L2Source, "/dev/video0"),
        ("v4l2://2", V4L2Source, "/dev/video2"),
        ("/dev/video1", V4L2Source, "/dev/video1"),
        ("rtsp://127.0.0.1:8554/stream", NetworkStreamSource, None),
        ("RTSP://127.0.0.1:8554/stream", NetworkStreamSource, None),
        ("http://127.0.0.1:8080/video.mjpg", NetworkStreamSource, None),
        ("https://cam.example/video.mjpg", NetworkStreamSource, None),
    ],
)
def test_live_uris_pick_their_class_without_connecting(
    uri: str, expected_class: type[Source], device: str | None
) -> None:
    source = open_source(uri)
    try:
        assert type(source) is expected_class
        assert source.live and not source.exhausted and source.length is None
        if device is not None:
            assert isinstance(source, V4L2Source) and source.device == device
    finally:
        source.close()


def _empty_dir(tmp: Path) -> str:
    (tmp / "empty").mkdir()
    return str(tmp / "empty")


def _text_only_dir(tmp: Path) -> str:
    write(tmp / "docs" / "readme.txt", b"not an image")
    return str(tmp / "docs")


@pytest.mark.parametrize(
    ("make_uri", "message"),
    [
        (lambda tmp: "foo://bar", "unknown source scheme 'foo'"),
        (lambda tmp: "ftp://user:secret@host/x.mp4", "unknown source scheme 'ftp'"),
        (lambda tmp: str(tmp / "missing.mp4"), "no such file or folder"),
        (lambda tmp: "file://" + str(tmp / "missing"), "no such file or folder"),
        (_empty_dir, "expected image files"),
        (_text_only_dir, "found only 1 non-image file"),
        (lambda tmp: str(tmp / "*.jpg"), "found nothing"),
        (lambda tmp: str(write(tmp / "notes.txt", b"x")), "expected a video"),
        (lambda tmp: "csi://front", "expected a CSI sensor number"),
        (lambda tmp: "v4l2://camera", "expected a V4L2 device"),
        (lambda tmp: "   ", "empty source URI"),
    ],
)
def test_open_errors_are_one_line_naming_the_uri(
    tmp_path: Path, make_uri: Callable[[Path], str], message: str
) -> None:
    uri = make_uri(tmp_path)
    with pytest.raises(SourceError) as info:
        open_source(uri)
    text = str(info.value)
    assert message in text
    assert "\n" not in text
    assert mask_credentials(uri.strip()) in text
    assert "secret" not in text


@pytest.mark.parametrize(
    ("fields", "raises"),
    [
        ({}, False),
        ({"reconnect_initial_s": 0.0}, True),
        ({"reconnect_initial_s": 5.0, "reconnect_max_s": 1.0}, True),
        ({"width": -1}, True),
        ({"read_timeout_s": 0.0}, True),
        ({"width": 1280, "height": 720, "fps": 30}, False),
    ],
)
def test_source_options_are_bounded(fields: dict[str, float], raises: bool) -> None:
    if raises:
        with pytest.raises(SourceError, match="source options: expected"):
            SourceOptions(**fields)
    else:
        assert SourceOptions(**fields)


def test_describe_sources_has_a_line_per_scheme() -> None:
    lines = describe_sources().splitlines()
    for scheme in ("v4l2://", "csi://", "rtsp://", "http(s)://", "file://", "*.jpg"):
        assert sum(scheme in line for line in lines) == 1, scheme


# ---------------------------------------------------------------- images


def test_folder_is_read_in_natural_order(tmp_path: Path) -> None:
    for name, value in [("img10.png", 100), ("img2.png", 20), ("img1.png", 10)]:
        write(tmp_path / name, encode(flat(value), ".png"))
    source = open_source(str(tmp_path))
    assert isinstance(source, ImageSource) and source.length == 3 and not source.live
    frames, nones = drain(source)
    assert [f.name for f in frames] == ["img1.png", "img2.png", "img10.png"]
    assert [f.frame_id for f in frames] == [0, 1, 2]
    assert [int(f.image[0, 0, 0]) for f in frames] == [10, 20, 100]
    assert all(f.image.shape == IMAGE_SHAPE and f.image.dtype == np.uint8 for f in frames)
    assert nones == 0 and source.skipped == 0
    assert source.read() is None and source.exhausted


@pytest.mark.parametrize("prefix", ["", "file://"])
def test_glob_selects_matching_images(tmp_path: Path, prefix: str) -> None:
    for name in ["b.jpg", "a.jpg", "c.png"]:
        write(tmp_path / "shots" / name, encode(flat(50), name[-4:]))
    frames, _ = drain(open_source(prefix + str(tmp_path / "shots" / "*.jpg")))
    assert [f.name for f in frames] == ["a.jpg", "b.jpg"]


@pytest.mark.parametrize(
    ("image", "ext"),
    [
        (flat(7, IMAGE_SHAPE), ".jpg"),
        (flat(7, IMAGE_SHAPE[:2]), ".png"),  # grayscale
        (flat(7, (*IMAGE_SHAPE[:2], 4)), ".png"),  # BGRA
        (np.full(IMAGE_SHAPE, 7 * 257, np.uint16), ".png"),  # 16-bit
    ],
    ids=["bgr-jpg", "gray-png", "bgra-png", "16bit-png"],
)
def test_single_image_becomes_bgr_uint8(tmp_path: Path, image: np.ndarray, ext: str) -> None:
    path = write(tmp_path / f"one{ext}", encode(image, ext))
    source = open_source(str(path))
    frames, _ = drain(source)
    assert len(frames) == 1 and source.length == 1
    assert frames[0].image.shape == IMAGE_SHAPE and frames[0].image.dtype == np.uint8
    assert frames[0].name == path.name and frames[0].source == str(path)
    assert abs(level(frames[0]) - 7) <= 1


def _half_png() -> bytes:
    data = encode(np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8), ".png")
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("bad_name", "bad_bytes", "reason", "nones"),
    [
        ("b_notes.txt", b"shopping list", "without an image extension", 0),
        ("b_empty.jpg", b"", "empty file (0 bytes)", 1),
        ("b_cut.jpg", noisy_jpeg()[: len(noisy_jpeg()) // 2], "truncated JPEG", 1),
        ("b_corrupt.png", b"this is not a png at all" * 10, "not a decodable image", 1),
        ("b_cut.png", _half_png(), "truncated PNG", 1),
    ],
)
def test_unreadable_items_are_logged_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, bad_name: str, bad_bytes: bytes, reason: str, nones: int
) -> None:
    write(tmp_path / "a.png", encode(flat(30), ".png"))
    write(tmp_path / bad_name, bad_bytes)
    write(tmp_path / "c.jpg", noisy_jpeg())
    with caplog.at_level(logging.WARNING, logger="edgeseg.sources"):
        source = open_source(str(tmp_path))
        frames, none_reads = drain(source)
    assert [f.name for f in frames] == ["a.png", "c.jpg"]
    assert [f.frame_id for f in frames] == [0, 1]
    assert source.skipped == 1 and none_reads == nones
    lines = [r.getMessage() for r in caplog.records if bad_name in r.getMessage()]
    assert len(lines) == 1 and reason in lines[0]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (noisy_jpeg(), None),
        (noisy_jpeg() + b"\x00" * 32, None),  # zero padding after EOI is allowed
        (noisy_jpeg()[:-2], "truncated JPEG"),
        (noisy_jpeg()[: len(noisy_jpeg()) // 2], "truncated JPEG"),
        (encode(flat(1), ".png"), None),
        (encode(flat(1), ".png")[:-4], "truncated PNG"),
        (encode(flat(1), ".bmp")[:-4], None),  # left to the decoder
    ],
    ids=["jpeg", "jpeg-padded", "jpeg-no-eoi", "jpeg-half", "png", "png-cut", "bmp"],
)
def test_truncation_reason(data: bytes, expected: str | None) -> None:
    reason = truncation_reason(data)
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and expected in reason


def test_loop_restarts_and_frame_ids_keep_increasing(tmp_path: Path) -> None:
    write(tmp_path / "a.png", encode(flat(1), ".png"))
    write(tmp_path / "b.png", encode(flat(2), ".png"))
    source = open_source(str(tmp_path), SourceOptions(loop=True))
    frames = [source.read() for _ in range(5)]
    assert [f.name for f in frames if f] == ["a.png", "b.png", "a.png", "b.png", "a.png"]
    assert [f.frame_id for f in frames if f] == [0, 1, 2, 3, 4]
    assert not source.exhausted


def test_loop_reports_a_bad_file_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path / "a.png", encode(flat(1), ".png"))
    write(tmp_path / "b.jpg", b"")
    source = open_source(str(tmp_path), SourceOptions(loop=True))
    with caplog.at_level(logging.WARNING, logger="edgeseg.sources"):
        results = [source.read() for _ in range(6)]
    assert [r.name if r else None for r in results] == ["a.png", None, "a.png", "a.png", "a.png", "a.png"]
    assert source.skipped == 1
    assert sum("b.jpg" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize(("loop", "raises"), [(False, False), (True, True)])
def test_folder_of_only_unreadable_images(tmp_path: Path, loop: bool, raises: bool) -> None:
    write(tmp_path / "a.jpg", b"")
    source = open_source(str(tmp_path), SourceOptions(loop=loop))
    assert source.read() is None  # logged and skipped, never an exception
    if raises:  # looping forever over nothing readable would hide the problem
        with pytest.raises(SourceError, match="readable image"):
            source.read()
    else:
        assert source.exhausted and source.skipped == 1


def test_jpeg_images_by_glob(tmp_path: Path) -> None:
    folder = demo_images(tmp_path / "imgs", 6)
    (folder / "notes.txt").write_text("not matched by the glob")
    source = open_source(str(folder / "*.jpg"))
    files = sorted(folder.glob("*.jpg"))
    assert source.length == len(files) == 6
    for expected in files:
        frame = source.read()
        assert frame is not None and frame.name == expected.name
        reference = cv2.imread(str(expected))
        assert reference is not None and np.array_equal(frame.image, reference)
    assert source.read() is None


# ---------------------------------------------------------------- video files

VIDEO_FRAMES = 12
VIDEO_STEP = 15
VIDEO_FIRST_LEVEL = 20


@pytest.fixture()
def clip(tmp_path: Path) -> Path:
    """A 12-frame mp4v clip whose frame i is flat grey at 20 + 15 i."""
    path = tmp_path / "clip.mp4"
    height, width = 48, 64
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (width, height))
    assert writer.isOpened(), "this OpenCV cannot write mp4v"
    for i in range(VIDEO_FRAMES):
        writer.write(flat(VIDEO_FIRST_LEVEL + VIDEO_STEP * i, (height, width, 3)))
    writer.release()
    return path


@pytest.mark.parametrize("prefix", ["", "file://"])
def test_video_file_every_frame_in_order(clip: Path, prefix: str) -> None:
    source = open_source(prefix + str(clip))
    assert isinstance(source, VideoFileSource) and not source.live
    assert source.length == VIDEO_FRAMES
    frames, nones = drain(source)
    assert nones == 0
    assert [f.frame_id for f in frames] == list(range(VIDEO_FRAMES))
    expected = [VIDEO_FIRST_LEVEL + VIDEO_STEP * i for i in range(VIDEO_FRAMES)]
    assert all(abs(level(f) - e) <= LEVEL_TOLERANCE for f, e in zip(frames, expected))
    assert frames[0].image.shape == (48, 64, 3) and frames[0].image.dtype == np.uint8
    assert source.read() is None


def test_video_loop(clip: Path) -> None:
    source = open_source(str(clip), SourceOptions(loop=True))
    frames = [source.read() for _ in range(2 * VIDEO_FRAMES + 3)]
    assert all(f is not None for f in frames) and not source.exhausted
    assert [f.frame_id for f in frames if f] == list(range(2 * VIDEO_FRAMES + 3))
    first, again = frames[0], frames[VIDEO_FRAMES]
    assert first is not None and again is not None
    assert abs(level(again) - level(first)) <= 1
    source.close()


@pytest.mark.parametrize("content", [b"", b"\x00\x00\x00\x18ftypmp42 but nothing else" * 20])
def test_corrupt_video_raises_at_open(tmp_path: Path, content: bytes) -> None:
    path = write(tmp_path / "broken.mp4", content)
    with pytest.raises(SourceError, match="broken.mp4: expected a"):
        open_source(str(path))


# ---------------------------------------------------------------- live sources


@pytest.mark.parametrize(
    ("initial", "maximum", "expected"),
    [
        (0.5, 4.0, [0.5, 1.0, 2.0, 4.0, 4.0]),
        (1.0, 1.0, [1.0, 1.0, 1.0]),
        (0.3, 1.0, [0.3, 0.6, 1.0, 1.0]),
    ],
)
def test_backoff_doubles_up_to_the_cap(initial: float, maximum: float, expected: list[float]) -> None:
    backoff = Backoff(initial, maximum)
    assert [backoff.next_delay() for _ in expected] == pytest.approx(expected)
    backoff.reset()
    assert backoff.next_delay() == initial


def test_mjpeg_stream_survives_a_server_restart() -> None:
    first = MjpegServer(base_level=40)
    source = open_source(first.url, FAST_RETRY)
    try:
        assert isinstance(source, NetworkStreamSource) and source.live
        before = read_live(source, lambda f: False if f is None else f.frame_id >= 2)
        assert all(35 <= level(f) <= 85 for f in before)
        assert before[-1].image.shape == (48, 64, 3)

        first.stop()  # mid-run: the source must notice the drop and keep trying, quietly
        read_live(source, lambda f: f is None and not source.connected)

        with MjpegServer(first.port, base_level=160):
            started = time.time()
            after = read_live(source, lambda f: f is not None and level(f) > 150)
        assert after[-1].frame_id > before[-1].frame_id
        assert started <= after[-1].timestamp <= time.time()
        assert source.reconnects >= 1
        assert not source.exhausted
    finally:
        source.close()
        first.stop()


def test_unreachable_rtsp_backs_off_and_masks_the_password(caplog: pytest.LogCaptureFixture) -> None:
    source = open_source(f"rtsp://viewer:s3cret@127.0.0.1:{free_port()}/stream", FAST_RETRY)
    assert isinstance(source, NetworkStreamSource)
    attempts: list[float] = []
    real_open = source._open_capture

    def recording_open() -> cv2.VideoCapture:
        attempts.append(time.monotonic())
        return real_open()

    source._open_capture = recording_open  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="edgeseg.sources"):
        results = read_live(source, lambda f: len(attempts) >= 5)
    source.close()
    assert results == []  # every read returned None, none raised
    assert source.reconnects == len(attempts) - 1 >= 4
    gaps = np.diff(attempts)
    assert all(gap >= wait for gap, wait in zip(gaps, [0.05, 0.1, 0.2, 0.2]))
    assert "s3cret" not in caplog.text and "viewer:***@127.0.0.1" in caplog.text


def test_read_with_zero_timeout_tries_at_most_once() -> None:
    source = open_source(f"rtsp://127.0.0.1:{free_port()}/stream", FAST_RETRY)
    assert isinstance(source, NetworkStreamSource)
    assert source.read(timeout=0) is None
    assert source.reconnects == 0 and not source.connected
    source.close()


def test_read_timeout_is_not_slept_through_during_backoff() -> None:
    options = SourceOptions(reconnect_initial_s=30.0, reconnect_max_s=60.0)
    source = open_source(f"rtsp://127.0.0.1:{free_port()}/stream", options)
    started = time.monotonic()
    assert source.read(timeout=0.1) is None  # attempt 1 fails, then a 30 s backoff begins
    assert source.read(timeout=0.1) is None
    assert time.monotonic() - started < 10.0  # far below the 30 s backoff
    assert source.reconnects == 0
    source.close()


def test_close_interrupts_a_blocking_read() -> None:
    options = SourceOptions(reconnect_initial_s=30.0, reconnect_max_s=60.0)
    source = open_source(f"http://127.0.0.1:{free_port()}/stream", options)
    results: list[Frame | None] = [source.read(timeout=0)]  # fails once, starts the backoff
    reader = threading.Thread(target=lambda: results.append(source.read(timeout=None)))
    reader.start()
    reader.join(0.2)
    assert reader.is_alive()  # waiting out the 30 s backoff
    source.close()
    reader.join(5.0)
    assert not reader.is_alive() and results == [None, None]
    assert source.read(timeout=0) is None


def test_missing_v4l2_camera_is_retried_not_raised() -> None:
    source = open_source("v4l2:///dev/video63", FAST_RETRY)
    assert source.read(timeout=0.1) is None
    source.close()


def test_csi_needs_gstreamer() -> None:
    if opencv_has_gstreamer():
        pytest.skip("this OpenCV has GStreamer (a Jetson?): the refusal cannot be shown here")
    with pytest.raises(SourceError, match="csi://0: .*GStreamer"):
        open_source("csi://0")


@pytest.mark.parametrize(
    ("build_info", "expected"),
    [
        ("  Video I/O:\n    FFMPEG:   YES\n    GStreamer:                   NO\n", False),
        ("  Video I/O:\n    GStreamer:                   YES (1.16.3)\n", True),
        ("  Video I/O:\n    FFMPEG:   YES\n", False),
    ],
)
def test_opencv_has_gstreamer_reads_the_build_information(build_info: str, expected: bool) -> None:
    assert opencv_has_gstreamer(build_info) is expected


def test_csi_pipeline() -> None:
    pipeline = csi_pipeline(1, 1920, 1080, 30)
    for part in (
        "nvarguscamerasrc sensor-id=1",
        "width=(int)1920",
        "height=(int)1080",
        "framerate=(fraction)30/1",
        "nvvidconv",
        "format=(string)BGR ",
        "appsink drop=1",
    ):
        assert part in pipeline
