"""``images:DIR`` (or ``video:DIR``): each annotated frame as a JPEG in a directory.

Files are named after the frame's file name (``000139.png`` -> ``000139.jpg``) so an annotated
image sits beside its input by name; frames without a name (cameras, streams) become
``frame_000042.jpg``.

Several cameras (one sink shared by a ``cameras:`` list) would overwrite each other's
``frame_000042.jpg``: the first camera the sink sees writes into the given directory, each
other camera into a sibling directory with ``-<camera>`` appended (``frames`` ->
``frames-door``), created at its first frame and logged once, as the video sink names its files.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict

import cv2

from edgeseg.errors import SinkError
from edgeseg.sinks.annotate import annotate
from edgeseg.sinks.base import Sink
from edgeseg.sinks.paths import prepare_directory
from edgeseg.sinks.video import camera_path
from edgeseg.sources.fsnames import os_error_text, printable_name
from edgeseg.structures import Frame, FrameResult

JPEG_QUALITY = 90
"""Visually clean annotations at about a third of the size of quality 100."""
JPEG_SUFFIX = ".jpg"

LOG = logging.getLogger(__name__)


def annotated_file_name(frame: Frame) -> str:
    """The JPEG name for a frame: its file name's stem, else its zero-padded id."""
    stem = Path(frame.name).stem if frame.name else ""
    return f"{stem}{JPEG_SUFFIX}" if stem else f"frame_{frame.frame_id:06d}{JPEG_SUFFIX}"


class ImageDirSink(Sink):
    """Writes each frame, annotated, as a JPEG into a directory (created if missing); with several
    cameras, one directory per camera (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = prepare_directory(directory)
        self.directories: Dict[str, Path] = {}
        """camera -> the directory its images go to (cameras seen so far)."""
        self.files_written = 0
        self._closed = False

    def directory_of(self, camera: str) -> Path:
        """The directory of ``camera``'s images: the given one for the first camera seen."""
        folder = self.directories.get(camera)
        if folder is None:
            if not self.directories:
                folder = self.directory
            else:
                folder = prepare_directory(camera_path(self.directory, camera, directory=True))
                LOG.info("images: camera %s is written to %s (%s has camera %s)", camera or "(none)", folder,
                         self.directory, next(iter(self.directories)) or "(none)")
            self.directories[camera] = folder
        return folder

    def write(self, result: FrameResult) -> None:
        if self._closed:
            raise SinkError(f"image sink {str(self.directory)!r} is closed")
        target = self.directory_of(result.camera) / annotated_file_name(result.frame)
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
