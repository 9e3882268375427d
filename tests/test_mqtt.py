"""The MQTT sink against a real Mosquitto broker on loopback (skipped where mosquitto is absent).

A real paho subscriber with a persistent session counts what arrives, by frame id; the broker's
persistence keeps that session's messages across the broker restarts, so a count is about what
the sink delivered. Kills are real SIGKILLs of a publisher child process (tests/mosquitto.py).
Waits have a time budget only as a safety net: no assertion is about speed.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from mosquitto import (
    MISSING_REASON,
    MOSQUITTO,
    ChildOutput,
    Mosquitto,
    Subscriber,
    first_occurrences,
    free_port,
    make_tls_files,
    start_child,
    synthetic_result,
)

from edgeseg.config import Config
from edgeseg.config.mqtt import MqttConfig, parse_broker_uri, parse_mqtt_config, sanitise_device_id
from edgeseg.errors import ConfigError, SinkError
from edgeseg.pipeline.runner import Counters, write_to_sinks
from edgeseg.sinks import JsonlSink, SinkOptions, create_sink
from edgeseg.sinks.disk_queue import DiskQueue
from edgeseg.sinks.mqtt import MqttSink, encode_frame_result
from edgeseg.sinks.serialize import load_schema

VALIDATOR = jsonschema.Draft202012Validator(load_schema())
#: Safety net for waits on the broker; reaching it fails the test, it is not measured.
BUDGET_S = 20.0
DETECTIONS = "edgeseg/+/detections"
AVAILABLE = "edgeseg/+/available"
STATS = "edgeseg/+/stats"

needs_broker = pytest.mark.skipif(MOSQUITTO is None, reason=MISSING_REASON)


def config(uri: str, tmp_path: Path, device: str = "cam1", **fields: object) -> MqttConfig:
    """Fast reconnects (1 s), a queue file in tmp_path."""
    queue = {"path": str(tmp_path / f"{device}.db"), **fields.pop("queue", {})}  # type: ignore[dict-item]
    return MqttConfig(uri=uri, device_id=device, reconnect_min_s=1, reconnect_max_s=1, queue=queue, **fields)


@pytest.fixture
def broker(tmp_path: Path):  # type: ignore[no-untyped-def]
    if MOSQUITTO is None:
        pytest.skip(MISSING_REASON)
    with Mosquitto(tmp_path / "broker") as b:
        yield b


@pytest.fixture
def subscriber(broker: Mosquitto):  # type: ignore[no-untyped-def]
    sub = Subscriber(broker.uri, (DETECTIONS, AVAILABLE, STATS), client_id="counter")
    yield sub
    sub.close()


@pytest.fixture
def spawn():  # type: ignore[no-untyped-def]
    """Starts publisher children (``start_child`` arguments); any still running at the end is killed."""
    children: list[ChildOutput] = []

    def start(*args: object, **kwargs: object) -> ChildOutput:
        child = ChildOutput(start_child(*args, **kwargs))  # type: ignore[arg-type]
        children.append(child)
        return child

    yield start
    for child in children:
        if child.proc.poll() is None:
            child.kill()


# ------------------------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ({"uri": "mqtt://broker.lan"}, None),
        ({"uri": "mqtts://[::1]:8884", "tls": {"ca_file": "ca.pem", "insecure": True}}, None),
        ({"uri": "mqtt://h", "username": "u", "password_file": "/etc/pw"}, None),
        ({"uri": "mqtt://h", "queue": {"policy": "drop_newest", "max_messages": 10}}, None),
        ({"bogus": 1}, "field 'mqtt.bogus': unknown key"),
        ({"queue": {"size": 5}}, "field 'mqtt.queue.size': unknown key"),
        ({"qos": "high"}, "field 'mqtt.qos': Input should be a valid integer"),
        ({"qos": 3}, "field 'mqtt.qos': Input should be less than or equal to 2"),
        ({"keepalive_s": 1}, "field 'mqtt.keepalive_s'"),
        ({"uri": "http://h"}, "unknown scheme 'http'"),
        ({"uri": "mqtt://"}, "no host"),
        ({"uri": "mqtt://h:70000"}, "Port out of range"),
        ({"uri": "mqtt://h/topic"}, "unexpected path"),
        ({"uri": "mqtt://user:pw@h"}, "credentials in mqtt.username"),
        ({"uri": "mqtt://h", "tls": {"ca_file": "ca.pem"}}, "tls settings need an mqtts:// uri"),
        ({"uri": "mqtts://h", "tls": {"key_file": "k.pem"}}, "key_file is set but tls.cert_file is not"),
        ({"password": "pw"}, "a password needs a username"),
        ({"username": "u", "password": "pw", "password_file": "f"}, "not both"),
        ({"reconnect_min_s": 10, "reconnect_max_s": 5}, "must be >= reconnect_min_s"),
        ({"device_id": "cam/1"}, "field 'mqtt.device_id': String should match pattern"),
        ({"topic_prefix": "a/#"}, "field 'mqtt.topic_prefix'"),
        ({"queue": {"policy": "drop_random"}}, "field 'mqtt.queue.policy'"),
        ({"mask_format": "png"}, "field 'mqtt.mask_format'"),
        ({"max_payload_bytes": 10}, "field 'mqtt.max_payload_bytes'"),
        ("mqtt://h", "mqtt: expected a mapping"),
    ],
)
def test_config_table(raw: object, error: str | None) -> None:
    if error is None:
        assert parse_mqtt_config(raw).uri is not None
        return
    with pytest.raises(ConfigError, match=re.escape(error)) as info:
        parse_mqtt_config(raw)
    assert "\n" not in str(info.value)


def test_password_never_appears_in_errors() -> None:
    with pytest.raises(ConfigError) as info:
        parse_mqtt_config({"password": "hunter2", "qos": 9})
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in repr(parse_mqtt_config({"username": "u", "password": "hunter2"}))


def test_config_section_in_the_main_config_when_wired() -> None:
    if "mqtt" not in Config.model_fields:
        pytest.skip("Config has no mqtt section yet (the lead wires MqttConfig into Config)")
    from edgeseg.config import parse_config

    with pytest.raises(ConfigError, match="mqtt.bogus") as info:
        parse_config({"mqtt": {"bogus": 1}})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("hostname", "device_id"),
    [("jetson-orin", "jetson-orin"), ("cam 1/roof#2", "cam_1_roof_2"), ("+++", "edgeseg"), ("a" * 80, "a" * 64)],
)
def test_device_id_from_hostname_is_topic_safe(hostname: str, device_id: str) -> None:
    assert sanitise_device_id(hostname) == device_id
    MqttConfig(device_id=device_id)  # accepted by the schema


def test_defaults_topics_and_queue_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    c = MqttConfig(uri="mqtts://broker.lan", device_id="gate")
    assert (c.qos, c.queue.policy, c.mask_format, c.enabled) == (1, "drop_oldest", "rle", True)
    assert parse_broker_uri("mqtts://broker.lan") == ("mqtts", "broker.lan", 8883)
    assert str(c.broker) == "mqtts://broker.lan:8883"
    assert c.topic("detections") == "edgeseg/gate/detections"
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    assert c.queue_path() == tmp_path / "mqtt-queue-gate.db"
    assert not MqttConfig().enabled


# ------------------------------------------------------------------- construction and payloads


def test_bad_uri_through_the_sink_registry_is_one_line() -> None:
    with pytest.raises(SinkError, match="unknown scheme 'http'") as info:
        create_sink("mqtt:http://broker:1883")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"tls": {"ca_file": "/nonexistent/ca.pem"}}, r"mqtt.tls.ca_file '/nonexistent/ca.pem': no such file"),
        ({"tls": {"cert_file": "/nonexistent/c.pem"}}, "mqtt.tls.cert_file"),
        ({"username": "u", "password_file": "/nonexistent/pw"}, "mqtt.password_file '/nonexistent/pw': cannot read"),
    ],
)
def test_missing_files_refuse_construction_in_one_line(tmp_path: Path, fields: dict[str, object], error: str) -> None:
    with pytest.raises(SinkError, match=error) as info:
        MqttSink(config("mqtts://127.0.0.1:1", tmp_path, **fields))
    assert "\n" not in str(info.value)


def test_unusable_tls_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(SinkError, match="cannot load the TLS files"):
        MqttSink(config("mqtts://127.0.0.1:1", tmp_path, tls={"ca_file": str(bad)}))


def test_sink_without_uri_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SinkError, match="mqtt.uri is not set"):
        MqttSink(MqttConfig())


@pytest.mark.parametrize(
    ("mask_format", "max_bytes", "expected"),
    [
        ("rle", 1_000_000, "rle"),
        ("polygon", 1_000_000, "polygon"),
        ("none", 1_000_000, "none"),
        ("rle", "between", "none"),
        ("rle", 100, SinkError),
        ("none", 100, SinkError),
    ],
)
def test_payload_degrades_masks_then_refuses(mask_format: str, max_bytes: object, expected: object) -> None:
    result = synthetic_result(3, size=(480, 640), instances=40)
    sizes = {fmt: len(encode_frame_result(result, fmt, 10**9).data) for fmt in ("rle", "polygon", "none")}  # type: ignore[arg-type]
    assert sizes["none"] < min(sizes["rle"], sizes["polygon"])
    limit = sizes["none"] + 1 if max_bytes == "between" else int(max_bytes)  # type: ignore[call-overload]
    if expected is SinkError:
        with pytest.raises(SinkError, match="even without masks") as info:
            encode_frame_result(result, mask_format, limit)  # type: ignore[arg-type]
        assert "\n" not in str(info.value)
        return
    payload = encode_frame_result(result, mask_format, limit)  # type: ignore[arg-type]
    assert payload.mask_format == expected and len(payload.data) <= limit
    doc = json.loads(payload.data)
    VALIDATOR.validate(doc)
    assert doc["frame_id"] == 3


def test_sink_counts_degraded_and_refused_frames(tmp_path: Path) -> None:
    big = synthetic_result(1, size=(480, 640), instances=40)
    sizes = {fmt: len(encode_frame_result(big, fmt, 10**9).data) for fmt in ("rle", "polygon", "none")}  # type: ignore[arg-type]
    limit = max(1024, sizes["none"] + 1)
    assert limit < min(sizes["rle"], sizes["polygon"])
    sink = MqttSink(config(f"mqtt://127.0.0.1:{free_port()}", tmp_path, max_payload_bytes=limit))
    try:
        sink.write(big)  # masks dropped to fit
        sink.write(synthetic_result(2))  # small: as configured
        huge = synthetic_result(3, size=(480, 640), instances=400)
        sink.write(huge)  # too large even without masks: set aside, not raised, not queued
        c = sink.counters()
        assert (c.degraded, c.refused, c.queued, c.dead_lettered) == (1, 1, 2, 1)
        (entry,) = sink._queue.dead_letters.read()
        assert "even without masks" in entry["reason"] and json.loads(entry["payload"])["frame_id"] == 3
    finally:
        sink.close()


def test_publish_stats_needs_json_values_and_a_connection(tmp_path: Path) -> None:
    sink = MqttSink(config(f"mqtt://127.0.0.1:{free_port()}", tmp_path))
    try:
        assert sink.publish_stats({"fps": np.float32(9.5), "sizes": np.arange(3)}) is False  # JSON, not connected
        with pytest.raises(SinkError, match="stats are not JSON"):
            sink.publish_stats({"bad": object()})
    finally:
        sink.close()


# ------------------------------------------------------------------------------ against a broker


@needs_broker
def test_every_frame_arrives_in_order_with_valid_payloads(
    broker: Mosquitto, subscriber: Subscriber, tmp_path: Path
) -> None:
    count = 300
    sink = MqttSink(config(broker.uri, tmp_path, max_inflight=20))
    assert sink.wait_connected(BUDGET_S)
    for i in range(count):
        sink.write(synthetic_result(i))
    assert sink.wait_drained(BUDGET_S)
    assert sink.publish_stats({"fps": 12.5, "frames": count, "mqtt": sink.status()})
    assert subscriber.wait_for_ids(set(range(count)), BUDGET_S)
    assert subscriber.frame_ids() == list(range(count))  # in order, no duplicates on a calm link
    for doc in subscriber.payloads():
        VALIDATOR.validate(doc)
    assert subscriber.payloads()[0]["instances"][0]["mask"]["format"] == "rle"
    assert subscriber.wait_for("edgeseg/cam1/available", b"online", BUDGET_S)
    deadline = time.monotonic() + BUDGET_S
    while not subscriber.payloads("/stats") and time.monotonic() < deadline:
        time.sleep(0.02)
    stats = subscriber.payloads("/stats")[0]
    assert stats["frames"] == count and stats["mqtt"]["queue_depth"] == 0
    c = sink.counters()
    assert (c.connected, c.queued, c.acked, c.sent, c.dropped, c.queue_depth, c.inflight) == (
        True, count, count, count, 0, 0, 0)
    sink.close()
    assert subscriber.wait_for("edgeseg/cam1/available", b"offline", BUDGET_S)  # clean close: offline
    assert not sink.publish_stats({"x": 1})
    with pytest.raises(SinkError, match="closed"):
        sink.write(synthetic_result(count))
    sink.close()  # idempotent


@needs_broker
def test_broker_outage_mid_run_loses_nothing(
    broker: Mosquitto, subscriber: Subscriber, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A producer at ~100 frames/s; the broker is down for 3 s in the middle (same port after)."""
    caplog.set_level(logging.INFO, logger="edgeseg.sinks.mqtt")
    count, rate = 600, 100.0
    sink = MqttSink(config(broker.uri, tmp_path))
    assert sink.wait_connected(BUDGET_S)
    written = threading.Event()

    def produce() -> None:
        t0 = time.monotonic()
        for i in range(count):
            time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            sink.write(synthetic_result(i))  # never blocks on the network, broker or not
        written.set()

    producer = threading.Thread(target=produce)
    producer.start()
    time.sleep(1.0)
    broker.stop()
    down = time.monotonic()
    time.sleep(3.0)
    assert not sink.connected and sink.counters().queue_depth > 0
    broker.start()
    producer.join(BUDGET_S)
    assert written.is_set()
    assert time.monotonic() - down >= 3.0
    assert sink.wait_drained(BUDGET_S)
    arrived = subscriber.wait_for_ids(set(range(count)), BUDGET_S)
    assert arrived, f"lost across the outage: {sorted(set(range(count)) - set(subscriber.frame_ids()))}"
    ids = subscriber.frame_ids()
    assert first_occurrences(ids) == list(range(count))  # duplicates allowed, order and completeness not
    lost = [r.getMessage() for r in caplog.records if "lost the connection" in r.getMessage()]
    assert len(lost) == 1, lost  # one line per state change, not per retry
    assert sum("connected to" in r.getMessage() for r in caplog.records) == 2
    sink.close()


