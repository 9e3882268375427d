"""The Session, the one owner of the running pipeline's state: settings as the user set them plus
the picker's effort level, fixed resolution against the picker, generations; the daemon's
controls over it; a reload through the real daemon. On the repository's demo bundle only."""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import pytest

from edgeseg.adaptive.controller import AdaptiveController, effort_settings
from edgeseg.adaptive.ladder import ModelLadder
from edgeseg.config.adaptive import AdaptiveConfig
from edgeseg.config.dashboard import DashboardConfig
from edgeseg.dashboard.feed import DashboardSink
from edgeseg.dashboard.server import DashboardServer
from edgeseg.model import LoadOptions, Model
from edgeseg.pipeline.processor import FrameProcessor
from edgeseg.postprocess import Postprocessor
from edgeseg.postprocess.settings import PostprocessSettings, RefineSettings
from edgeseg.service.controls import DaemonControls
from edgeseg.service.daemon import Daemon
from edgeseg.service.session import Session
from edgeseg.structures import Frame, FrameResult, Instances

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "engines" / "demo"
#: Refinement on and 100 detections: both effort steps (no-refine, fewer-detections) matter.
USER = PostprocessSettings(max_detections=100, refine=RefineSettings(open_px=1))
STEPS = ("no-refine", "fewer-detections")


@pytest.fixture(scope="module")
def demo() -> Iterator[Model]:
    model = LoadOptions(threads=1).load(DEMO)
    yield model
    model.close()


def processor_of(model: Model, settings: PostprocessSettings = USER) -> FrameProcessor:
    return FrameProcessor(model, Postprocessor(settings, model.spec.class_names))


# -- settings as the user set them, effort on top: a table ---------------------------------------

Step = Tuple[str, Any]  # ("user", {field: value}) or ("effort", level)

SETTINGS_ROWS: List[Tuple[str, List[Step], Dict[str, Any], int]] = [
    ("user change, then effort", [("user", {"conf_threshold": 0.5}), ("effort", 1)],
     {"conf_threshold": 0.5}, 1),
    ("effort, then user change", [("effort", 2), ("user", {"conf_threshold": 0.5})],
     {"conf_threshold": 0.5}, 2),
    ("the issue: change under lowered effort, then full effort",
     [("effort", 2), ("user", {"conf_threshold": 0.5}), ("effort", 0)], {"conf_threshold": 0.5}, 0),
    ("changes at two levels, one down, then full effort",
     [("effort", 2), ("user", {"nms": "hard"}), ("effort", 1), ("user", {"conf_threshold": 0.3}), ("effort", 0)],
     {"nms": "hard", "conf_threshold": 0.3}, 0),
    ("the same field twice, under effort", [("effort", 1), ("user", {"conf_threshold": 0.4}),
                                           ("user", {"conf_threshold": 0.45})], {"conf_threshold": 0.45}, 1),
]


@pytest.mark.parametrize(("steps", "user_changes", "effort"), [r[1:] for r in SETTINGS_ROWS],
                         ids=[r[0] for r in SETTINGS_ROWS])
def test_effective_settings_are_the_users_at_the_effort_level(demo: Model, steps: List[Step],
                                                             user_changes: Dict[str, Any], effort: int) -> None:
    processor = processor_of(demo)
    session = Session()
    session.adopt(processor)
    for kind, value in steps:
        if kind == "user":
            session.change_settings(**value)
        else:
            session.apply_effort(STEPS, value)
    user = replace(USER, **user_changes)
    view = session.view()
    assert view is not None and view.settings == user and view.effort == effort
    assert processor.postprocessor.settings == effort_settings(user, STEPS, effort) == view.effective
    if effort == 0:
        assert processor.postprocessor.settings == user  # max_detections 100 and refinement back


