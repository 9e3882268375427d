"""/metrics per camera: the camera families beside the totals, parsed back by the 0.0.4 grammar
checker of test_monitor.py, from a stand-in pipeline whose ``cameras()`` gives the pipeline's own
``CameraStats`` records."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, List

import pytest
from test_monitor import parse_exposition, value_of

from edgeseg.monitor.metrics import CAMERA_COUNTERS, Registry, camera_families, render_metrics
from edgeseg.pipeline.cameras import CameraStats

CAMERA_FAMILIES = [family for _, family, _ in CAMERA_COUNTERS] + ["camera_online", "camera_fps"]
TOTALS = ["frames_captured_total", "frames_processed_total", "frames_dropped_total", "frames_skipped_total",
          "instances_total", "sink_errors_total", "frames_in_flight", "fps_average"]

GATE = CameraStats(name="gate", uri="rtsp://***@10.0.0.5/stream", live=True, online=True, captured=120,
                   processed=100, dropped=18, skipped=0, restarts=2, fps=14.5)
YARD = CameraStats(name="yard-2", uri="/data/yard.mp4", live=False, online=False, captured=40, processed=40,
                   dropped=0, skipped=3, restarts=0, fps=0.0)


class _Times:
    def summaries(self) -> dict[str, Any]:
        return {}


def fake_pipeline(cameras: Any = None) -> Any:
    """What render_metrics reads of a pipeline: the totals, and ``cameras()`` when given."""
    counters = SimpleNamespace(captured=160, processed=140, instances=700, sink_errors=1, fps=12.0)
    pipeline = SimpleNamespace(counters=counters, drops=18, source=SimpleNamespace(skipped=3), times=_Times())
    if cameras is not None:
        pipeline.cameras = cameras
    return pipeline


def test_two_cameras_each_family_labelled_beside_the_totals() -> None:
    page = render_metrics(fake_pipeline(lambda: [GATE, YARD]))
    families = parse_exposition(page)
    for name in CAMERA_FAMILIES:
        family = families["edgeseg_" + name]
        assert [s[1] for s in family["samples"]] == [{"camera": "gate"}, {"camera": "yard-2"}], name
    assert families["edgeseg_camera_frames_captured_total"]["type"] == "counter"
    assert families["edgeseg_camera_restarts_total"]["type"] == "counter"
    assert families["edgeseg_camera_online"]["type"] == "gauge"
    assert families["edgeseg_camera_fps"]["type"] == "gauge"
    expected = {
        "camera_frames_captured_total": (120, 40), "camera_frames_processed_total": (100, 40),
        "camera_frames_dropped_total": (18, 0), "camera_frames_skipped_total": (0, 3),
        "camera_restarts_total": (2, 0), "camera_online": (1, 0), "camera_fps": (14.5, 0),
    }
    for name, (gate, yard) in expected.items():
        assert value_of(families, "edgeseg_" + name, camera="gate") == gate, name
        assert value_of(families, "edgeseg_" + name, camera="yard-2") == yard, name
    # Today's totals are all there, unlabelled and unchanged.
    for name in TOTALS:
        assert families["edgeseg_" + name]["samples"][0][1] == {}, name
    assert value_of(families, "edgeseg_frames_captured_total") == 160
    assert value_of(families, "edgeseg_frames_dropped_total") == 18


@pytest.mark.parametrize("cameras", [None, lambda: []])
def test_no_camera_families_without_cameras(cameras: Any) -> None:
    """A pipeline without ``cameras()`` (or with none) shows the page exactly as before."""
    with_cameras = render_metrics(fake_pipeline(cameras))
    assert "camera" not in with_cameras
    assert with_cameras == render_metrics(fake_pipeline())


def test_camera_label_values_are_escaped() -> None:
    """Names are topic-safe once validated; the page stays parseable whatever it is given."""
    odd = SimpleNamespace(name='a"b\\c\nd', captured=1, processed=1, dropped=0, skipped=0, restarts=0,
                          online=True, fps=1.0)
    reg = Registry()
    camera_families(reg, [odd])
    page = reg.render()
    assert 'camera="a\\"b\\\\c\\nd"' in page
    families = parse_exposition(page)
    assert value_of(families, "edgeseg_camera_frames_captured_total", camera='a"b\\c\nd') == 1


def test_camera_families_follow_the_cameras_as_they_change() -> None:
    """Each page reads ``cameras()`` again: a camera added at a reload appears, a removed one goes."""
    current: List[CameraStats] = [GATE]
    pipeline = fake_pipeline(lambda: list(current))
    first = parse_exposition(render_metrics(pipeline))
    assert [s[1]["camera"] for s in first["edgeseg_camera_fps"]["samples"]] == ["gate"]
    current[:] = [YARD]
    second = parse_exposition(render_metrics(pipeline))
    assert [s[1]["camera"] for s in second["edgeseg_camera_fps"]["samples"]] == ["yard-2"]
