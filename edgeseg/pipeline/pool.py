"""A fixed set of preallocated arrays handed out and returned, so the hot path allocates nothing.

The capture thread fills one input tensor while the inference thread reads another and up to
two more wait in the double buffer; four buffers per resolution are therefore enough, and a
fifth request blocks until one comes back (back-pressure instead of growth).
"""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt

#: Buffers per resolution: one being filled, one being inferred, two waiting in the double buffer.
DEFAULT_POOL_SIZE = 4


class BufferPool:
    """``count`` arrays of one shape and dtype, acquired and released across threads."""

    def __init__(self, shape: tuple[int, ...], dtype: npt.DTypeLike = np.float32, count: int = DEFAULT_POOL_SIZE):
        if count < 1:
            raise ValueError("a pool needs at least one buffer")
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self._all = [np.empty(shape, self.dtype) for _ in range(count)]
        self._free = list(self._all)
        self._cond = threading.Condition()

    @property
    def size(self) -> int:
        return len(self._all)

    @property
    def available(self) -> int:
        with self._cond:
            return len(self._free)

    def acquire(self, timeout: float | None = None) -> npt.NDArray[np.generic] | None:
        """A free buffer, waiting up to ``timeout`` seconds; None if none came back in time."""
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._free), timeout):
                return None
            return self._free.pop()

    def release(self, buffer: npt.NDArray[np.generic]) -> None:
        """Return a buffer obtained from ``acquire``."""
        with self._cond:
            if not any(buffer is b for b in self._all):
                raise ValueError("buffer does not belong to this pool")
            if any(buffer is b for b in self._free):
                raise ValueError("buffer released twice")
            self._free.append(buffer)
            self._cond.notify()
