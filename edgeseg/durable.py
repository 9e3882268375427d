"""Writes that survive a crash or a power cut: whole files by rename, directories flushed.

A device behind a camera loses power without warning. A file replaced in place can be left
half-written; a rename whose directory entry was never flushed can vanish. The engine store, the
device-local plans and the TensorRT builder all write through these two helpers.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Union


def fsync_dir(path: Path) -> None:
    """Flush ``path``'s directory entries (renames and new files in it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: Union[bytes, memoryview]) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never half.

    A temporary file beside the target, flushed to disk, then renamed over it: an interrupted
    write (a build killed, the power gone) leaves no truncated file for anyone to hash or load.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