@needs_broker
def test_sigkilled_publisher_restarted_with_its_queue_sends_the_rest(
    broker: Mosquitto, subscriber: Subscriber, tmp_path: Path, spawn: Callable[..., ChildOutput]
) -> None:
    """Killed mid-stream with messages in flight and waiting; the restart sends them, then its own."""
    queue = tmp_path / "child.db"
    first = spawn(broker.uri, queue, count=100_000, rate=400.0, hold=True)
    assert first.wait_queued(200, BUDGET_S), (queue.parent / "child.db.log").read_text()
    broker.pause()  # connection open, no PUBACKs: the in-flight window fills, the rest waits on disk
    assert first.wait_queued(400, BUDGET_S)
    first.kill()
    broker.resume()
    killed_after = first.last_queued  # every id up to this one was committed before the kill
    with DiskQueue(queue) as left:
        assert left.depth > 0 and left.requeued_at_open > 0  # unacknowledged, some of them in flight
    second = spawn(broker.uri, queue, start=killed_after + 1, count=50)
    assert second.drained.wait(BUDGET_S)
    second.proc.wait(BUDGET_S)
    end = killed_after + 51
    assert subscriber.wait_for_ids(set(range(end)), BUDGET_S), "frames lost across the SIGKILL"
    assert first_occurrences(subscriber.frame_ids())[:end] == list(range(end))


