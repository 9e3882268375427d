"""``jsonl:PATH``: one frame result per line, in the shared frame-result schema.

Each line is flushed as it is written, so a killed daemon (SIGKILL, power loss of the process)
leaves every finished frame on disk and at most one partial last line.

Several cameras share one file: every camera's results go into it, in the order they are
written, and each line's ``camera`` (schema version 3) says whose it is.
"""

from __future__ import annotations

import json
import os
from typing import IO, Any

from edgeseg.errors import SinkError
from edgeseg.sinks.base import MaskFormat, Sink
from edgeseg.sinks.locks import open_locked
from edgeseg.sinks.paths import prepare_file
from edgeseg.sinks.serialize import frame_result_to_dict
from edgeseg.structures import FrameResult

JSON_SEPARATORS = (",", ":")
"""Compact JSON: no spaces, the lines are for machines."""


class JsonLinesFile(Sink):
    """A file of JSON lines (truncated on open unless ``append``), one flushed line per document,
    holding an exclusive lock on it so that a second writer is refused instead of interleaving
    lines. ``jsonl:`` and ``events:`` differ only in which documents they write."""

    #: The sink kind, for messages ("jsonl sink 'x' is closed").
    KIND = "jsonl"

    def __init__(self, path: str | os.PathLike[str], append: bool = False):
        self.path = prepare_file(path)
        self.lines_written = 0
        # locked before it is emptied: a second writer is refused and truncates nothing
        self._file: IO[str] | None = open_locked(self.path, truncate=not append)

    def write_line(self, document: Any) -> None:
        """Append one document as a line and flush it. ``SinkError`` when closed or unwritable."""
        if self._file is None:
            raise SinkError(f"{self.KIND} sink {str(self.path)!r} is closed")
        line = json.dumps(document, separators=JSON_SEPARATORS)
        try:
            self._file.write(line + "\n")
            self._file.flush()
        except OSError as exc:
            raise SinkError(f"cannot write to {str(self.path)!r}: {exc}") from exc
        self.lines_written += 1

    def close(self) -> None:
        if self._file is None:
            return
        file, self._file = self._file, None
        try:
            file.close()
        except OSError as exc:
            raise SinkError(f"cannot close {str(self.path)!r}: {exc}") from exc


class JsonlSink(JsonLinesFile):
    """Writes frame results as JSON lines (``jsonl:PATH``)."""

    def __init__(self, path: str | os.PathLike[str], mask_format: MaskFormat = "rle", append: bool = False):
        super().__init__(path, append)
        self.mask_format: MaskFormat = mask_format

    def write(self, result: FrameResult) -> None:
        if self._file is None:  # before serialising: a closed sink says so whatever the frame
            raise SinkError(f"{self.KIND} sink {str(self.path)!r} is closed")
        self.write_line(frame_result_to_dict(result, self.mask_format))
