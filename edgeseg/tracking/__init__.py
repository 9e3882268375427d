"""Multi-object tracking: identities for the instances of successive frames (ByteTrack-style).

``tracker.Tracker`` is the entry point; ``kalman`` holds the box motion model and ``matching``
the overlaps (box and mask IoU) and the assignment. Its configuration is ``edgeseg.config.tracker``.
"""

from __future__ import annotations

from edgeseg.tracking.tracker import Tracker

__all__ = ["Tracker"]