@needs_broker
def test_sigkill_with_everything_unacked_then_restart(
    broker: Mosquitto, subscriber: Subscriber, tmp_path: Path, spawn: Callable[..., ChildOutput]
) -> None:
    """Broker away: the child queues 40 frames and is killed; restarted, it sends all 40."""
    queue = tmp_path / "child.db"
    broker.stop()
    first = spawn(broker.uri, queue, count=40, hold=True)
    assert first.wait_queued(40, BUDGET_S), (queue.parent / "child.db.log").read_text()
    first.kill()
    broker.start()
    second = spawn(broker.uri, queue, count=0)
    assert second.proc.wait(BUDGET_S) == 0
    assert subscriber.wait_for_ids(set(range(40)), BUDGET_S)
    assert first_occurrences(subscriber.frame_ids()) == list(range(40))


@needs_broker
def test_availability_retained_online_and_last_will_offline_on_sigkill(
    broker: Mosquitto, tmp_path: Path, spawn: Callable[..., ChildOutput]
) -> None:
    topic = "edgeseg/willcam/available"
    watcher = Subscriber(broker.uri, (topic,), client_id="watcher", clean=True)
    child = spawn(broker.uri, tmp_path / "child.db", device="willcam", hold=True)
    try:
        assert watcher.wait_for(topic, b"online", BUDGET_S)
        late = Subscriber(broker.uri, (topic,), client_id="late1", clean=True)  # arrives after the fact
        assert late.wait_for(topic, b"online", BUDGET_S)
        assert late.messages == [(topic, b"online", True)]  # retained
        late.close()
        child.kill()  # no clean-up in the child: the broker publishes its Last Will
        assert watcher.wait_for(topic, b"offline", BUDGET_S)
        late = Subscriber(broker.uri, (topic,), client_id="late2", clean=True)
        assert late.wait_for(topic, b"offline", BUDGET_S)
        assert late.messages == [(topic, b"offline", True)]  # the Will, retained
        late.close()
    finally:
        watcher.close()


