"""Checks that an output path can be written, done when a sink is built.

A sink that only finds out at the first frame (or, for COCO results, at close, after an hour of
evaluation) that its path is unusable wastes the run. These helpers create what is missing and
turn every ``OSError`` into a one-line ``SinkError`` that names the path.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgeseg.errors import SinkError


def prepare_file(path: str | os.PathLike[str]) -> Path:
    """Create the parent directories of an output file and check that the file can be written."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SinkError(f"cannot create the directory of output file {str(target)!r}: {exc}") from exc
    if target.is_dir():
        raise SinkError(f"output file {str(target)!r} is a directory")
    if not os.access(target.parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise SinkError(f"output file {str(target)!r} is not writable")
    return target


def prepare_directory(path: str | os.PathLike[str]) -> Path:
    """Create an output directory (and its parents) and check that it can be written."""
    target = Path(path)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SinkError(f"cannot create output directory {str(target)!r}: {exc}") from exc
    if not os.access(target, os.W_OK):
        raise SinkError(f"output directory {str(target)!r} is not writable")
    return target
