"""The C allocator's large-block policy, set once at start: big buffers go back to the system.

Frames, input tensors, network outputs and mask temporaries are numpy arrays of hundreds of KB to
several MB, allocated and freed at every frame by several threads (one capture and one output
thread per camera). glibc's malloc serves blocks above its mmap threshold with ``mmap`` and
returns them at ``free``; but by default the threshold *rises* to the size of any mmapped block
freed, so after the first frames such buffers come from per-thread heaps (arenas) that keep the
memory: measured here with yolov8n-seg at 640, that added about 40 MB of resident memory per
camera. Fixing the threshold (``mallopt(M_MMAP_THRESHOLD)``, which also turns its adjustment
off) keeps those buffers mmapped: 4 cameras in one process went from 363 to 318 MB peak and one
camera from 243 to 220 MB, at the same speed (``benchmarks/bench_cameras.py scale``).

Only on glibc (Linux, JetPack included); elsewhere, and where the user set the environment
variable ``MALLOC_MMAP_THRESHOLD_`` themselves, nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

#: glibc's mallopt parameter number for the mmap threshold (malloc.h: M_MMAP_THRESHOLD).
M_MMAP_THRESHOLD = -3
#: Blocks of this size and above are mmapped and returned at free: glibc's own default threshold.
MMAP_THRESHOLD_BYTES = 128 * 1024


def pin_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; True when it was set."""
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt): leave the allocator be
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(M_MMAP_THRESHOLD, threshold))
    if not ok:
        log.debug("mallopt(M_MMAP_THRESHOLD, %d) refused", threshold)
    return ok
