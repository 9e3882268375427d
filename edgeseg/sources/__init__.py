"""Frame sources, picked by URI as on Jetson tooling (jetson-utils' ``videoSource``).

``open_source(uri, options)`` is the one entry point: a small registry maps each URI scheme to
the class that reads it, and a plain path is sorted into video file, image, folder or glob by
what is on disk. ``describe_sources()`` is the usage text for the CLI help.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from edgeseg.errors import SourceError
from edgeseg.sources.base import Source, SourceOptions
from edgeseg.sources.fsnames import os_error_text, printable_name
from edgeseg.sources.images import ImageSource
from edgeseg.sources.live import CSISource, LiveSource, NetworkStreamSource, V4L2Source
from edgeseg.sources.uri import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    has_glob_magic,
    is_image_path,
    is_video_path,
    mask_credentials,
    split_scheme,
)
from edgeseg.sources.video import VideoFileSource

__all__ = [
    "CSISource",
    "ImageSource",
    "LiveSource",
    "NetworkStreamSource",
    "SCHEMES",
    "Source",
    "SourceOptions",
    "V4L2Source",
    "VideoFileSource",
    "describe_sources",
    "open_source",
]

Opener = Callable[[str, SourceOptions], Source]

#: Prefix of Linux video device nodes, which are V4L2 cameras when given as a plain path.
V4L2_DEVICE_PREFIX = "/dev/video"
#: Options used when the caller gives none (frozen, so sharing one instance is safe).
DEFAULT_OPTIONS = SourceOptions()


def _open_path(uri: str, options: SourceOptions) -> Source:
    """A ``file://`` URI or a plain path: a video file, an image, a folder or a glob of images."""
    _, text = split_scheme(uri)
    if not text:
        raise SourceError(f"{uri!r}: expected a file, folder or glob after file://")
    try:
        path = Path(text).expanduser()
        is_dir, is_file = path.is_dir(), path.is_file()
    except (OSError, ValueError, RuntimeError) as exc:  # a name too long, a NUL byte, an unknown ~user
        raise SourceError(
            f"{printable_name(mask_credentials(uri))}: expected a video file, an image, a folder or a glob, "
            f"cannot look it up ({os_error_text(exc)})"
        ) from None
    if is_dir:
        return ImageSource.from_folder(uri, path, options)
    if is_file:
        if is_video_path(path):
            return VideoFileSource(uri, path, options)
        if is_image_path(path):
            return ImageSource(uri, [path], options)
        raise SourceError(
            f"{printable_name(uri)}: expected a video ({' '.join(sorted(VIDEO_EXTENSIONS))}) or an image "
            f"({' '.join(sorted(IMAGE_EXTENSIONS))}), found a {path.suffix or 'suffix-less'} file"
        )
    if has_glob_magic(text):
        return ImageSource.from_glob(uri, text, options)
    raise SourceError(
        f"{printable_name(uri)}: no such file or folder; expected a video file, an image, a folder or a glob"
    )


#: URI scheme to the class (or function) that opens it; plain paths go to ``_open_path``.
SCHEMES: dict[str, Opener] = {
    "v4l2": V4L2Source,
    "csi": CSISource,
    "rtsp": NetworkStreamSource,
    "rtsps": NetworkStreamSource,
    "http": NetworkStreamSource,
    "https": NetworkStreamSource,
    "file": _open_path,
}

_USAGE: tuple[str, ...] = (
    V4L2Source.USAGE, CSISource.USAGE, NetworkStreamSource.USAGE, VideoFileSource.USAGE, ImageSource.USAGE,
)


def open_source(uri: str, options: SourceOptions = DEFAULT_OPTIONS) -> Source:
    """The source for ``uri``; ``SourceError`` with a one-line reason when there is none.

    Live sources open lazily and never fail on an unreachable camera or stream (they retry);
    files, folders and globs are checked here, so a typo fails at once.
    """
    if not uri.strip():
        raise SourceError(
            "empty source URI; expected e.g. v4l2:///dev/video0, csi://0, rtsp://host/path, "
            "http://host/stream, a video file, an image, a folder or a glob"
        )
    scheme, _ = split_scheme(uri)
    if scheme is None:
        if uri.startswith(V4L2_DEVICE_PREFIX):
            return V4L2Source(uri, options)
        return _open_path(uri, options)
    opener = SCHEMES.get(scheme)
    if opener is None:
        raise SourceError(
            f"{printable_name(mask_credentials(uri))}: unknown source scheme {scheme!r}; expected one of "
            f"{', '.join(s + '://' for s in SCHEMES)} or a path"
        )
    return opener(uri, options)


def describe_sources() -> str:
    """One usage line per kind of source, for the CLI's ``--help``."""
    return "\n".join(_USAGE)
