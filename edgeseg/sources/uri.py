"""Reading source URIs: scheme, path, file kinds, and a log-safe form.

Kept apart from the sources themselves so that the registry in ``__init__`` and every source
agree on what a URI means, and so that credentials are masked in one place only.
"""

from __future__ import annotations

import re
from pathlib import Path

#: Suffixes (lower case) that OpenCV decodes as still images.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm",
     ".pnm", ".jp2", ".sr", ".ras"}
)
#: Suffixes (lower case) that are opened as video files through FFmpeg.
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".flv",
     ".wmv", ".ogv", ".3gp", ".h264", ".264", ".h265", ".265", ".hevc", ".mjpeg", ".mjpg"}
)

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.DOTALL)
#: ``user:password@`` right after ``scheme://``, anywhere in a text; the password may be empty.
_CREDENTIALS = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)([^/@:\s]*):([^/@\s]*)@")
_GLOB_MAGIC = re.compile(r"[*?[]")
_DIGITS = re.compile(r"(\d+)")


def split_scheme(uri: str) -> tuple[str | None, str]:
    """(lower-case scheme, the rest after ``://``), or (None, uri) for a plain path.

    Not ``urllib.parse``: it reads ``file://clip.mp4`` as host ``clip.mp4`` with an empty path,
    while Jetson tooling means the relative file ``clip.mp4``.
    """
    match = _SCHEME.match(uri)
    if match is None:
        return None, uri
    return match.group(1).lower(), match.group(2)


def mask_credentials(uri: str) -> str:
    """``uri`` (or any text holding URIs) with passwords replaced by ``***``, for log lines,
    errors and frame metadata."""
    return _CREDENTIALS.sub(r"\1\2:***@", uri)


def has_glob_magic(text: str) -> bool:
    """True when ``text`` contains glob wildcards (``*``, ``?``, ``[``)."""
    return _GLOB_MAGIC.search(text) is not None


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def is_video_path(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def natural_key(path: Path) -> tuple[tuple[int, int | str], ...]:
    """Sort key that puts ``img2.jpg`` before ``img10.jpg`` (numbers compare as numbers).

    Each piece is tagged (0 for numbers, 1 for text) so that numbers and text never compare
    directly, which would raise in Python 3.
    """
    text = str(path)
    parts = tuple((0, int(p)) if p.isdigit() else (1, p.lower()) for p in _DIGITS.split(text) if p)
    return (*parts, (1, text))  # the full text last: "img01" and "img1" still sort the same way
