"""configs/tracking.yaml, the example that docs/events.md points at: it validates (as every
configs/*.yaml does in test_config_reference.py), its zone and line are the ``crossings`` tracking
scene's truth, and its tracker, zone, line and event settings find that scene's true events when
fed the truth's own masks (no model: what is checked is the example's settings, not the demo
model's accuracy).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest
from conftest import DEMO_CLASS_NAMES

from edgeseg.config import Config, load_config
from edgeseg.config.zones import check_against

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "configs" / "tracking.yaml"
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools

FRAME_SIZE = (360, 640)  # (height, width) of `edgeseg synth --tracking-scene` videos


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(str(EXAMPLE))


def test_the_example_tracks_and_writes_events(config: Config) -> None:
    assert config.model.path == "engines/demo"
    assert config.source.uri == "out/tracks/crossings.mp4"
    assert config.camera_name() == "crossings"
    assert config.tracker.enabled
    assert [z.name for z in config.zones] == ["lot"] and [ln.name for ln in config.lines] == ["gate"]
    assert any(spec.startswith("events:") for spec in config.output.sinks)
    assert not config.events.snapshots.enabled
    assert config.mqtt.uri is None  # MQTT is only shown, commented out


def test_zones_and_lines_fit_the_demo_model_and_the_scene_frame(config: Config) -> None:
    """No unknown class, nothing outside the 640x360 frame (no refusal, no clipping note)."""
    assert check_against(config.zones, config.lines, FRAME_SIZE, DEMO_CLASS_NAMES) == ()


def test_zones_and_lines_are_the_crossings_truth(config: Config) -> None:
    scenes = pytest.importorskip("export.data.scenes", exc_type=ImportError)  # the export stage: Python 3.11+
    height, width = FRAME_SIZE
    script = scenes.SCENES["crossings"]
    zones = {name: scenes.to_pixels(points, width, height) for name, points in script.zones}
    lines = {name: scenes.to_pixels(points, width, height) for name, points in script.lines}
    assert {z.name: [list(p) for p in z.points] for z in config.zones} == zones
    assert {ln.name: [list(p) for p in ln.points] for ln in config.lines} == lines
    assert all(z.coordinates == "pixel" for z in config.zones) and all(ln.coordinates == "pixel" for ln in config.lines)


def _run_on_truth(config: Config, truth_path: Path) -> Tuple[List[Dict[str, Any]], Any]:
    """The example's analytics stage over the truth's masks (score 1), one frame per annotated frame."""
    from edgeseg.analytics.stage import AnalyticsStage
    from edgeseg.evaluation.track_truth import load_truth
    from edgeseg.evaluation.tracks import truth_instances
    from edgeseg.structures import Frame, FrameResult

    truth = load_truth(truth_path)
    names = tuple(truth.class_names[k] for k in sorted(truth.class_names))
    stage = AnalyticsStage(config.tracker, config.zones, config.lines, config.events, config.camera_name(), names)
    image = np.zeros((*truth.frame_size, 3), np.uint8)
    documents: List[Dict[str, Any]] = []
    for index in range(truth.frames):
        frame = Frame(image=image, frame_id=index, source=str(truth_path), timestamp=index / truth.fps)
        result = stage(FrameResult(frame, truth_instances(truth, index, names), "truth", truth.frame_size))
        assert result.analytics is not None
        documents += [dict(e.document) for e in result.analytics.events]
    documents += [dict(e.document) for e in stage.finish()]
    return documents, truth


def test_the_example_finds_the_scene_events_on_the_truth_masks(config: Config, tmp_path: Path) -> None:
    scenes = pytest.importorskip("export.data.scenes", exc_type=ImportError)
    scene = scenes.write_tracking_scene("crossings", tmp_path / "crossings.mp4")
    documents, truth = _run_on_truth(config, scene.annotations)

    kinds = Counter((d["track_id"], d["type"]) for d in documents)
    track_ids = sorted({d["track_id"] for d in documents})
    assert track_ids == list(range(1, len(track_ids) + 1))  # from 1, no gaps
    for track_id in track_ids:  # one event per track here: nothing stays stationary for 300 s
        assert kinds[(track_id, "new")] == 1 and kinds[(track_id, "end")] == 1

    ends = [d for d in documents if d["type"] == "end"]
    crossings = Counter((c["line"], c["direction"]) for d in ends for c in d["crossings"])
    true_crossings = Counter((c["line"], c["direction"]) for c in truth.crossings)
    assert crossings == true_crossings  # gate: 3 in (left to right), 4 out
    visited = sum(1 for d in ends if "lot" in d["zones"])
    assert visited == len({(e["track_id"], e["zone"]) for e in truth.zone_events})
    reasons = {r for d in documents for r in d["reasons"]}
    assert {"entered_zone", "left_zone", "crossed_line", "stationary"} <= reasons