def test_concurrent_writers_leave_the_derived_settings(demo: Model) -> None:
    """Dashboard threads and the picker at once: whatever the interleaving, what the processor
    runs is the user's last settings at the last effort level, never a mix read back."""
    processor = processor_of(demo)
    session = Session()
    session.adopt(processor)
    barrier = threading.Barrier(4)

    def dashboard(offset: int) -> None:
        barrier.wait()
        for i in range(300):
            session.change_settings(conf_threshold=round(0.1 + (offset + i % 50) / 1000, 3))

    def picker() -> None:
        barrier.wait()
        for i in range(300):
            session.apply_effort(STEPS, i % 3)

    threads = [threading.Thread(target=dashboard, args=(k,)) for k in range(3)] + [threading.Thread(target=picker)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    view = session.view()
    assert view is not None and view.effort == 2  # the picker's last call: 299 % 3
    assert view.settings == replace(USER, conf_threshold=view.settings.conf_threshold)
    assert processor.postprocessor.settings == effort_settings(view.settings, STEPS, 2)
    session.apply_effort(STEPS, 0)
    assert processor.postprocessor.settings == view.settings


# -- fixed resolution against the picker ----------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


IMAGE = np.zeros((240, 320, 3), np.uint8)


def result(size: int, infer_ms: float, frame_id: int = 0) -> FrameResult:
    frame = Frame(IMAGE, frame_id, "memory://", 0.0)
    return FrameResult(frame, Instances.empty((240, 320), ("a",)), "m", (size, size),
                       {"capture": 1.0, "preprocess": 1.0, "infer": infer_ms, "decode": 0.5, "postprocess": 1.0})


INFER_MS = {320: 40.0, 416: 40.0 * (416 / 320) ** 2}


def feed(session: Session, controller: AdaptiveController, clock: Clock, n: int, scale: float,
         size: Optional[int] = None) -> None:
    """``n`` results through the Session, as the pipeline's output thread gives them."""
    for i in range(n):
        s = size or controller.picker.current.size
        period = INFER_MS[s] * scale
        clock.t += period / 1000
        session.observe(result(s, period, i))


def picker_session(demo: Model) -> Tuple[Session, AdaptiveController, FrameProcessor, Clock]:
    """A Session owning a processor at 320, with a picker over 320 and 416 (one backend, two specs)."""
    m416 = Model(replace(demo.spec, input_size=(416, 416)), demo.backend, demo.engine, demo.bundle)
    ladder = ModelLadder(demo, (320, 416), held={416: m416}, kind="bundle")
    processor = processor_of(demo)
    session = Session()
    clock = Clock()
    config = AdaptiveConfig(enabled=True, target_fps=10.0, min_dwell_s=1.0, min_dwell_frames=8, warmup_frames=2,
                            ewma_alpha=0.3)
    controller = AdaptiveController(processor, ladder, config, clock=clock, owner=session)
    session.adopt(processor, controller)
    return session, controller, processor, clock


def test_fixed_resolution_suspends_the_picker_and_auto_resumes_it(demo: Model) -> None:
    session, controller, processor, clock = picker_session(demo)
    feed(session, controller, clock, 10, scale=3.0)  # 320 at 8.3 FPS: nothing cheaper in size
    assert controller.picker.current.effort == 1 and not processor.postprocessor.settings.refine.enabled
    switches = controller.state().switches

    session.set_resolution(416)
    view = session.view()
    assert view is not None and view.fixed_size == 416 and processor.input_size == (416, 416)
    assert view.effort == 0 and processor.postprocessor.settings == USER  # pinned: the user's settings in full
    feed(session, controller, clock, 40, scale=3.0, size=416)  # overloaded, but the picker is suspended
    assert controller.state().switches == switches and processor.input_size == (416, 416)

    session.set_resolution(None)  # auto: the picker's rung again, size and effort
    view = session.view()
    assert view is not None and view.fixed_size is None and processor.input_size == (320, 320)
    assert view.effort == 1 and processor.postprocessor.settings == effort_settings(USER, STEPS, 1)
    assert controller.state().reason.startswith("resumed at 320/no-refine")
    feed(session, controller, clock, 80, scale=0.5)  # the load is gone (1.6 s): the picker decides again
    assert controller.state().switches > switches
    assert session.view().effort == 0 and processor.postprocessor.settings == USER  # type: ignore[union-attr]


def test_a_size_off_the_ladder_is_refused_and_changes_nothing(demo: Model) -> None:
    session, controller, processor, _ = picker_session(demo)
    with pytest.raises(ValueError, match=r"resolution 512: expected one of \[320, 416\] or auto"):
        session.set_resolution(512)
    view = session.view()
    assert view is not None and view.fixed_size is None and processor.input_size == (320, 320)
    assert session.resolutions() == [320, 416]


# -- generations ------------------------------------------------------------------------------------


def test_a_new_generation_keeps_nothing_stale(demo: Model) -> None:
    session, controller, old, clock = picker_session(demo)
    feed(session, controller, clock, 10, scale=3.0)
    session.change_settings(conf_threshold=0.6)
    session.set_resolution(416)
    assert session.end() is None  # a bare processor: no generation to close
    assert session.view() is None
    with pytest.raises(ValueError, match="restarting"):
        session.change_settings(conf_threshold=0.7)
    with pytest.raises(ValueError, match="restarting"):
        session.set_resolution(320)
    session.apply_effort(STEPS, 2)  # a late call from the old picker changes nothing
    assert old.postprocessor.settings == replace(USER, conf_threshold=0.6)

    configured = replace(USER, conf_threshold=0.35)
    new = processor_of(demo, configured)
    session.adopt(new)
    view = session.view()
    assert view is not None and (view.settings, view.effective, view.effort, view.fixed_size) == \
        (configured, configured, 0, None)
    session.change_settings(nms="hard")
    assert old.postprocessor.settings == replace(USER, conf_threshold=0.6)  # the old processor is left alone


def test_a_daemon_reload_starts_from_the_configuration(tmp_path: Path) -> None:
    """Dashboard changes and a fixed resolution belong to the generation they were made on."""
    images = tmp_path / "imgs"
    images.mkdir()
    for p in sorted((DEMO / "selftest").glob("*.jpg"))[:2]:
        (images / p.name).write_bytes(p.read_bytes())
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        f"model:\n  path: {DEMO}\n  threads: 1\nsource:\n  uri: {images}\n  loop: true\n"
        f"postprocess:\n  conf_threshold: 0.3\n"
        f"adaptive:\n  enabled: true\n  latency_budget_ms: 60000\n"
        f"engines:\n  pid_file: {tmp_path / 'edgeseg.pid'}\n"
    )
    daemon = Daemon(str(cfg))
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: daemon.stats().get("frames", 0) > 0, "the first frames")
        first = daemon.session.generation
        daemon.controls.set_conf_threshold(0.6)
        daemon.controls.set_resolution(320)
        state = daemon.controls.state()
        assert (state["conf_threshold"], state["resolution"], state["resolutions"]) == (0.6, 320, [320])
        daemon.request_reload()
        wait_for(lambda: daemon.reloads == 1 and daemon.session.generation is not None, "the reload")
        second = daemon.session.generation
        assert second is not None and second is not first
        state = daemon.controls.state()
        assert (state["conf_threshold"], state["resolution"]) == (0.3, "auto")
        assert second.runtime.processor.postprocessor.settings.conf_threshold == 0.3
    finally:
        daemon.request_stop()
        thread.join(60)
    assert not thread.is_alive() and daemon.session.generation is None


