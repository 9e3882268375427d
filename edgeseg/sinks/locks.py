"""One writer per output file: an exclusive, non-blocking ``flock`` held while a sink is open.

Two runs appending to the same JSONL interleave partial writes and lose lines without a word;
two video writers on one file make neither readable. Every file sink takes this lock when it
is built, so the second writer is refused at once, in one line that names the file, instead of
corrupting what the first one writes. ``flock`` locks belong to the open file, so the lock goes
away with the process (no stale lock after a crash) and a daemon's reload, which closes the old
sinks before it opens the new ones, takes it over without a conflict.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import IO, Any

from edgeseg.errors import SinkError

LOG = logging.getLogger(__name__)

LOCK_BESIDE_TRIES = 3
"""Attempts at a lock file that its previous holder is removing at the same moment."""


def lock_exclusive(file: IO[Any], path: Path) -> None:
    """Lock ``file`` (open on ``path``) for this writer, or close it and raise ``SinkError``.

    A filesystem without ``flock`` (some network mounts answer ENOLCK) is written without the
    lock and said so once, rather than refusing an output that used to work.
    """
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.close()
        raise SinkError(
            f"output file {str(path)!r} is being written by another sink or process (locked); "
            "refusing a second writer"
        ) from None
    except OSError as exc:
        LOG.warning("cannot lock output file %r (%s); a second writer would not be refused", str(path), exc)


def open_locked(path: Path, truncate: bool = False, output: Path | None = None) -> IO[str]:
    """``path`` opened for appending text and locked; emptied only AFTER the lock is held, so
    that a refused second writer never truncates the first one's file. Errors name ``output``
    (default ``path``)."""
    named = output if output is not None else path
    try:
        file = path.open("a", encoding="utf-8")
    except OSError as exc:
        raise SinkError(f"cannot open output file {str(path)!r}: {exc}") from exc
    lock_exclusive(file, named)
    if truncate:
        try:
            file.truncate(0)
        except OSError as exc:
            file.close()
            raise SinkError(f"cannot empty output file {str(path)!r}: {exc}") from exc
    return file


def lock_beside(path: Path) -> IO[str]:
    """Lock a hidden ``.NAME.lock`` next to ``path``, for outputs replaced by rename (whose inode,
    and so a lock on the file itself, changes at every write). :func:`unlock_beside` removes it.

    A lock taken on a lock file that its holder removed meanwhile protects nothing, so the lock
    is kept only if the name still leads to the locked file; otherwise it is taken again.
    """
    lock_path = _beside(path)
    for _ in range(LOCK_BESIDE_TRIES):
        file = open_locked(lock_path, output=path)
        try:
            if os.fstat(file.fileno()).st_ino == os.stat(lock_path).st_ino:
                return file
        except FileNotFoundError:
            pass
        file.close()
    raise SinkError(f"output file {str(path)!r}: cannot take its lock {str(lock_path)!r} (it keeps changing)")


def unlock_beside(path: Path, file: IO[str] | None) -> None:
    """Remove the lock file of :func:`lock_beside` (while still holding it), then release it."""
    if file is None or file.closed:
        return
    try:
        os.unlink(_beside(path))
    except OSError:
        pass  # already gone: nothing is left behind either way
    release(file)


def _beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


def release(file: IO[Any] | None) -> None:
    """Close a lock file (which releases its lock); closing twice is harmless."""
    if file is not None and not file.closed:
        try:
            file.close()
        except OSError:  # pragma: no cover - closing a read-only use cannot fail in practice
            pass


__all__ = ["lock_beside", "lock_exclusive", "open_locked", "release", "unlock_beside"]
