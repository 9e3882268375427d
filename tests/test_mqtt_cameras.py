"""MQTT with several cameras: per-camera topics, each camera's retained status (through a broker
outage and a clean close), Home Assistant discovery per camera, the relay that tells a new
publisher the cameras' statuses, and topics unchanged without camera topics.

Against a real Mosquitto broker on loopback (skipped where it is absent); waits have a time budget
only as a safety net, no assertion is about speed.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import jsonschema
import pytest
from mosquitto import MISSING_REASON, MOSQUITTO, Mosquitto, free_port, synthetic_result
from test_mqtt_events import BUDGET_S, Recorder, config, event, with_analytics

from edgeseg.analytics.types import Event
from edgeseg.config import parse_config
from edgeseg.config.mqtt import MqttConfig
from edgeseg.errors import ConfigError
from edgeseg.service.outputs import PersistentOutputs, Relay, unstarted_mqtt_sink
from edgeseg.sinks.base import Sink, SinkOptions
from edgeseg.sinks.disk_queue import DiskQueue
from edgeseg.sinks.homeassistant import discovery_messages
from edgeseg.sinks.mqtt import MqttSink
from edgeseg.sinks.serialize import load_schema
from edgeseg.structures import FrameResult

V3 = jsonschema.Draft202012Validator(load_schema(3))
needs_broker = pytest.mark.skipif(MOSQUITTO is None, reason=MISSING_REASON)


def on(result: FrameResult, camera: str) -> FrameResult:
    return dataclasses.replace(result, camera=camera)


def cam_event(event_id: str, camera: str, kind: str = "new", snapshot: Optional[bytes] = None) -> Event:
    """An event message of ``camera`` (its document says so, as the event manager writes it)."""
    plain = event(event_id, kind, snapshot=snapshot)
    return dataclasses.replace(plain, document={**plain.document, "camera": camera})


def live(recorder: Recorder, pattern: str) -> List[bytes]:
    """Payloads published while the recorder was subscribed (a resubscription's retained replay left out)."""
    return [p for _, p, retained, _ in recorder.on(pattern) if not retained]


def retained_now(uri: str, pattern: str, count: int) -> Dict[str, bytes]:
    """What a newcomer gets on subscribing: topic -> retained payload (waits for ``count`` topics)."""
    late = Recorder(uri, ("edgeseg/#",), client_id=f"late-{time.monotonic_ns()}", clean=True)
    try:
        late.wait(pattern, count)
        time.sleep(0.2)  # a further retained message, had there been one, would have come with these
        return {t: p for t, p, retained, _ in late.on(pattern) if retained}
    finally:
        late.close()


def wait_until(condition: Any, budget: float = BUDGET_S) -> bool:
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    if MOSQUITTO is None:
        pytest.skip(MISSING_REASON)
    with Mosquitto(tmp_path / "broker") as b:
        yield b


@pytest.fixture
def recorder(broker: Mosquitto) -> Iterator[Recorder]:
    sub = Recorder(broker.uri, ("edgeseg/#", "homeassistant/#"), client_id="recorder")
    yield sub
    sub.close()


# -------------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("value", ["auto", "on", "off"])
def test_camera_topics_setting_takes_its_three_values(value: str) -> None:
    assert MqttConfig(camera_topics=value).camera_topics == value  # type: ignore[arg-type]
    assert MqttConfig().camera_topics == "auto"
    assert MqttConfig.model_fields["camera_topics"].description


def test_a_bad_camera_topics_value_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"field 'mqtt\.camera_topics'") as info:
        parse_config({"mqtt": {"camera_topics": "yes"}})
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------- Home Assistant discovery