@needs_broker
@pytest.mark.parametrize(
    ("policy", "survivors"), [("drop_oldest", list(range(5, 15))), ("drop_newest", list(range(10)))]
)
def test_full_queue_while_broker_is_away(
    broker: Mosquitto, subscriber: Subscriber, tmp_path: Path, policy: str, survivors: list[int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="edgeseg.sinks.mqtt")
    broker.stop()
    sink = MqttSink(config(broker.uri, tmp_path, queue={"max_messages": 10, "policy": policy}))
    for i in range(15):
        sink.write(synthetic_result(i))  # no exception: the policy applies and is counted
    c = sink.counters()
    assert (c.dropped, c.queue_depth, c.connected) == (5, 10, False)
    assert sum("queue full" in r.getMessage() for r in caplog.records) == 1
    broker.start()
    assert sink.wait_drained(BUDGET_S)
    assert subscriber.wait_for_ids(set(survivors), BUDGET_S)
    assert first_occurrences(subscriber.frame_ids()) == survivors
    sink.close()


@needs_broker
def test_bad_credentials_are_logged_once_and_the_pipeline_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgeseg.sinks.mqtt")
    with Mosquitto(tmp_path / "auth", users={"cam": "right"}) as broker:
        sink = MqttSink(config(broker.uri, tmp_path, username="cam", password="wrong"))
        jsonl = JsonlSink(tmp_path / "out.jsonl")
        counters = Counters()
        failed: set[int] = set()
        for i in range(12):  # ~2.4 s: several refused attempts, 1 s apart
            write_to_sinks(synthetic_result(i), [sink, jsonl], failed, counters)
            time.sleep(0.2)
        assert counters.sink_errors == 0 and not failed
        assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 12
        c = sink.counters()
        assert (c.connected, c.state, c.queue_depth, c.queued, c.sent) == (False, "refused", 12, 12, 0)
        refused = [r for r in caplog.records if "refused the connection" in r.getMessage()]
        assert len(refused) == 1
        assert refused[0].levelno == logging.ERROR and "check mqtt.username and the password" in refused[0].getMessage()
        sink.close()
        jsonl.close()
        # the same queue with the right password delivers what was queued
        pw = tmp_path / "pw"
        pw.write_text("right\n")
        good = MqttSink(config(broker.uri, tmp_path, username="cam", password_file=str(pw)))
        assert good.wait_drained(BUDGET_S)
        assert good.counters().acked == 12
        good.close()


def test_unreachable_broker_is_one_warning_and_writes_go_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edgeseg.sinks.mqtt")
    sink = MqttSink(config(f"mqtt://127.0.0.1:{free_port()}", tmp_path))
    for i in range(10):
        sink.write(synthetic_result(i))
        time.sleep(0.25)
    c = sink.counters()
    assert (c.connected, c.state, c.queue_depth) == (False, "disconnected", 10)
    unreachable = [r.getMessage() for r in caplog.records if "cannot reach broker" in r.getMessage()]
    assert len(unreachable) == 1 and "Connection refused" in unreachable[0]
    sink.close()


def test_registry_builds_an_mqtt_sink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    sink = create_sink(f"mqtt:mqtt://127.0.0.1:{free_port()}", SinkOptions(mask_format="polygon"))
    try:
        assert isinstance(sink, MqttSink)
        assert sink.mask_format == "polygon"
        assert list(tmp_path.glob("mqtt-queue-*.db"))
    finally:
        sink.close()
    with pytest.raises(SinkError, match="in use by another process"):
        first = MqttSink(config(f"mqtt://127.0.0.1:{free_port()}", tmp_path, device="twice"))
        try:
            MqttSink(config(f"mqtt://127.0.0.1:{free_port()}", tmp_path, device="twice"))
        finally:
            first.close()


@needs_broker
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed (generates test certificates)")
def test_mutual_tls(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tls = make_tls_files(tmp_path / "tls")
    with Mosquitto(tmp_path / "tlsbroker", tls=tls) as broker:
        sub = Subscriber(broker.uri, (DETECTIONS,), client_id="tlssub", tls=tls)
        files = {"ca_file": str(tls.ca), "cert_file": str(tls.client_cert), "key_file": str(tls.client_key)}
        sink = MqttSink(config(broker.uri, tmp_path, tls=files))
        for i in range(5):
            sink.write(synthetic_result(i))
        assert sink.wait_drained(BUDGET_S)
        assert sub.wait_for_ids(set(range(5)), BUDGET_S)
        sink.close()
        sub.close()
        # no client certificate: the broker ends the handshake; logged once, never raised
        caplog.set_level(logging.INFO, logger="edgeseg.sinks.mqtt")
        anonymous = MqttSink(config(broker.uri, tmp_path, device="nocert", tls={"ca_file": str(tls.ca)}))
        anonymous.write(synthetic_result(0))
        time.sleep(2.5)
        assert not anonymous.connected and anonymous.counters().queue_depth == 1
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and broker.uri in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        anonymous.close()
