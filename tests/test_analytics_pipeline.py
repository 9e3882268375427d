"""Tracking, zones and events wired end to end: ``run --track`` and ``serve`` on the demo bundle.

The parts are tested alone (test_tracker, test_zones, test_events, test_mqtt_events,
test_dashboard_analytics); here the real pipeline runs them on a real video made by the
synthetic generator's runtime twin (the demo bundle's own self-test images, moved across a
background), and what leaves edgeseg (files, a real Mosquitto) is checked: frame results v2
with track ids, every event's ``new`` and ``end`` exactly once, one-line refusals at start.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List

import cv2
import jsonschema
import numpy as np
import pytest
from mosquitto import MISSING_REASON, MOSQUITTO, Mosquitto, Subscriber

from edgeseg.cli import main
from edgeseg.service.daemon import Daemon

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "engines" / "demo"
FRAMES = 40


def _video(path: Path, frames: int = FRAMES) -> Path:
    """One of the demo bundle's self-test images panning across a wider grey frame, 10 fps: its
    shapes (the bundle finds them well) move together, 3 px a frame."""
    image = cv2.imread(str(sorted((DEMO / "selftest").glob("*.jpg"))[0]))
    height, width = image.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (width + 3 * frames, height))
    assert writer.isOpened()
    for i in range(frames):
        frame = np.full((height, width + 3 * frames, 3), 114, np.uint8)
        frame[:, 3 * i:3 * i + width] = image
        writer.write(frame)
    writer.release()
    return path


def _schema(name: str) -> Dict[str, Any]:
    return json.loads((ROOT / "edgeseg" / "schemas" / name).read_text())  # type: ignore[no-any-return]


def _lines(path: Path) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_run_track_writes_v3_results_and_each_event_begins_and_ends_once(tmp_path: Path) -> None:
    video = _video(tmp_path / "clip.mp4")
    results, events = tmp_path / "results.jsonl", tmp_path / "events.jsonl"
    code = main(["run", "--model", str(DEMO), "--source", str(video), "--track", "--camera", "yard",
                 "--sink", f"jsonl:{results}", "--sink", f"events:{events}", "--log-level", "warning"])
    assert code == 0
    frames = _lines(results)
    assert len(frames) == FRAMES
    v3 = _schema("frame_result.v3.json")
    for doc in frames:
        jsonschema.validate(doc, v3)
        assert doc["version"] == 3 and doc["camera"] == "yard"
        assert all("track_id" in i for i in doc["instances"])
    ids = [i["track_id"] for doc in frames for i in doc["instances"] if i["track_id"] is not None]
    assert ids, "no instance was tracked"
    docs = _lines(events)
    event_schema = _schema("event.v1.json")
    for doc in docs:
        jsonschema.validate(doc, event_schema)
        assert doc["camera"] == "yard"
    kinds = Counter((d["event_id"], d["type"]) for d in docs)
    opened = {e for e, t in kinds if t == "new"}
    ended = {e for e, t in kinds if t == "end"}
    assert opened and opened == ended  # every event that began ended (the run stopped), and only those
    assert all(kinds[(e, "new")] == 1 and kinds[(e, "end")] == 1 for e in opened)
    tracked = {d["track_id"] for d in docs}
    assert tracked <= set(ids)  # events are about tracks that frame results carry


def test_run_without_track_writes_v3_results_without_track_ids(tmp_path: Path) -> None:
    video = _video(tmp_path / "clip.mp4", frames=3)
    results = tmp_path / "results.jsonl"
    assert main(["run", "--model", str(DEMO), "--source", str(video), "--sink", f"jsonl:{results}",
                 "--log-level", "warning"]) == 0
    for doc in _lines(results):
        jsonschema.validate(doc, _schema("frame_result.v3.json"))
        assert doc["version"] == 3 and doc["camera"] == "clip"
        assert all("track_id" not in i for i in doc["instances"])


@pytest.mark.parametrize(
    ("yaml", "field"),
    [
        ("tracker:\n  enabled: true\nzones:\n  - name: far\n    points: [[5000, 5000], [6000, 5000], [6000, 6000]]\n",
         "zones.0.points"),
        ("tracker:\n  enabled: true\nzones:\n  - name: z\n    points: [[0, 0], [10, 0], [10, 10]]\n"
         "    classes: [unicorn]\n", "zones.0.classes"),
        ("zones:\n  - name: z\n    points: [[0, 0], [10, 0], [10, 10]]\n", "tracker"),
        ("tracker:\n  enabled: true\nlines:\n  - name: l\n    points: [[5, 5], [5, 5]]\n", "lines.0.points"),
        ("tracker:\n  enabled: true\n  low_threshold: 0.9\n", "tracker.low_threshold"),
    ],
)
def test_bad_analytics_config_is_refused_at_start_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               yaml: str, field: str) -> None:
    video = _video(tmp_path / "clip.mp4", frames=3)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml)
    results = tmp_path / "results.jsonl"
    code = main(["run", "--config", str(cfg), "--model", str(DEMO), "--source", str(video),
                 "--sink", f"jsonl:{results}", "--log-level", "warning"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and err[0].startswith("edgeseg: ") and field in err[0], err
    assert "Traceback" not in err[0]
    assert not results.exists() or results.read_text() == ""  # refused before any frame was written


@pytest.mark.skipif(MOSQUITTO is None, reason=MISSING_REASON)
def test_serve_publishes_each_event_begin_and_end_exactly_once_over_mqtt(tmp_path: Path) -> None:
    """The daemon, a file source that ends: events over MQTT at QoS 1, ``end`` once when it stops."""
    video = _video(tmp_path / "clip.mp4")
    with Mosquitto(tmp_path / "broker") as broker:
        sub = Subscriber(broker.uri, ("edgeseg/#",), client_id="analytics-test")
        try:
            cfg = tmp_path / "config.yaml"
            cfg.write_text(
                f"model:\n  path: {DEMO}\n  threads: 1\n"
                f"source:\n  uri: {video}\n  name: gate\n"
                f"tracker:\n  enabled: true\n"
                f"zones:\n  - name: left\n    coordinates: normalized\n"
                f"    points: [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]\n"
                f"mqtt:\n  uri: {broker.uri}\n  device_id: cam1\n  reconnect_min_s: 1\n  reconnect_max_s: 1\n"
                f"  queue:\n    path: {tmp_path / 'queue.db'}\n"
                f"engines:\n  pid_file: {tmp_path / 'edgeseg.pid'}\n"
            )
            daemon = Daemon(str(cfg))
            thread = threading.Thread(target=daemon.run, daemon=True)
            thread.start()
            thread.join(120)  # the file ends, the daemon drains and exits
            assert not thread.is_alive()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                docs = sub.payloads("/events")
                if docs and {d["event_id"] for d in docs if d["type"] == "new"} <= \
                        {d["event_id"] for d in docs if d["type"] == "end"}:
                    break
                time.sleep(0.1)
            docs = sub.payloads("/events")
            counts = sub.payloads("/zones/left/circle") + sub.payloads("/zones/left/ring")
        finally:
            sub.close()
    assert docs, "no event arrived"
    assert all(d["camera"] == "gate" for d in docs)
    kinds = Counter((d["event_id"], d["type"]) for d in docs)
    opened = {e for e, t in kinds if t == "new"}
    assert opened == {e for e, t in kinds if t == "end"}
    assert all(kinds[(e, "new")] == 1 and kinds[(e, "end")] == 1 for e in opened)
    assert counts, "no retained zone count arrived"
