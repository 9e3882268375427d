"""Still images as a source: one file, a folder, or a glob, in natural order.

Field data is messy: a folder copied off an SD card holds notes, zero-byte files and JPEGs cut
short by a pulled card. None of that may stop a batch run, so every unreadable item costs one
warning line naming the file and why, and is skipped; only "nothing to read at all" is an error.
"""

from __future__ import annotations

import glob
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np

from edgeseg.errors import SourceError
from edgeseg.sources.base import DEFAULT_MAX_PIXELS, Source, SourceOptions
from edgeseg.sources.fsnames import os_error_text, printable_name
from edgeseg.sources.imageheader import image_size
from edgeseg.sources.uri import IMAGE_EXTENSIONS, is_image_path, mask_credentials, natural_key
from edgeseg.structures import Frame, ImageArray

logger = logging.getLogger(__name__)

#: JPEG start-of-image and end-of-image markers.
JPEG_SOI = b"\xff\xd8"
JPEG_EOI = b"\xff\xd9"
#: The first bytes of every PNG file, and the type of its mandatory last chunk.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: The whole IEND chunk: zero length, type, and its CRC (constant, as the chunk has no data).
PNG_IEND_CHUNK = b"\x00\x00\x00\x00IEND\xaeB`\x82"
#: At most this many names are listed in the one line about files without an image extension.
MAX_NAMES_IN_LOG = 10
#: Channel counts of grayscale and BGRA images, converted to BGR on decode.
GRAY_CHANNELS = 1
BGR_CHANNELS = 3
BGRA_CHANNELS = 4
#: A file whose image size cannot be read from its header is decoded only up to this size: an
#: uncompressed image of 4 MiB is a 1.4 MP RGB image, and OpenCV's pixel limit bounds the rest.
UNKNOWN_HEADER_MAX_BYTES = 4 * 1024 * 1024


def truncation_reason(data: bytes | np.ndarray) -> str | None:
    """Why an encoded JPEG or PNG is incomplete, or None when its end marker is present.

    OpenCV 4's ``imdecode`` returns a half-grey image for a JPEG cut short (libjpeg only warns),
    which would go through the pipeline as a real frame. A JPEG must end with EOI (FF D9); some
    cameras pad files with zeros after it, which is allowed. A PNG must end with its IEND chunk.
    Other formats are left to the decoder, which rejects their truncation itself.
    """
    raw = data.tobytes() if isinstance(data, np.ndarray) else data
    if raw.startswith(JPEG_SOI):
        if not raw.rstrip(b"\x00").endswith(JPEG_EOI):
            return "truncated JPEG (no end-of-image marker FF D9)"
    elif raw.startswith(PNG_SIGNATURE):
        if raw.rfind(PNG_IEND_CHUNK) < 0:  # rfind: some writers append bytes after IEND
            return "truncated PNG (no IEND chunk at the end)"
    return None


def to_bgr8(image: np.ndarray) -> ImageArray:
    """HxWx3 uint8 BGR, the pipeline's one format, from a grey, BGR or BGRA uint8 image.

    Raises ``ValueError`` for anything else, so a camera in an unexpected pixel format fails
    with its shape named rather than somewhere inside preprocessing.
    """
    if image.dtype != np.uint8:
        raise ValueError(f"expected an 8-bit image, got {image.dtype}")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == GRAY_CHANNELS):
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.ndim == 3 and image.shape[2] == BGRA_CHANNELS:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim != 3 or image.shape[2] != BGR_CHANNELS:
        raise ValueError(f"expected a grey, BGR or BGRA image, got shape {image.shape}")
    return np.ascontiguousarray(image)


def _pixel_limit_reason(raw: bytes, max_pixels: int) -> str | None:
    """Why an encoded image must not be decoded for its size, or None when it may be.

    The size comes from the header (``imageheader``), before any pixel is allocated. A format
    whose header is not read there is decoded only when the file is small, as its decoded size
    is then bounded by what such a file can hold; OpenCV's ``OPENCV_IO_MAX_IMAGE_PIXELS`` (set
    in ``edgeseg/__init__``) bounds what is left.
    """
    size = image_size(raw)
    if size is None:
        if len(raw) > UNKNOWN_HEADER_MAX_BYTES:
            return (
                f"image size unreadable from its header and the file ({len(raw)} bytes) is over "
                f"{UNKNOWN_HEADER_MAX_BYTES} bytes; not decoded (decompression bomb guard)"
            )
        return None
    width, height = size
    if width * height > max_pixels:
        return (
            f"image of {width}x{height} = {width * height / 1e6:.1f} MP is over source.max_pixels = "
            f"{max_pixels / 1e6:.1f} MP; not decoded (decompression bomb guard)"
        )
    return None


def decode_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[ImageArray | None, str]:
    """(BGR image, "") or (None, why it cannot be used) for one file; never raises.

    ``np.fromfile`` + ``cv2.imdecode`` rather than ``cv2.imread``: it reads any path (non-UTF-8
    names included, on which ``imread`` crashes the process, see ``fsnames``) and hands us the
    bytes, so truncation and the header's size (``max_pixels``) are checked before decoding.
    """
    try:
        data = np.fromfile(os.fspath(path), dtype=np.uint8)
    except (OSError, ValueError) as exc:
        return None, f"cannot read file ({os_error_text(exc)})"
    if data.size == 0:
        return None, "empty file (0 bytes)"
    raw = data.tobytes()
    reason = truncation_reason(raw) or _pixel_limit_reason(raw, max_pixels)
    if reason is not None:
        return None, reason
    # IMREAD_COLOR: grey and BGRA become BGR, 16-bit becomes 8-bit, EXIF orientation is applied
    # (as cv2.imread does, which is what the model's reference evaluation used).
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error as exc:  # e.g. over OPENCV_IO_MAX_IMAGE_PIXELS: OpenCV 4 raises, 5 returns None
        return None, f"not a decodable image ({printable_name(str(exc).strip().splitlines()[-1])})"
    if image is None:
        return None, f"not a decodable image ({data.size} bytes)"
    try:
        return to_bgr8(image), ""
    except ValueError as exc:
        return None, str(exc)


