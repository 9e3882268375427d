"""Log lines for journald: one line per record, the level as an sd-daemon priority prefix.

Under systemd, stdout goes to the journal; a ``<3>`` prefix makes journald store the line at
priority err, so ``journalctl -p warning -u edgeseg`` works. From a terminal the usual
``LEVEL name: message`` form is used instead.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Literal

#: sd-daemon(3) priorities per logging level.
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

LogFormat = Literal["auto", "journald", "plain"]


class JournaldFormatter(logging.Formatter):
    """``<priority>logger: message``, with any traceback folded onto the same record."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        text = super().format(record).replace("\n", " | ")
        return f"<{priority}>{text}"


def configure_service_logging(level: str, fmt: LogFormat = "auto") -> None:
    """Log to stdout, journald-style when run by systemd (JOURNAL_STREAM set) or asked to."""
    journald = fmt == "journald" or (fmt == "auto" and bool(os.environ.get("JOURNAL_STREAM")))
    handler = logging.StreamHandler(sys.stdout)
    if journald:
        handler.setFormatter(JournaldFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
