"""Checks that an output path can be written, done when a sink is built.

A sink that only finds out at the first frame (or, for COCO results, at close, after an hour of
evaluation) that its path is unusable wastes the run. These helpers create what is missing and
turn every ``OSError`` (a name component over 255 bytes included) into a one-line ``SinkError``
that names the path, its undecodable bytes shown as ``\\xNN`` (``sources.fsnames``).
"""

from __future__ import annotations

import os
from pathlib import Path

from edgeseg.errors import SinkError
from edgeseg.sources.fsnames import os_error_text, printable_name


def prepare_file(path: str | os.PathLike[str]) -> Path:
    """Create the parent directories of an output file and check that the file can be written."""
    target = Path(path)
    name = printable_name(str(target))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as exc:
        raise SinkError(f"cannot create the directory of output file {name!r}: {os_error_text(exc)}") from exc
    try:
        is_dir = target.is_dir()
        writable = os.access(target.parent, os.W_OK) and (not target.exists() or os.access(target, os.W_OK))
    except (OSError, ValueError) as exc:  # a name component over 255 bytes, a NUL byte
        raise SinkError(f"output file {name!r}: cannot look it up ({os_error_text(exc)})") from None
    if is_dir:
        raise SinkError(f"output file {name!r} is a directory")
    if not writable:
        raise SinkError(f"output file {name!r} is not writable")
    return target


def prepare_directory(path: str | os.PathLike[str]) -> Path:
    """Create an output directory (and its parents) and check that it can be written."""
    target = Path(path)
    name = printable_name(str(target))
    try:
        target.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as exc:
        raise SinkError(f"cannot create output directory {name!r}: {os_error_text(exc)}") from exc
    if not os.access(target, os.W_OK):
        raise SinkError(f"output directory {name!r} is not writable")
    return target


def unused_path(path: str | os.PathLike[str]) -> Path:
    """``path``, or when a non-empty file is there, the same name with a UTC time (and a count)
    before the suffix: ``clip.mp4`` -> ``clip.20261204T141500Z.mp4``.

    For outputs that cannot be appended to (an MP4 needs its index at the end), where the service
    asks sinks to append: a reload or restart starts a new file instead of overwriting the last.
    """
    import time  # noqa: PLC0415 - only this helper needs it

    p = Path(path)
    try:
        taken = p.is_file() and p.stat().st_size > 0
    except OSError:
        return p  # prepare_file reports what is wrong with the path
    if not taken:
        return p
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for n in range(1, 1000):
        candidate = p.with_name(f"{p.stem}.{stamp}{'' if n == 1 else f'-{n}'}{p.suffix}")
        if not candidate.exists():
            return candidate
    raise SinkError(f"{printable_name(str(p))}: no unused name left beside it for a new file")