def _is_regular_file(path: Path) -> bool:
    """``path.is_file()``, False where the file system refuses to say (a name too long, EACCES)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _visible_files(paths: Sequence[Path]) -> list[Path]:
    """Regular files, hidden ones (``.DS_Store``, editor swap files) left out, in natural order."""
    return sorted((p for p in paths if not p.name.startswith(".") and _is_regular_file(p)), key=natural_key)


class ImageSource(Source):
    """A finite list of image files, read one per ``read()``; nothing is ever dropped."""

    USAGE: ClassVar[str] = (
        "  image.jpg | dir/ | 'dir/*.jpg'       an image, or a folder or glob of images in natural order"
    )
    live = False

    def __init__(
        self, uri: str, paths: Sequence[Path], options: SourceOptions, not_images: Sequence[Path] = ()
    ) -> None:
        """``paths`` are read in the given order; ``not_images`` were listed but cannot be images.

        Raises ``SourceError`` when ``paths`` is empty, naming what was found instead.
        """
        self.uri = uri
        self._safe_uri = printable_name(mask_credentials(uri))
        self._paths = list(paths)
        self._options = options
        self._index = 0
        self._next_id = 0
        self._bad: set[int] = set()
        self._skipped = len(not_images)
        self._closed = False
        if not_images:
            names = ", ".join(printable_name(p.name) for p in not_images[:MAX_NAMES_IN_LOG])
            more = len(not_images) - MAX_NAMES_IN_LOG
            logger.warning(
                "%s: skipping %d file(s) without an image extension: %s%s",
                self._safe_uri, len(not_images), names, f" and {more} more" if more > 0 else "",
            )
        if not self._paths:
            found = f"only {len(not_images)} non-image file(s)" if not_images else "nothing"
            raise SourceError(
                f"{self._safe_uri}: expected image files ({' '.join(sorted(IMAGE_EXTENSIONS))}), "
                f"found {found}"
            )

    @classmethod
    def from_folder(cls, uri: str, folder: Path, options: SourceOptions) -> ImageSource:
        """The images directly inside ``folder`` (not recursive), in natural order."""
        try:
            entries = list(folder.iterdir())
        except OSError as exc:
            raise SourceError(
                f"{printable_name(mask_credentials(uri))}: expected a readable folder of images, "
                f"cannot list it ({os_error_text(exc)})"
            ) from None
        return cls._from_files(uri, _visible_files(entries), options)

    @classmethod
    def from_glob(cls, uri: str, pattern: str, options: SourceOptions) -> ImageSource:
        """The files matching ``pattern`` (``**`` recurses), in natural order."""
        try:
            expanded = str(Path(pattern).expanduser())
        except RuntimeError as exc:  # ~user of an unknown user
            raise SourceError(f"{printable_name(mask_credentials(uri))}: {os_error_text(exc)}") from None
        matches = glob.glob(expanded, recursive=True)  # glob skips what it cannot list or stat
        return cls._from_files(uri, _visible_files([Path(p) for p in matches]), options)

    @classmethod
    def _from_files(cls, uri: str, files: Sequence[Path], options: SourceOptions) -> ImageSource:
        images = [p for p in files if is_image_path(p)]
        return cls(uri, images, options, [p for p in files if not is_image_path(p)])

    def read(self, timeout: float | None = None) -> Frame | None:
        """The next image; ``None`` for an unreadable one (logged, counted) and at the end.

        ``timeout`` is not needed: a file read does not wait on anything external.
        """
        if self._closed:
            return None
        while True:
            if self._index >= len(self._paths):
                if not self._options.loop:
                    return None
                if len(self._bad) == len(self._paths):
                    raise SourceError(
                        f"{self._safe_uri}: expected at least one readable image to loop over, "
                        f"all {len(self._paths)} failed to decode"
                    )
                self._index = 0
            position = self._index
            self._index += 1
            if position not in self._bad:  # a file known bad is reported once, not every loop
                break
        path = self._paths[position]
        image, reason = decode_image(path, self._options.max_pixels)
        if image is None:
            self._bad.add(position)
            self._skipped += 1
            logger.warning("%s: skipping %s: %s", self._safe_uri, printable_name(str(path)), reason)
            return None
        frame = Frame(
            image=image, frame_id=self._next_id, source=self._safe_uri, timestamp=time.time(), name=path.name
        )
        self._next_id += 1
        return frame

    @property
    def exhausted(self) -> bool:
        """True after the last image of a non-looping source, and after ``close()``."""
        return self._closed or (not self._options.loop and self._index >= len(self._paths))

    @property
    def length(self) -> int:
        """Images in one pass, unreadable ones included (they are found only on reading)."""
        return len(self._paths)

    @property
    def skipped(self) -> int:
        return self._skipped

    def close(self) -> None:
        self._closed = True
