"""The hand-off between two pipeline threads: two slots, one mutex, two condition variables.

The producer waits on "slot free" and the consumer on "slot filled". In lossless mode (files,
folders, and every hand-off after capture) a full buffer makes the producer wait, so nothing is
lost. In newest-only mode (live cameras and streams) a full buffer drops its oldest item
instead, counts the drop and hands the dropped item to ``on_drop`` so that pooled memory goes
back to its pool; the consumer always gets the freshest frame.

``close()`` marks the end of the stream: the consumer drains what is left and then gets None.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable, Generic, TypeVar

T = TypeVar("T")

#: The number of slots: one being read while the other is written.
SLOTS = 2


class DoubleBuffer(Generic[T]):
    """A two-slot bounded hand-off between one producer and one consumer thread."""

    def __init__(self, newest_only: bool = False, on_drop: Callable[[T], None] | None = None, slots: int = SLOTS):
        self.newest_only = newest_only
        #: Capacity: two by default; a camera's output buffer holds as many as it may have in flight.
        self.slots = slots
        #: Gets each dropped item (pooled memory goes back); settable until the first put.
        self.on_drop = on_drop
        self._slots: deque[T] = deque()
        self._lock = threading.Lock()
        self._filled = threading.Condition(self._lock)
        self._free = threading.Condition(self._lock)
        self._closed = False
        self.drops = 0

    def put(self, item: T, timeout: float | None = None) -> bool:
        """Hand ``item`` over. False if the buffer was closed or, lossless, no slot freed in time."""
        dropped: T | None = None
        with self._lock:
            if self._closed:
                return False
            if len(self._slots) >= self.slots:
                if self.newest_only:
                    dropped = self._slots.popleft()
                    self.drops += 1
                elif not self._free.wait_for(lambda: len(self._slots) < self.slots or self._closed, timeout):
                    return False
                elif self._closed:
                    return False
            self._slots.append(item)
            self._filled.notify()
        if dropped is not None and self.on_drop is not None:
            self.on_drop(dropped)
        return True

    def get(self, timeout: float | None = None) -> T | None:
        """The oldest item, waiting up to ``timeout``; None on timeout or once closed and drained."""
        with self._lock:
            if not self._filled.wait_for(lambda: bool(self._slots) or self._closed, timeout):
                return None
            if not self._slots:
                return None
            item = self._slots.popleft()
            self._free.notify()
            return item

    def close(self) -> None:
        """No more items will be put; wake everyone waiting."""
        with self._lock:
            self._closed = True
            self._filled.notify_all()
            self._free.notify_all()

    @property
    def closed_and_empty(self) -> bool:
        with self._lock:
            return self._closed and not self._slots

    def __len__(self) -> int:
        with self._lock:
            return len(self._slots)