def test_discovery_per_camera_reads_each_camera_s_topics_and_status() -> None:
    c = MqttConfig(uri="mqtt://h", device_id="nvr", homeassistant={"enabled": True})
    messages = discovery_messages(c, {}, cameras={"door": {"porch": ["person", "car"]}, "yard": {}})
    docs = {m.topic: m.document() for m in messages}
    assert len(messages) == 1 + 2 + 2 * 2  # the device, each camera's connectivity, door's zone entities
    device = docs["homeassistant/binary_sensor/nvr/camera_online/config"]
    assert device["state_topic"] == "edgeseg/nvr/available" and device["name"] == "Device online"
    for camera in ("door", "yard"):
        online = docs[f"homeassistant/binary_sensor/nvr/{camera}_online/config"]
        assert online["state_topic"] == f"edgeseg/nvr/{camera}/status"
        assert online["device_class"] == "connectivity"
        assert (online["payload_on"], online["payload_off"]) == ("online", "offline")
        assert online["availability_topic"] == "edgeseg/nvr/available"
    occupancy = docs["homeassistant/binary_sensor/nvr/door_porch_person_occupancy/config"]
    count = docs["homeassistant/sensor/nvr/door_porch_car_count/config"]
    for doc in (occupancy, count):
        assert doc["state_topic"].startswith("edgeseg/nvr/door/zones/porch/")
        assert "door" in doc["unique_id"] and doc["name"].startswith("door porch ")
        assert "availability_topic" not in doc and doc["availability_mode"] == "all"
        assert [a["topic"] for a in doc["availability"]] == ["edgeseg/nvr/available", "edgeseg/nvr/door/status"]
        assert doc["device"]["identifiers"] == ["nvr"]
    unique = [d["unique_id"] for d in docs.values()]
    assert len(set(unique)) == len(unique)
    # the same zone name on two cameras: two sets of entities
    two = discovery_messages(c, {}, cameras={"a": {"lot": ["car"]}, "b": {"lot": ["car"]}})
    assert len({m.document()["unique_id"] for m in two}) == len(two) == 1 + 2 + 2 * 2


def test_discovery_without_cameras_is_as_before() -> None:
    c = MqttConfig(uri="mqtt://h", device_id="cam1", homeassistant={"enabled": True})
    before = discovery_messages(c, {"door": ["person"]})
    assert discovery_messages(c, {"door": ["person"]}, cameras=None) == before
    docs = [m.document() for m in before]
    assert docs[0]["name"] == "Camera online"
    assert all(d["state_topic"] == "edgeseg/cam1/zones/door/person" for d in docs[1:])
    assert all(d["availability_topic"] == "edgeseg/cam1/available" for d in docs[1:])


# ------------------------------------------------------------------------------------- the relay


class StatusLog(Sink):
    def __init__(self) -> None:
        self.statuses: List[Tuple[str, bool]] = []

    def write(self, result: FrameResult) -> None:
        pass

    def write_status(self, camera: str, online: bool) -> None:
        self.statuses.append((camera, online))


def test_the_relay_forwards_statuses_and_tells_a_new_target_the_latest() -> None:
    relay = Relay("mqtt")
    relay.write_status("door", True)  # no target yet: remembered
    relay.write_status("yard", True)
    relay.write_status("yard", False)
    first = StatusLog()
    relay.swap(first)
    assert first.statuses == [("door", True), ("yard", False)]
    relay.write_status("yard", True)
    assert first.statuses[-1] == ("yard", True)
    relay.swap(first)  # the same target: nothing restated
    assert len(first.statuses) == 3
    second = StatusLog()
    relay.swap(second)
    assert second.statuses == [("door", True), ("yard", True)]


def test_outputs_build_the_publisher_with_camera_topics_from_the_config(tmp_path: Path) -> None:
    from dashboard_controls import RecordingControls

    built: List[Dict[str, Any]] = []

    def factory(cfg: MqttConfig, zones: Any, **kwargs: Any) -> MqttSink:
        built.append(kwargs)
        return unstarted_mqtt_sink(cfg, zones, **kwargs)

    mqtt = {"uri": f"mqtt://127.0.0.1:{free_port()}", "device_id": "nvr", "queue": {"path": str(tmp_path / "q.db")}}
    cameras = [{"name": "door", "uri": "a.mp4", "zones": [{"name": "porch", "points": [[0, 0], [90, 0], [90, 90]],
                                                          "classes": ["person"]}]},
               {"name": "yard", "uri": "b.mp4"}]
    outputs = PersistentOutputs(RecordingControls(), dict, system=dict, mqtt_factory=factory)
    try:
        for raw, expected in (
            ({"cameras": cameras, "tracker": {"enabled": True}, "mqtt": mqtt}, True),
            ({"source": {"uri": "a.mp4"}, "mqtt": mqtt}, False),
            ({"source": {"uri": "a.mp4"}, "mqtt": {**mqtt, "camera_topics": "on"}}, True),
            ({"cameras": cameras, "tracker": {"enabled": True}, "mqtt": {**mqtt, "camera_topics": "off"}}, False),
        ):
            prepared = outputs.prepare(parse_config(raw))
            assert built[-1]["camera_topics"] is expected, raw
            assert prepared.publisher is not None and prepared.publisher.camera_topics is expected
            outputs.abort(prepared)
        assert built[0]["camera_zones"] == {"door": {"porch": ["person"]}, "yard": {}}
    finally:
        outputs.close()


