"""Collect INT8 calibration frames from any source URI, spread over time.

Runs on the device, next to the camera the model will see in the field (``edgeseg calibration
collect``), so it imports only what the runtime imports: no torch, no onnx. Calibration wants
frames that show the variety of the deployment (lighting, traffic, empty and busy scenes), not
sixty near-identical frames from one second, so frames are spread over the whole source:

* a file or folder whose length is known: ``count`` evenly spaced frame indices over the whole
  of it (read through once, keeping the chosen ones; a chosen image that fails to decode is
  replaced by the next readable one);
* a file whose length the container does not report: one pass to count, one to keep;
* a live source (camera, stream): one frame every ``interval_s`` seconds until ``count``.

Frames are written as ``calib_000000.jpg``, ``calib_000001.jpg`` ... Numbering continues after
the calib_ files already in the folder, so sessions at different times of day add up.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from edgeseg.errors import ExportError
from edgeseg.progress import progress_bar
from edgeseg.sources import Source, SourceOptions, open_source
from edgeseg.sources.uri import mask_credentials
from edgeseg.structures import ImageArray

log = logging.getLogger(__name__)

#: File name of the i-th collected frame.
FRAME_NAME = "calib_{:06d}.jpg"
_FRAME_PATTERN = re.compile(r"^calib_(\d+)\.jpg$")
#: JPEG quality: high enough that compression artefacts do not shift activation ranges.
JPEG_QUALITY = 95
#: Longest single wait on a live source, seconds (the loop goes on until ``count`` frames).
READ_TIMEOUT_S = 1.0

Clock = Callable[[], float]


def _check_args(count: int, interval_s: float) -> None:
    if count < 1:
        raise ExportError(f"calibration collect: count {count}: expected at least 1 frame")
    if not interval_s > 0:
        raise ExportError(f"calibration collect: interval {interval_s} s: expected a positive number of seconds")


def _prepare_out_dir(out_dir: Path) -> int:
    """Create ``out_dir``, prove it writable, and return the first free frame number."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ExportError(
            f"calibration collect: output folder {out_dir}: not writable ({exc.strerror or exc}); "
            f"expected a folder this user can create files in"
        ) from None
    numbers = [int(m.group(1)) for p in out_dir.iterdir() if (m := _FRAME_PATTERN.match(p.name))]
    return max(numbers) + 1 if numbers else 0


def evenly_spaced(length: int, count: int) -> list[int]:
    """``count`` distinct indices spread evenly over ``0 .. length - 1``, first and last included."""
    if length <= 0:
        return []
    if count >= length:
        return list(range(length))
    if count == 1:
        return [length // 2]
    return sorted({int(i) for i in np.linspace(0, length - 1, count).round()})


class _Writer:
    """Writes frames as numbered JPEGs; counts them."""

    def __init__(self, out_dir: Path, first: int) -> None:
        self.out_dir = out_dir
        self.next_number = first
        self.written = 0

    def write(self, image: ImageArray) -> None:
        path = self.out_dir / FRAME_NAME.format(self.next_number)
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise ExportError(f"calibration collect: cannot encode a {image.shape} frame as JPEG for {path}")
        try:
            path.write_bytes(data.tobytes())
        except OSError as exc:
            raise ExportError(f"calibration collect: cannot write {path} ({exc.strerror or exc})") from None
        self.next_number += 1
        self.written += 1


def _count_frames(source: Source) -> int:
    """Frames a finite source delivers in one pass (reads it through)."""
    n = 0
    while not source.exhausted:
        if source.read() is not None:
            n += 1
    return n


def _collect_finite(source: Source, length: int, count: int, writer: _Writer) -> None:
    """Keep the frames at evenly spaced positions of a finite source of ``length`` positions.

    A position is one ``read`` call; an image folder returns None for an unreadable file, whose
    pick then goes to the next readable frame, so one bad file does not cost a calibration image.
    """
    picks = set(evenly_spaced(length, count))
    owed = 0
    position = 0
    with progress_bar(length, "collect") as bar:
        while not source.exhausted and writer.written < count:
            frame = source.read()
            if position in picks:
                owed += 1
            position += 1
            bar.update(1)
            if frame is not None and owed > 0:
                writer.write(frame.image)
                owed -= 1
    if writer.written < min(count, length):
        log.warning("%s: ended after %d frames, %d expected; wrote %d of the %d frames asked for",
                    mask_credentials(source.uri), position, length, writer.written, count)


def _collect_live(source: Source, count: int, interval_s: float, writer: _Writer, clock: Clock) -> None:
    """Keep one frame every ``interval_s`` seconds; read continuously so the kept one is fresh."""
    due = float("-inf")
    with progress_bar(count, "collect") as bar:
        while writer.written < count:
            frame = source.read(READ_TIMEOUT_S)
            if frame is None:
                continue
            now = clock()
            if now >= due:
                writer.write(frame.image)
                bar.update(1)
                due = now + interval_s


def collect_frames(
    uri: str,
    count: int,
    out_dir: Path,
    interval_s: float = 1.0,
    options: SourceOptions | None = None,
    clock: Clock = time.monotonic,
) -> int:
    """Write up to ``count`` frames of ``uri`` spread over time into ``out_dir``; return how many.

    Finite sources give fewer frames when they hold fewer; live sources run until ``count``.
    Raises ``SourceError`` for a URI that cannot be opened and ``ExportError`` for bad
    arguments or an output folder that cannot be written, both before any frame is read.
    """
    _check_args(count, interval_s)
    out_dir = Path(out_dir)
    writer = _Writer(out_dir, _prepare_out_dir(out_dir))
    # A looping finite source never ends: collection reads a file or folder exactly once.
    options = replace(options or SourceOptions(), loop=False)
    with open_source(uri, options) as source:
        if source.live:
            _collect_live(source, count, interval_s, writer, clock)
        else:
            length = source.length
            if length is None:
                length = _count_frames(source)
                with open_source(uri, options) as second:
                    _collect_finite(second, length, count, writer)
            else:
                _collect_finite(source, length, count, writer)
    log.info("calibration collect: wrote %d frames of %s to %s", writer.written, mask_credentials(uri), out_dir)
    return writer.written
