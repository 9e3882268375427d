"""Issue 11, sink side: one writer per output file, a readable video when room runs out.

The video rows run a real writer in a subprocess under a real file-size limit
(``RLIMIT_FSIZE``, with SIGXFSZ ignored so that the failed write returns instead of killing
the process), because an in-process fake cannot show what FFmpeg leaves on disk. The result is
read back with ``cv2.VideoCapture``: before this fix an MP4 there had no ``moov`` atom at all.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict

import cv2
import pytest

from edgeseg.errors import SinkError
from edgeseg.sinks import CocoResultsSink, JsonlSink, VideoSink
from edgeseg.sinks.base import Sink

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# ------------------------------------------------------------------- (Low 11) one writer per file

OPENERS: Dict[str, Callable[[Path], Sink]] = {
    "jsonl": lambda p: JsonlSink(p),
    "jsonl-append": lambda p: JsonlSink(p, append=True),
    "coco": lambda p: CocoResultsSink(p),
    "video": lambda p: VideoSink(p),
}
NAMES = {"jsonl": "r.jsonl", "jsonl-append": "r.jsonl", "coco": "r.json", "video": "v.mp4"}


@pytest.mark.parametrize(("first", "second"), [
    ("jsonl", "jsonl"), ("jsonl", "jsonl-append"), ("jsonl-append", "jsonl"), ("coco", "coco"), ("video", "video"),
])
def test_a_second_writer_is_refused_in_one_line(tmp_path: Path, first: str, second: str) -> None:
    path = tmp_path / NAMES[first]
    sink = OPENERS[first](path)
    try:
        with pytest.raises(SinkError, match="refusing a second writer") as info:
            OPENERS[second](path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    finally:
        sink.close()
    OPENERS[second](path).close()  # the lock goes with the first writer: the next run is welcome


def test_a_refused_jsonl_writer_truncates_nothing(tmp_path: Path) -> None:
    """The lock is taken before the file is emptied: the first run's lines survive the refusal."""
    path = tmp_path / "r.jsonl"
    path.write_text('{"earlier": 1}\n', encoding="utf-8")
    sink = JsonlSink(path, append=True)
    with pytest.raises(SinkError):
        JsonlSink(path)  # would truncate
    sink.close()
    assert path.read_text(encoding="utf-8") == '{"earlier": 1}\n'


def test_a_second_writer_in_another_process_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    sink = JsonlSink(path)
    try:
        child = subprocess.run(
            [sys.executable, "-c", "import sys\nfrom edgeseg.sinks import JsonlSink\n"
             "try:\n    JsonlSink(sys.argv[1])\nexcept Exception as e:\n    print(e)\n", str(path)],
            capture_output=True, text=True, timeout=120, check=True,
        )
    finally:
        sink.close()
    assert "refusing a second writer" in child.stdout


@pytest.mark.parametrize("name", ["r.json", "sub/r.json"])
def test_coco_leaves_no_lock_file_behind(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    CocoResultsSink(path).close()
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.json"]


def test_an_unused_video_sink_leaves_no_empty_file(tmp_path: Path) -> None:
    """The lock needs the file; a sink that never got a frame removes the empty file again."""
    path = tmp_path / "v.mp4"
    VideoSink(path).close()
    assert not path.exists()


# --------------------------------------------------------- (Medium 9) a full disk, a readable file

_CHILD = """
import json, resource, signal, sys
import numpy as np
from edgeseg.errors import SinkError
from edgeseg.sinks.video import VideoSink
from edgeseg.structures import Frame, FrameResult, Instances

path, limit, frames = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
noise = np.random.default_rng(0)  # noise compresses badly: the limit is reached in a few frames
sink = VideoSink(path, fps=25)
errors = 0
for i in range(frames):
    image = noise.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    frame = Frame(image=image, frame_id=i, source="test", timestamp=0.0, name="")
    try:
        sink.write(FrameResult(frame=frame, instances=Instances.empty((240, 320), ()), model="m",
                               resolution=(320, 320), latency_ms={}))
    except SinkError as exc:
        errors += 1
        message = str(exc)
sink.close()
print(json.dumps({"written": sink.frames_written, "errors": errors, "dropped": sink.frames_dropped,
                  "complete": sink.complete, "message": message if errors else ""}))
"""


def _readable_frames(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.isOpened() and capture.read()[0]:
        count += 1
    capture.release()
    return count


@pytest.mark.parametrize(("suffix", "limit"), [
    (".mp4", 1_500_000), (".mp4", 3_000_000), (".avi", 1_500_000), (".mkv", 3_000_000),
])
def test_a_file_size_limit_leaves_a_readable_video_and_counts_errors(tmp_path: Path, suffix: str, limit: int) -> None:
    frames = 300
    path = tmp_path / f"v{suffix}"
    child = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(limit), str(frames)],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    report = json.loads(child.stdout.strip().splitlines()[-1])
    assert 0 < report["written"] < frames  # the limit was hit part-way
    assert report["errors"] == report["dropped"] == frames - report["written"]  # every lost frame counted
    assert "disk full or file-size limit" in report["message"] and "readable" in report["message"]
    assert report["complete"] is True
    assert path.stat().st_size <= limit
    assert _readable_frames(path) == report["written"]


# ------------------------------------------- a service reload never overwrites its last video


def _one_frame(sink: Sink) -> None:
    import numpy as np

    from edgeseg.structures import Frame, FrameResult, Instances

    frame = Frame(image=np.zeros((64, 64, 3), np.uint8), frame_id=0, source="test", timestamp=0.0, name="")
    sink.write(FrameResult(frame=frame, instances=Instances.empty((64, 64), ()), model="m",
                           resolution=(64, 64), latency_ms={}))


@pytest.mark.parametrize(("append", "files"), [(True, 2), (False, 1)])
def test_a_service_reload_starts_a_new_video_beside_the_last(tmp_path: Path, append: bool, files: int) -> None:
    """An MP4 cannot be appended to: where the service asks sinks to append (reloads, restarts)
    the video sink starts a new file next to the existing one; `edgeseg run` replaces it."""
    from edgeseg.sinks import create_sink
    from edgeseg.sinks.base import SinkOptions

    spec = f"video:{tmp_path / 'clip.mp4'}"
    for _ in range(2):
        sink = create_sink(spec, SinkOptions(append=append))
        _one_frame(sink)
        sink.close()
    made = sorted(p.name for p in tmp_path.glob("clip*.mp4"))
    assert len(made) == files, made
    for name in made:
        capture = cv2.VideoCapture(str(tmp_path / name))
        assert capture.read()[0], f"{name} is not readable"
        capture.release()