def wait_for(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- the daemon's controls over the Session --------------------------------------------------------


def test_controls_state_and_refusals(demo: Model) -> None:
    switched: List[Tuple[str, bool]] = []
    session, _, processor, _ = picker_session(demo)
    controls = DaemonControls(session, lambda uri, loop: switched.append((uri, loop)))
    controls.set_conf_threshold(0.45)
    controls.set_nms("linear")
    assert processor.postprocessor.settings == replace(USER, conf_threshold=0.45, nms="linear")
    assert controls.state() == {"conf_threshold": 0.45, "nms": "linear", "resolution": "auto", "source": "",
                                "paused": False, "resolutions": [320, 416]}
    controls.set_resolution(416)
    assert controls.state()["resolution"] == 416
    with pytest.raises(ValueError, match="restarting"):
        controls.set_source("/data/clip.mp4")  # no running configuration: no source to switch from
    with pytest.raises(ValueError, match="restarting"):
        controls.set_paused(True)
    session.end()
    assert controls.state() == {} and controls.resolutions() == []
    with pytest.raises(ValueError, match="restarting"):
        controls.set_conf_threshold(0.5)
    assert switched == []


def test_a_dashboard_request_reaches_the_processor_through_the_session(demo: Model) -> None:
    from dashboard_controls import session_controls

    processor = processor_of(demo)
    controls, session = session_controls(processor)
    session.apply_effort(STEPS, 2)  # the picker has lowered effort
    with DashboardServer(DashboardConfig(port=0), DashboardSink(), controls, dict) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            conn.request("POST", "/api/control", json.dumps({"conf_threshold": 0.55, "nms": "hard"}).encode(),
                         {"Content-Type": "application/json"})
            response = conn.getresponse()
            answer = json.loads(response.read())
        finally:
            conn.close()
    assert response.status == 200, answer
    assert answer["applied"] == ["conf_threshold", "nms"] and answer["controls"]["conf_threshold"] == 0.55
    user = replace(USER, conf_threshold=0.55, nms="hard")
    assert processor.postprocessor.settings == effort_settings(user, STEPS, 2)
    session.apply_effort(STEPS, 0)
    assert processor.postprocessor.settings == user
