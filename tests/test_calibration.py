"""Calibration images: collecting them from a source, checking a folder, feeding the calibrator."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeseg.calibration import FRAME_NAME, collect_frames, evenly_spaced
from edgeseg.errors import ExportError, SourceError
from edgeseg.model import Normalization
from edgeseg.preprocess import Preprocessor
from export.calibration import CalibrationInput, PreprocessedReader, calibration_images

#: Grey level of frame i in the synthetic folders and videos: FIRST + STEP * i.
FIRST_LEVEL = 10
LEVEL_STEP = 10
#: Video frames are compressed twice (mp4v, then JPEG); levels may drift by this much.
LEVEL_TOLERANCE = 4
FRAME_SHAPE = (48, 64, 3)


def flat(level: int, shape: tuple[int, int, int] = FRAME_SHAPE) -> np.ndarray:
    return np.full(shape, level, np.uint8)


def level_of(path: Path) -> int:
    """Index of the synthetic frame stored in ``path`` (from its grey level)."""
    image = cv2.imread(str(path))
    assert image is not None, path
    return round((float(image.mean()) - FIRST_LEVEL) / LEVEL_STEP)


def image_folder(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        assert cv2.imwrite(str(folder / f"img_{i}.png"), flat(FIRST_LEVEL + LEVEL_STEP * i))
    return folder


def written(out: Path) -> list[Path]:
    return sorted(out.glob("calib_*.jpg"))


# --- edgeseg.calibration.collect_frames ------------------------------------------------------


@pytest.mark.parametrize(
    "length, count, expected",
    [
        (20, 5, [0, 5, 10, 14, 19]),
        (20, 1, [10]),
        (3, 5, [0, 1, 2]),
        (4, 4, [0, 1, 2, 3]),
        (0, 3, []),
    ],
)
def test_evenly_spaced(length: int, count: int, expected: list[int]) -> None:
    assert evenly_spaced(length, count) == expected


def test_folder_of_20_gives_5_evenly_spaced_frames(tmp_path: Path) -> None:
    src = image_folder(tmp_path / "src", 20)
    out = tmp_path / "calib"
    assert collect_frames(str(src), 5, out) == 5
    files = written(out)
    assert [f.name for f in files] == [FRAME_NAME.format(i) for i in range(5)]
    assert [level_of(f) for f in files] == [0, 5, 10, 14, 19]


def test_unreadable_pick_moves_to_next_readable_image(tmp_path: Path) -> None:
    src = image_folder(tmp_path / "src", 20)
    (src / "img_5.png").write_bytes(b"not an image")  # natural order: img_5 is position 5
    out = tmp_path / "calib"
    assert collect_frames(str(src), 5, out) == 5
    assert [level_of(f) for f in written(out)] == [0, 6, 10, 14, 19]


def test_numbering_continues_after_earlier_session(tmp_path: Path) -> None:
    src = image_folder(tmp_path / "src", 6)
    out = tmp_path / "calib"
    assert collect_frames(str(src), 2, out) == 2
    assert collect_frames(str(src), 3, out) == 3
    assert [f.name for f in written(out)] == [FRAME_NAME.format(i) for i in range(5)]


def test_video_file_frames_evenly_spaced(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    frames = 21
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (FRAME_SHAPE[1], FRAME_SHAPE[0]))
    assert writer.isOpened(), "this OpenCV cannot write mp4v"
    for i in range(frames):
        writer.write(flat(FIRST_LEVEL + LEVEL_STEP * i))
    writer.release()
    out = tmp_path / "calib"
    assert collect_frames(f"file://{path}", 3, out) == 3
    for file, expected in zip(written(out), [0, 10, 20]):
        image = cv2.imread(str(file))
        assert abs(float(image.mean()) - (FIRST_LEVEL + LEVEL_STEP * expected)) <= LEVEL_TOLERANCE


def test_fewer_frames_than_asked_writes_what_there_is(tmp_path: Path) -> None:
    src = image_folder(tmp_path / "src", 3)
    assert collect_frames(str(src), 10, tmp_path / "calib") == 3


@pytest.mark.parametrize(
    "uri, count, interval, error, message",
    [
        ("{tmp}/missing", 5, 1.0, SourceError, "no such file or folder"),
        ("nope://x", 5, 1.0, SourceError, "unknown source scheme"),
        ("{tmp}/src", 0, 1.0, ExportError, "count 0: expected at least 1"),
        ("{tmp}/src", 5, 0.0, ExportError, "expected a positive number of seconds"),
    ],
)
def test_bad_arguments_fail_in_one_line(
    tmp_path: Path, uri: str, count: int, interval: float, error: type[Exception], message: str
) -> None:
    image_folder(tmp_path / "src", 2)
    with pytest.raises(error, match=re.escape(message)) as info:
        collect_frames(uri.format(tmp=tmp_path), count, tmp_path / "calib", interval_s=interval)
    assert "\n" not in str(info.value)


def test_unwritable_out_dir_fails_before_reading(tmp_path: Path) -> None:
    src = image_folder(tmp_path / "src", 2)
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(ExportError, match=r"output folder .*file\.txt/calib: not writable") as info:
        collect_frames(str(src), 2, blocker / "calib")
    assert "\n" not in str(info.value)


class _FakeLive:
    """A live source yielding a frame per read, with a fake clock advancing 0.25 s per read."""

    live = True
    uri = "fake://cam"

    def __init__(self) -> None:
        self.reads = 0
        self.now = 0.0

    def read(self, timeout: float | None = None) -> object:
        from edgeseg.structures import Frame

        self.reads += 1
        self.now += 0.25
        return Frame(flat(FIRST_LEVEL + LEVEL_STEP * min(self.reads, 20)), self.reads, self.uri, self.now)

    def clock(self) -> float:
        return self.now

    def __enter__(self) -> _FakeLive:
        return self

    def __exit__(self, *args: object) -> None:
        pass


def test_live_source_keeps_one_frame_per_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeLive()
    monkeypatch.setattr("edgeseg.calibration.open_source", lambda uri, options: fake)
    out = tmp_path / "calib"
    assert collect_frames("fake://cam", 3, out, interval_s=1.0, clock=fake.clock) == 3
    # Reads 1, 5, 9 at 0.25 s each: one frame per second, the ones between were read and dropped.
    assert [level_of(f) for f in written(out)] == [1, 5, 9]
    assert fake.reads == 9


# --- export.calibration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "setup, message",
    [
        ("missing", "not found; expected a folder of calibration images"),
        ("empty", "no image files; expected images"),
        ("notes_only", "no image files; expected images"),
        ("all_unreadable", "none of its 2 image files decodes"),
    ],
)
def test_calibration_folder_errors(tmp_path: Path, setup: str, message: str) -> None:
    folder = tmp_path / "calib"
    if setup != "missing":
        folder.mkdir()
    if setup == "notes_only":
        (folder / "notes.txt").write_text("camera 3, north gate")
    if setup == "all_unreadable":
        (folder / "a.jpg").write_bytes(b"")
        (folder / "b.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(ExportError, match=re.escape(message)) as info:
        calibration_images(folder)
    assert str(folder) in str(info.value) and "\n" not in str(info.value)


def test_calibration_images_skip_unreadable_and_spread_the_limit(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "calib", 10)
    (folder / "img_3.png").write_bytes(b"broken")
    all_images = calibration_images(folder)
    assert [p.name for p in all_images] == [f"img_{i}.png" for i in range(10) if i != 3]
    assert [p.name for p in calibration_images(folder, limit=3)] == ["img_0.png", "img_5.png", "img_9.png"]
    with pytest.raises(ExportError, match="limit 0"):
        calibration_images(folder, limit=0)


def test_reader_feeds_exactly_what_the_runtime_preprocessor_makes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    paths = []
    for i, shape in enumerate([(48, 64, 3), (80, 40, 3)]):
        paths.append(tmp_path / f"im{i}.png")
        cv2.imwrite(str(paths[-1]), rng.integers(0, 256, shape, dtype=np.uint8))
    norm = Normalization(mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7))
    spec = CalibrationInput("images", (64, 64), norm)
    reader = PreprocessedReader(paths, spec, flip=True, progress=False)
    feeds = []
    while (feed := reader.get_next()) is not None:
        feeds.append(feed["images"])
    assert len(feeds) == 4 and len(reader) == 2
    pre = Preprocessor(norm)
    for i, path in enumerate(paths):
        image = cv2.imread(str(path))
        for j, variant in enumerate([image, image[:, ::-1].copy()]):
            tensor, _ = pre(variant, (64, 64))  # type: ignore[misc]
            np.testing.assert_array_equal(feeds[2 * i + j], tensor)
            pre.release(tensor)
    reader.set_range(1, 2)
    second = reader.get_next()
    assert second is not None
    np.testing.assert_array_equal(second["images"], feeds[2])


def test_runtime_collector_imports_neither_torch_nor_onnx() -> None:
    """``edgeseg.calibration`` runs on the device, where only the runtime's dependencies exist."""
    code = "import sys, edgeseg.calibration; print(sorted({'torch', 'onnx'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
