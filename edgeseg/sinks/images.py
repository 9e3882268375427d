"""``images:DIR`` (or ``video:DIR``): each annotated frame as a JPEG in a directory.

Files are named after the frame's file name (``000139.png`` -> ``000139.jpg``) so an annotated
image sits beside its input by name; frames without a name (cameras, streams) become
``frame_000042.jpg``.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2

from edgeseg.errors import SinkError
from edgeseg.sinks.annotate import annotate
from edgeseg.sinks.base import Sink
from edgeseg.sinks.paths import prepare_directory
from edgeseg.sources.fsnames import os_error_text, printable_name
from edgeseg.structures import Frame, FrameResult

JPEG_QUALITY = 90
"""Visually clean annotations at about a third of the size of quality 100."""
JPEG_SUFFIX = ".jpg"


def annotated_file_name(frame: Frame) -> str:
    """The JPEG name for a frame: its file name's stem, else its zero-padded id."""
    stem = Path(frame.name).stem if frame.name else ""
    return f"{stem}{JPEG_SUFFIX}" if stem else f"frame_{frame.frame_id:06d}{JPEG_SUFFIX}"


class ImageDirSink(Sink):
    """Writes each frame, annotated, as a JPEG into a directory (created if missing)."""

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = prepare_directory(directory)
        self.files_written = 0
        self._closed = False

    def write(self, result: FrameResult) -> None:
        if self._closed:
            raise SinkError(f"image sink {str(self.directory)!r} is closed")
        target = self.directory / annotated_file_name(result.frame)
        name = printable_name(str(target))
        image = annotate(result.frame.image, result.instances)
        # Encoded here and written by Python, not cv2.imwrite: OpenCV crashes on a file name that
        # is not UTF-8 (an input named caf\xe9.jpg gives caf\xe9.jpg here), Python writes any name.
        try:
            encoded, data = cv2.imencode(JPEG_SUFFIX, image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        except cv2.error as exc:
            raise SinkError(f"cannot encode annotated image {name!r}: {exc}") from exc
        if not encoded:
            raise SinkError(f"cannot encode annotated image {name!r}")
        try:
            with open(target, "wb") as file:
                file.write(data.tobytes())
        except (OSError, ValueError) as exc:
            raise SinkError(f"cannot write annotated image {name!r}: {os_error_text(exc)}") from exc
        self.files_written += 1

    def close(self) -> None:
        self._closed = True
