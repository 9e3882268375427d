"""Test helpers for the dashboard: a recording ``Controls``, synthetic frame results (with
hand-made ``Analytics`` records where a test needs tracks, zones and events), and headless
Chromium for the browser tests.

``RecordingControls`` records every call for tests that need to see what the dashboard asked
for (which setter, with what, when); it is a test helper, not part of the package. Given a
``FrameProcessor`` it changes the confidence threshold and NMS mode by the daemon's own path:
the real ``DaemonControls`` over a ``Session`` that owns the processor's settings (which
``FrameProcessor.finish`` reads once per frame: the change reaches the next frames). A test that
needs no recorder uses ``DaemonControls`` itself (``session_controls``).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from edgeseg.analytics.types import Analytics, Crossing, Event, TrackUpdate, TrackView, ZoneUpdate
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


def track_event(
    track_id: int, kind: str = "new", class_name: str = "person", zones: Sequence[str] = (),
    timestamp: float = 1_700_000_000.0, reasons: Sequence[str] = (), **document: Any,
) -> Event:
    """An event message as the events stage makes it, with a document of the usual fields (and a
    mask, which the dashboard leaves out); ``reasons`` default to the type; ``document`` adds or
    replaces fields."""
    doc: Dict[str, Any] = {  # the fields of edgeseg/schemas/event.v1.json
        "type": kind, "event_id": f"ev-{track_id}", "track_id": track_id, "camera": "test",
        "class": class_name, "class_id": 0, "time": timestamp, "score": {"best": 0.9, "current": 0.8},
        "start_time": timestamp, "end_time": timestamp if kind == "end" else None,
        "zones": {z: {"entered_at": timestamp, "left_at": None, "dwell_s": 0.0, "visits": 1, "loitering": False}
                  for z in zones},
        "current_zones": list(zones), "crossings": [], "reasons": list(reasons) or [kind],
        "best": {"frame_id": 1, "time": timestamp, "box": [1.0, 2.0, 3.0, 4.0], "score": 0.9,
                 "mask": {"format": "rle", "size": [240, 320], "counts": "x" * 64}},
        "path": [[2.0, 3.0, timestamp]],
    }
    doc.update(document)
    return Event(kind, f"ev-{track_id}", track_id, tuple(reasons) or (kind,), doc)  # type: ignore[arg-type]


def with_analytics(
    result: FrameResult,
    track_ids: Sequence[int] = (),
    trails: Optional[Mapping[int, Sequence[Tuple[float, float]]]] = None,
    occupancy: Optional[Mapping[str, Mapping[str, int]]] = None,
    crossings: Sequence[Tuple[str, int, str]] = (),
    events: Sequence[Event] = (),
) -> FrameResult:
    """``result`` with ``Analytics`` made by hand (no tracker): ``track_ids`` per instance (-1 for
    none; default none tracked), trails per track, zone occupancy, crossings as (line, track,
    direction), and event messages."""
    instances = result.instances
    ids = np.array(list(track_ids) or [-1] * len(instances), np.int32)
    stamp = result.frame.timestamp
    views = tuple(
        TrackView(int(t), int(instances.class_ids[i]), instances.class_names[int(instances.class_ids[i])],
                  "confirmed", tuple(float(v) for v in instances.boxes[i]), float(instances.scores[i]), i,
                  (0.0, 0.0), False, stamp, stamp, 1)  # type: ignore[arg-type]
        for i, t in enumerate(ids) if t >= 0
    )
    analytics = Analytics(
        tracks=TrackUpdate(result.frame.frame_id, stamp, ids, views),
        zones=ZoneUpdate(
            occupancy=dict(occupancy or {}),
            crossings=tuple(Crossing(line, track, direction, stamp)  # type: ignore[arg-type]
                            for line, track, direction in crossings),
        ),
        events=tuple(events),
        trails={int(k): tuple((float(x), float(y)) for x, y in v) for k, v in (trails or {}).items()},
    )
    return dataclasses.replace(result, analytics=analytics)


# -- headless Chromium (Debian's chromium and chromium-driver, driven by Selenium) ---------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1440,1000",
)


def chromium_missing() -> Optional[str]:
    """Why a browser test cannot run here, or None."""
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        return "needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "needs selenium (pip install selenium)"
    return None


def start_chromium(profile: Path) -> Any:
    """A headless Chromium under Selenium, offline, keeping the console log (``get_log``)."""
    import os

    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never try to download anything
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