# ------------------------------------------------------------------------------ without a broker


def test_without_camera_topics_statuses_are_not_published_and_topics_stay(tmp_path: Path) -> None:
    sink = MqttSink(config(f"mqtt://127.0.0.1:{free_port()}", tmp_path))
    try:
        sink.write_status("door", True)
        sink.write(on(synthetic_result(0), "door"))
        assert [m.topic for m in sink.queue.peek(10)] == ["edgeseg/cam1/detections"]
        assert sink.topics_for("door").detections == "edgeseg/cam1/detections"
        assert sink.counters().statuses_queued == 0
    finally:
        sink.close()


def test_a_status_outlives_a_full_queue_of_detections_and_a_close_while_the_broker_is_away(tmp_path: Path) -> None:
    cfg = config(f"mqtt://127.0.0.1:{free_port()}", tmp_path, queue={"max_messages": 10}, drain_timeout_s=0)
    sink = MqttSink(cfg, camera_topics=True)
    sink.write_status("door", True)
    for i in range(30):
        sink.write(on(synthetic_result(i), "door" if i % 2 else "yard"))
    topics = [m.topic for m in sink.queue.peek(100)]
    assert topics.count("edgeseg/cam1/door/status") == 1 and len(topics) == 10
    sink.close()  # never connected: the offline goes into the queue for the next start
    with DiskQueue(cfg.queue_path()) as q:
        statuses = [m for m in q.peek(100) if m.topic == "edgeseg/cam1/door/status"]
    assert [(m.payload, m.retain, m.qos) for m in statuses] == [(b"offline", True, 1)]  # the online superseded


def test_a_sink_spec_takes_camera_topics_from_the_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from edgeseg.sinks.mqtt import mqtt_sink_from_spec

    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))  # the spec's default queue file goes here
    uri = f"mqtt://127.0.0.1:{free_port()}"
    for options, expected in ((SinkOptions(), False), (SimpleNamespace(mask_format="rle", camera_topics=True), True)):
        sink = mqtt_sink_from_spec(uri, options)  # type: ignore[arg-type]
        try:
            assert sink.camera_topics is expected
        finally:
            sink.close()
    sink = mqtt_sink_from_spec(uri, SinkOptions(), camera_topics=True)
    assert sink.camera_topics
    sink.close()


def test_statuses_given_before_start_are_queued_at_start_and_none_after_close(tmp_path: Path) -> None:
    sink = MqttSink(config(f"mqtt://127.0.0.1:{free_port()}", tmp_path, drain_timeout_s=0), start=False,
                    camera_topics=True)
    sink.write_status("door", True)
    sink.write_status("", True)  # no camera: nothing to say
    sink.start()
    assert [(m.topic, m.payload) for m in sink.queue.peek(10)] == [("edgeseg/cam1/door/status", b"online")]
    sink.close()
    sink.write_status("door", True)  # after close: ignored, not an error
    assert sink.camera_statuses() == {"door": False}


# ------------------------------------------------------------------------------ against a broker


def _analytics(frame_id: int, camera: str, events: Sequence[Event] = (), count: int = 0) -> FrameResult:
    return on(with_analytics(frame_id, events, {"lot": {"person": count}}), camera)


