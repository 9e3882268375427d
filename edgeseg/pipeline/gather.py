"""How the inference stage takes frames from many cameras: round-robin batches with a deadline.

Each camera has its own hand-off buffer. The inference stage sweeps them in turn, starting one
camera further on each time, and takes at most one frame per camera per sweep, so a camera
that floods (a file read as fast as it decodes) gets one slot per round like every other. Once
it holds a first frame it waits at most ``gather_s`` for the cameras that have not given one yet
to fill the batch, then runs what it has: a slow or stalled camera delays the others by that
deadline at most, and never when every camera already gave a frame.

``Gatherer.wake`` is the one signal the producers give (any camera's frame arrived); the
buffers themselves stay the pipeline's double buffers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Callable, List, Optional, Protocol, TypeVar

T = TypeVar("T")


class Queue(Protocol[T]):  # type: ignore[misc]  # the protocol is generic over what it yields
    """A camera's input buffer as the gatherer sees it (``DoubleBuffer``)."""

    def get(self, timeout: Optional[float] = None) -> Optional[T]: ...

    def __len__(self) -> int: ...


class Gatherer:
    """Round-robin batches across queues; ``wake`` from producers, ``take`` from consumers."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._version = 0
        self._start = 0

    def wake(self) -> None:
        """A producer put a frame (or closed its queue): wake a consumer waiting for one."""
        with self._cond:
            self._version += 1
            self._cond.notify_all()

    def _wait(self, seen: int, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._version != seen, timeout)

    def _sweep(self, queues: Sequence[Queue[T]], room: Callable[[int], int], taken: List[int], limit: int,
               out: List[T], given: set) -> None:
        """One pass over the queues from the rotating start: at most one item each, and none from
        a queue whose room (now, less what this call took) is used up."""
        n = len(queues)
        for k in range(n):
            if len(out) >= limit:
                return
            i = (self._start + k) % n
            if room(i) - taken[i] <= 0:
                continue
            item = queues[i].get(timeout=0)
            if item is not None:
                out.append(item)
                given.add(i)
                taken[i] += 1

    def take(self, queues: Sequence[Queue[T]], limit: int, gather_s: float, wait_s: float,
             active: Optional[Sequence[bool]] = None, room: Optional[Callable[[int], int]] = None) -> List[T]:
        """Up to ``limit`` items, round-robin; [] when none came within ``wait_s``.

        Args:
            queues: the cameras' buffers, in a stable order.
            limit: the batch size (the engine's, or what the config asks for).
            gather_s: after the first item, how long to wait for cameras that gave none yet.
            wait_s: how long to wait for a first item.
            active: per queue, whether it may still produce (a camera whose capture ended is
                not waited for); default all.
            room: queue index -> how many items it may give now, asked again at every sweep (a
                camera whose results still wait for its output thread gives none: its slow
                output never holds up the others); default no limit.
        """
        if not queues or limit < 1:
            return []
        alive = list(active) if active is not None else [True] * len(queues)
        room_of: Callable[[int], int] = room if room is not None else (lambda _i: limit)
        taken = [0] * len(queues)
        out: List[T] = []
        given: set = set()
        deadline = self._clock() + wait_s
        while True:
            with self._cond:
                seen = self._version
            self._sweep(queues, room_of, taken, limit, out, given)
            if out:
                break
            left = deadline - self._clock()
            if left <= 0:
                return out
            self._wait(seen, left)
        # More sweeps take the frames already waiting (a camera may give a second one when the
        # batch is larger than the number of cameras); then wait only for cameras with none yet.
        gather_until = self._clock() + gather_s
        while len(out) < limit:
            with self._cond:
                seen = self._version
            before = len(out)
            self._sweep(queues, room_of, taken, limit, out, given)
            if len(out) > before:
                continue
            waiting_for = [i for i in range(len(queues)) if i not in given and alive[i] and room_of(i) - taken[i] > 0]
            left = gather_until - self._clock()
            if not waiting_for or left <= 0:
                break
            self._wait(seen, left)
        self._start = (self._start + 1) % len(queues)
        return out
