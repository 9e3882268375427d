"""Test helpers for the dashboard: a recording ``Controls`` and synthetic frame results.

``RecordingControls`` records every call for tests that need to see what the dashboard asked
for (which setter, with what, when); it is a test helper, not part of the package. Given a
``FrameProcessor`` it changes the confidence threshold and NMS mode by the daemon's own path:
the real ``DaemonControls`` over a ``Session`` that owns the processor's settings (which
``FrameProcessor.finish`` reads once per frame: the change reaches the next frames). A test that
needs no recorder uses ``DaemonControls`` itself (``session_controls``).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Optional, Tuple

import numpy as np

from edgeseg.pipeline.processor import FrameProcessor
from edgeseg.postprocess.settings import NmsMethod
from edgeseg.service.controls import DaemonControls
from edgeseg.service.session import Session
from edgeseg.structures import Frame, FrameResult, Instances

CLASS_NAMES = ("person", "bicycle", "car", "dog")


def session_controls(processor: FrameProcessor) -> Tuple[DaemonControls, Session]:
    """The daemon's controls over a Session that owns ``processor``'s settings (no daemon: a
    source switch is refused, as while a reload runs)."""
    session = Session()
    session.adopt(processor)

    def no_switch(uri: str, loop: bool) -> None:
        raise ValueError("source: no daemon to reload")

    return DaemonControls(session, no_switch), session


class RecordingControls:
    """Records every call; changes conf threshold and NMS of ``processor``, when one is given,
    through the real controls and Session."""

    def __init__(
        self,
        processor: FrameProcessor | None = None,
        source: str = "test://",
        resolutions: tuple[int, ...] = (320, 416, 512, 640),
    ):
        self.processor = processor
        self.real: Optional[DaemonControls] = None
        self.session: Optional[Session] = None
        if processor is not None:
            self.real, self.session = session_controls(processor)
        self.calls: list[tuple[str, Any, float]] = []
        self.changed = threading.Event()
        self.fail_with: Exception | None = None
        self._state: dict[str, Any] = {
            "conf_threshold": 0.25, "nms": "gaussian", "resolution": "auto", "source": source,
            "paused": False, "resolutions": list(resolutions),
        }
        if processor is not None:
            settings = processor.postprocessor.settings
            self._state["conf_threshold"] = settings.conf_threshold
            self._state["nms"] = settings.nms

    def _record(self, name: str, value: Any) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.calls.append((name, value, time.monotonic()))
        self.changed.set()

    def set_conf_threshold(self, value: float) -> None:
        self._record("conf_threshold", value)
        if self.real is not None:
            self.real.set_conf_threshold(value)
        self._state["conf_threshold"] = value

    def set_nms(self, method: NmsMethod) -> None:
        self._record("nms", method)
        if self.real is not None:
            self.real.set_nms(method)
        self._state["nms"] = method

    def set_resolution(self, size: int | None) -> None:
        self._record("resolution", size)
        self._state["resolution"] = "auto" if size is None else size

    def set_source(self, uri: str) -> None:
        self._record("source", uri)
        self._state["source"] = uri

    def set_paused(self, paused: bool) -> None:
        self._record("paused", paused)
        self._state["paused"] = paused

    def state(self) -> dict[str, Any]:
        state = dict(self._state)
        view = self.session.view() if self.session is not None else None
        if view is not None:  # the settings as the Session holds them
            state.update(conf_threshold=view.settings.conf_threshold, nms=view.settings.nms)
        return state


def synthetic_result(
    frame_id: int = 0, size: tuple[int, int] = (240, 320), class_ids: tuple[int, ...] = (0, 2, 0)
) -> FrameResult:
    """A frame with a gradient image and one box-shaped mask per class id given."""
    height, width = size
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    image[..., 1] = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
    n = len(class_ids)
    boxes = np.array([[10 + 20 * i, 10 + 10 * i, 80 + 20 * i, 90 + 10 * i] for i in range(n)], np.float32).reshape(n, 4)
    mask_boxes = boxes.astype(np.int32)
    masks = tuple(np.ones((int(b[3] - b[1]), int(b[2] - b[0])), np.bool_) for b in mask_boxes)
    instances = Instances(
        image_size=size,
        boxes=boxes,
        scores=np.linspace(0.9, 0.5, n, dtype=np.float32),
        class_ids=np.array(class_ids, np.int32),
        class_names=CLASS_NAMES,
        masks=masks,
        mask_boxes=mask_boxes.reshape(n, 4),
    )
    frame = Frame(image=image, frame_id=frame_id, source="test://", timestamp=time.time(), name=f"{frame_id}.jpg")
    return FrameResult(frame, instances, "synthetic", (320, 320), {"preprocess": 1.0, "infer": 10.0, "decode": 0.5})