@needs_broker
def test_two_cameras_publish_on_their_own_topics(broker: Mosquitto, recorder: Recorder, tmp_path: Path) -> None:
    cfg = config(broker.uri, tmp_path, device="nvr", publish_snapshots=True, homeassistant={"enabled": True})
    sink = MqttSink(cfg, camera_topics=True, camera_zones={"door": {"lot": ["person"]}, "yard": {"lot": ["person"]}})
    try:
        assert sink.wait_connected(BUDGET_S)
        jpeg = b"\xff\xd8jpeg\xff\xd9"
        for i in range(3):
            sink.write(_analytics(i, "door", [cam_event(f"d{i}", "door", snapshot=jpeg)], count=i))
            sink.write(_analytics(i, "yard", [cam_event(f"y{i}", "yard")], count=1))
        sink.write(on(synthetic_result(9), ""))  # no camera: the device's topics
        sink.write_events([cam_event("y2", "yard", "end")])  # events of no frame: by their camera
        assert sink.wait_drained(BUDGET_S)
        assert recorder.wait(r"edgeseg/nvr/(door|yard)/detections", 6)
        for camera in ("door", "yard"):
            docs = [json.loads(p) for _, p, _, _ in recorder.on(f"edgeseg/nvr/{camera}/detections")]
            assert [d["frame_id"] for d in docs] == [0, 1, 2]
            for doc in docs:
                V3.validate(doc)
                assert doc["camera"] == camera
        assert recorder.wait(r"edgeseg/nvr/yard/events", 4)
        assert [json.loads(p)["event_id"] for _, p, _, _ in recorder.on(r"edgeseg/nvr/door/events")] == [
            "d0", "d1", "d2"]
        assert [json.loads(p)["type"] for _, p, _, _ in recorder.on(r"edgeseg/nvr/yard/events")][-1] == "end"
        assert len(recorder.on(r"edgeseg/nvr/door/events/d\d/snapshot")) == 3
        # counts per camera (a waiting count is superseded by a newer one of its camera only)
        assert recorder.on(r"edgeseg/nvr/door/zones/lot/person")[-1][1] == b"2"
        assert [p for _, p, _, _ in recorder.on(r"edgeseg/nvr/yard/zones/lot/person")] == [b"1"]
        assert recorder.wait(r"edgeseg/nvr/detections", 1)  # the camera-less result
        assert recorder.on(r"edgeseg/nvr/(events|zones/.*)") == []
        assert recorder.wait(r"homeassistant/.*/config", 1 + 2 + 2 * 2)
        states = {json.loads(p).get("state_topic") for _, p, _, _ in recorder.on(r"homeassistant/.*/config")}
        assert {"edgeseg/nvr/door/zones/lot/person", "edgeseg/nvr/yard/status"} <= states
    finally:
        sink.close()


@needs_broker
def test_statuses_are_retained_and_the_latest_wins_across_a_broker_outage(
    broker: Mosquitto, recorder: Recorder, tmp_path: Path
) -> None:
    sink = MqttSink(config(broker.uri, tmp_path, device="nvr"), camera_topics=True)
    assert sink.wait_connected(BUDGET_S)
    sink.write_status("door", True)
    sink.write_status("yard", True)
    assert sink.wait_drained(BUDGET_S)
    assert recorder.wait(r"edgeseg/nvr/(door|yard)/status", 2)
    assert {(t, p, q) for t, p, _, q in recorder.on(r".*/status")} == {
        ("edgeseg/nvr/door/status", b"online", 1), ("edgeseg/nvr/yard/status", b"online", 1)}
    assert retained_now(broker.uri, r".*/status", 2) == {
        "edgeseg/nvr/door/status": b"online", "edgeseg/nvr/yard/status": b"online"}
    before = len(recorder.on(r".*/status"))
    superseded = sink.counters().superseded

    broker.stop()
    assert wait_until(lambda: not sink.connected and not sink.counters().inflight)
    for i in range(10):  # detections go on queueing, and the cameras flap meanwhile
        sink.write(on(synthetic_result(i), "door"))
        sink.write(on(synthetic_result(i), "yard"))
    for online in (False, True, False):
        sink.write_status("door", online)
    for online in (False, True):
        sink.write_status("yard", online)
    c = sink.counters()
    assert c.superseded - superseded == 2 + 1 and c.queue_depth == 20 + 2  # one status per camera left
    assert c.statuses_queued == 2 + 5

    broker.start()
    assert sink.wait_drained(BUDGET_S)
    for camera in ("door", "yard"):
        assert recorder.wait(f"edgeseg/nvr/{camera}/detections", 10)
        ids = {json.loads(p)["frame_id"] for _, p, _, _ in recorder.on(f"edgeseg/nvr/{camera}/detections")}
        assert ids == set(range(10)), f"{camera} lost frames"
    assert wait_until(lambda: len(live(recorder, r".*/status")) >= before + 2)
    time.sleep(0.3)  # a superseded status, had one been sent, would have come with these
    assert live(recorder, r"edgeseg/nvr/door/status")[-1:] == [b"offline"]
    assert live(recorder, r"edgeseg/nvr/yard/status")[-1:] == [b"online"]
    assert len(live(recorder, r".*/status")) == before + 2, "the outage's flaps collapse to the latest"
    assert retained_now(broker.uri, r".*/status", 2) == {
        "edgeseg/nvr/door/status": b"offline", "edgeseg/nvr/yard/status": b"online"}
    sink.close()


