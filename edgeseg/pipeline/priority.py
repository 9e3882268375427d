"""Thread scheduling priority on Linux, where each thread has its own nice value.

Raising a thread's priority (a negative nice) needs CAP_SYS_NICE; lowering another thread's is
always allowed. The inference thread therefore asks for the highest priority it can get, and the
other stage threads step down, so that inference wins the CPU in either case. Threads that a
thread creates inherit its nice value, which is how ONNX Runtime's pool threads (created when
the session loads, in the main thread) keep the default priority above the lowered stages.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)

#: Nice values tried for the inference thread, best first.
RAISED_NICE = (-20, -10, -5, -1)
#: Nice value for the capture and output threads.
LOWERED_NICE = 5


def _set_nice(value: int) -> bool:
    if not hasattr(os, "setpriority"):
        return False
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), value)
        return True
    except (PermissionError, OSError):
        return False


def raise_current_thread() -> int | None:
    """Give the calling thread the highest priority allowed; the nice value obtained, or None."""
    for nice in RAISED_NICE:
        if _set_nice(nice):
            log.debug("inference thread runs at nice %d", nice)
            return nice
    log.debug("inference thread keeps default priority (no CAP_SYS_NICE)")
    return None


def lower_current_thread() -> bool:
    """Step the calling thread down so the inference thread wins the CPU."""
    return _set_nice(LOWERED_NICE)