@needs_broker
def test_a_clean_close_sends_every_announced_camera_offline(broker: Mosquitto, recorder: Recorder,
                                                            tmp_path: Path) -> None:
    sink = MqttSink(config(broker.uri, tmp_path, device="nvr"), camera_topics=True)
    assert sink.wait_connected(BUDGET_S)
    for camera in ("door", "yard", "gate"):
        sink.write_status(camera, True)
    sink.write_status("gate", False)  # ended already: not said twice
    sink.write(on(synthetic_result(0), "door"))
    assert sink.wait_drained(BUDGET_S)
    sink.close()
    assert recorder.wait(r"edgeseg/nvr/available", 2)  # online, then offline at close
    assert [p for _, p, _, _ in recorder.on(r"edgeseg/nvr/door/status")] == [b"online", b"offline"]
    assert [p for _, p, _, _ in recorder.on(r"edgeseg/nvr/yard/status")] == [b"online", b"offline"]
    gate = [p for _, p, _, _ in recorder.on(r"edgeseg/nvr/gate/status")]  # its online may have been superseded
    assert gate[-1:] == [b"offline"] and gate.count(b"offline") == 1
    assert recorder.on(r"edgeseg/nvr/available")[-1][1] == b"offline"
    retained = retained_now(broker.uri, r".*/(status|available)", 4)
    assert retained == {"edgeseg/nvr/available": b"offline", **{
        f"edgeseg/nvr/{c}/status": b"offline" for c in ("door", "yard", "gate")}}


@needs_broker
def test_without_camera_topics_nothing_changes(broker: Mosquitto, recorder: Recorder, tmp_path: Path) -> None:
    sink = MqttSink(config(broker.uri, tmp_path), camera_topics=False)
    try:
        assert sink.wait_connected(BUDGET_S)
        sink.write_status("door", True)
        sink.write(_analytics(0, "door", [cam_event("e0", "door")], count=1))
        sink.write(_analytics(1, "yard", [cam_event("e1", "yard")], count=2))
        assert sink.wait_drained(BUDGET_S)
        assert recorder.wait(r"edgeseg/cam1/detections", 2) and recorder.wait(r"edgeseg/cam1/events", 2)
        time.sleep(0.2)
        topics = {t for t, _, _, _ in recorder.on(r"edgeseg/.*")}
        assert topics == {"edgeseg/cam1/available", "edgeseg/cam1/detections", "edgeseg/cam1/events",
                          "edgeseg/cam1/zones/lot/person"}
        assert [json.loads(p)["camera"] for _, p, _, _ in recorder.on(r".*/detections")] == ["door", "yard"]
    finally:
        sink.close()


@needs_broker
def test_a_reload_to_another_device_id_moves_the_statuses(broker: Mosquitto, recorder: Recorder,
                                                          tmp_path: Path) -> None:
    """The outputs' replace step in small: the old publisher hands its queue over, its cameras go
    offline on its topics, and the relay tells the new publisher every camera's status."""
    queue = {"path": str(tmp_path / "q.db")}
    relay = Relay("mqtt")
    old = MqttSink(config(broker.uri, tmp_path, device="nvr1", queue=queue), camera_topics=True)
    relay.swap(old)
    assert old.wait_connected(BUDGET_S)
    relay.write_status("door", True)
    relay.write_status("yard", False)
    assert old.wait_drained(BUDGET_S) and recorder.wait(r"edgeseg/nvr1/.*/status", 2)
    new = MqttSink(config(broker.uri, tmp_path, device="nvr2", queue=queue), start=False, camera_topics=True)
    old.hold(BUDGET_S)
    with relay.held():
        handed = old.handover(offline=True)
        new.start(queue=handed)
        relay.swap(new)
    try:
        assert new.wait_drained(BUDGET_S)
        assert recorder.wait(r"edgeseg/nvr2/.*/status", 2)
        assert retained_now(broker.uri, r".*/status", 4) == {
            "edgeseg/nvr1/door/status": b"offline", "edgeseg/nvr1/yard/status": b"offline",
            "edgeseg/nvr2/door/status": b"online", "edgeseg/nvr2/yard/status": b"offline"}
        assert retained_now(broker.uri, r"edgeseg/nvr1/available", 1) == {"edgeseg/nvr1/available": b"offline"}
    finally:
        new.close()
