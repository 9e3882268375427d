"""Reload applies everything it reads (issue 12): the plan per field, and the persistent outputs.

- The plan (``edgeseg.service.reload_plan``): every leaf field of ``Config`` is classified (a
  new field cannot be forgotten), a table of changes per kind of application, restart-only
  fields refused in one line naming each, secrets never named by value.
- The outputs (``edgeseg.service.outputs``) against a real ``DashboardServer`` on free loopback
  ports and a real Mosquitto: a rotated token revokes the old one (requests and open streams),
  a new port serves before the old one closes, and every refusal (port taken, token file gone,
  password file gone, invalid section) is one line with the running outputs untouched. MQTT: an
  unchanged section keeps the very same client; a new device id delivers every queued message
  exactly once, on the new topic, across a broker outage.

Waits have a time budget only as a safety net: no assertion is about speed.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, List

import pytest
from mosquitto import MISSING_REASON, MOSQUITTO, Mosquitto, Subscriber, free_port, synthetic_result

from edgeseg.config import Config, parse_config
from edgeseg.errors import ConfigError, EdgesegError, SinkError
from edgeseg.service.outputs import PersistentOutputs, Relay
from edgeseg.service.reload_plan import FIELDS, Apply, RestartNeeded, leaf_fields, plan_reload
from edgeseg.sinks.disk_queue import DiskQueue

TOKEN_1 = "first-token-0123456789abcdef"
TOKEN_2 = "second-token-0123456789abcdef"
BUDGET_S = 20.0

needs_broker = pytest.mark.skipif(MOSQUITTO is None, reason=MISSING_REASON)


def _config(**sections: Any) -> Config:
    return parse_config(sections)


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text and "Traceback" not in text, text
    return text


def _wait(condition: Callable[[], bool], budget: float = BUDGET_S) -> bool:
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


# -- the plan -----------------------------------------------------------------------------------


def test_every_config_field_is_classified() -> None:
    leaves = set(leaf_fields(Config))
    assert leaves - set(FIELDS) == set(), "classify these in edgeseg/service/reload_plan.py FIELDS"
    assert set(FIELDS) - leaves == set(), "FIELDS names fields the schema no longer has"


def test_only_the_pid_file_needs_a_restart() -> None:
    assert [f for f, how in FIELDS.items() if how is Apply.RESTART] == ["engines.pid_file"]


# (changes laid over a base config, the fields expected changed, how each applies)
PLAN_TABLE: list[tuple[dict[str, Any], list[str], Apply]] = [
    ({"log_level": "debug"}, ["log_level"], Apply.LOGGING),
    ({"service": {"log_format": "plain"}}, ["service.log_format"], Apply.LOGGING),
    ({"service": {"stall_s": 10}}, ["service.stall_s"], Apply.PIPELINE),
    ({"service": {"stats_interval_s": 2}}, ["service.stats_interval_s"], Apply.PIPELINE),
    ({"model": {"path": "/srv/other.onnx", "threads": 2}}, ["model.path", "model.threads"], Apply.PIPELINE),
    ({"source": {"uri": "rtsp://cam/2"}}, ["source.uri"], Apply.PIPELINE),
    ({"postprocess": {"refine": {"open_px": 2}}}, ["postprocess.refine.open_px"], Apply.PIPELINE),
    ({"output": {"sinks": ["jsonl:/tmp/b.jsonl"]}}, ["output.sinks"], Apply.PIPELINE),
    ({"pipeline": {"inference_workers": 2}}, ["pipeline.inference_workers"], Apply.PIPELINE),
    ({"adaptive": {"enabled": True, "target_fps": 10}}, ["adaptive.enabled", "adaptive.target_fps"],
     Apply.PIPELINE),
    ({"engines": {"build_on_start": True}}, ["engines.build_on_start"], Apply.PIPELINE),
    ({"engines": {"root": "/srv/engines"}}, ["engines.root"], Apply.NOTHING),
    ({"engines": {"pid_file": "/run/other/edgeseg.pid"}}, ["engines.pid_file"], Apply.RESTART),
    ({"dashboard": {"enabled": True, "port": 9090}}, ["dashboard.enabled", "dashboard.port"], Apply.DASHBOARD),
    ({"dashboard": {"token": TOKEN_2}}, ["dashboard.token"], Apply.DASHBOARD),
    ({"dashboard": {"host": "0.0.0.0", "token": TOKEN_1}}, ["dashboard.host", "dashboard.token"],
     Apply.DASHBOARD),
    ({"mqtt": {"uri": "mqtt://broker:1883", "device_id": "cam9"}}, ["mqtt.uri", "mqtt.device_id"], Apply.MQTT),
    ({"mqtt": {"uri": "mqtts://broker:8883", "device_id": "cam1", "tls": {"insecure": True}}},
     ["mqtt.uri", "mqtt.tls.ca_file", "mqtt.tls.cert_file", "mqtt.tls.key_file", "mqtt.tls.insecure"], Apply.MQTT),
    ({"mqtt": {"uri": "mqtt://broker:1883", "device_id": "cam1", "queue": {"max_messages": 50}}},
     ["mqtt.uri", "mqtt.queue.max_messages"], Apply.MQTT),
]
BASE: dict[str, Any] = {"mqtt": {"device_id": "cam1"}}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@pytest.mark.parametrize(("changes", "fields", "apply"), PLAN_TABLE)
def test_plan_classifies_each_change(changes: dict[str, Any], fields: list[str], apply: Apply) -> None:
    plan = plan_reload(parse_config(BASE), parse_config(_merge(BASE, changes)))
    assert list(plan.fields()) == fields
    assert {c.apply for c in plan.changes} == {apply}
    assert plan.touches(apply)
    if apply is Apply.RESTART:
        with pytest.raises(RestartNeeded) as info:
            plan.check()
        assert _one_line(info.value) == \
            "field 'engines.pid_file' changed: needs a restart (systemctl restart edgeseg)"
    else:
        assert plan.refusal() is None
        plan.check()


def test_unchanged_config_plans_nothing() -> None:
    plan = plan_reload(parse_config(BASE), parse_config(BASE))
    assert plan.changes == () and plan.describe() == "no field changed"


def test_several_restart_fields_are_each_named() -> None:
    plan = plan_reload(parse_config(BASE), parse_config(_merge(BASE, {"engines": {"pid_file": "/run/x.pid"},
                                                                      "model": {"threads": 3}})))
    assert plan.refusal() == "field 'engines.pid_file' changed: needs a restart (systemctl restart edgeseg)"
    assert plan.describe() == "pipeline: model.threads; restart: engines.pid_file"


def test_secrets_are_compared_but_never_shown() -> None:
    old = _config(dashboard={"token": TOKEN_1}, mqtt={"uri": "mqtt://b:1883", "username": "u", "password": "pw-one"})
    new = _config(dashboard={"token": TOKEN_2}, mqtt={"uri": "mqtt://b:1883", "username": "u", "password": "pw-two"})
    plan = plan_reload(old, new)
    assert plan.fields() == ("mqtt.password", "dashboard.token")
    text = plan.describe() + repr(plan)
    assert TOKEN_1 not in text and TOKEN_2 not in text and "pw-" not in text


# -- the dashboard ------------------------------------------------------------------------------


def _get(port: int, path: str = "/api/state", token: str | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return False
    except ConnectionRefusedError:
        return True


@contextmanager
def _outputs(config: Config) -> Iterator[PersistentOutputs]:
    from dashboard_controls import RecordingControls

    outputs = PersistentOutputs(RecordingControls(), dict, system=dict)
    outputs.open(config)
    try:
        yield outputs
    finally:
        outputs.close()


def _reload(outputs: PersistentOutputs, config: Config) -> None:
    outputs.commit(outputs.prepare(config))


def _dashboard(port: int, **fields: Any) -> Config:
    return _config(dashboard={"enabled": True, "port": port, **fields})


def test_token_rotated_in_its_file_revokes_the_old_one_and_its_streams(tmp_path: Path) -> None:
    token_file = tmp_path / "dashboard.token"
    token_file.write_text(TOKEN_1 + "\n")
    config = _dashboard(0, token_file=str(token_file))
    with _outputs(config) as outputs:
        server = outputs.dashboard
        assert server is not None
        port = server.port
        assert _get(port, token=TOKEN_1) == 200
        stream = socket.create_connection(("127.0.0.1", port), timeout=BUDGET_S)
        stream.sendall(f"GET /events?token={TOKEN_1} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        assert stream.recv(4096).startswith(b"HTTP/1.1 200")

        token_file.write_text(TOKEN_2 + "\n")  # the section itself is unchanged
        _reload(outputs, config)

        assert outputs.dashboard is server  # same socket, same port: nothing reconnects for a token
        assert _get(port, token=TOKEN_1) == 401
        assert _get(port, token=TOKEN_2) == 200
        stream.settimeout(BUDGET_S)
        while stream.recv(65536):  # the stream opened with the old token ends
            pass
        stream.close()


def test_token_changed_in_the_config_revokes_the_old_one() -> None:
    with _outputs(_dashboard(0, token=TOKEN_1)) as outputs:
        assert outputs.dashboard is not None
        port = outputs.dashboard.port
        _reload(outputs, _dashboard(0, token=TOKEN_2, stream_fps=5, jpeg_quality=50))
        assert (_get(port, token=TOKEN_1), _get(port, token=TOKEN_2)) == (401, 200)
        assert outputs.dashboard.config.stream_fps == 5
        assert outputs.feed is not None and outputs.feed.jpeg_quality == 50


def test_port_change_serves_the_new_port_and_closes_the_old() -> None:
    first, second = free_port(), free_port()
    with _outputs(_dashboard(first, token=TOKEN_1)) as outputs:
        feed = outputs.feed
        assert _get(first, token=TOKEN_1) == 200
        _reload(outputs, _dashboard(second, token=TOKEN_1))
        assert _get(second, token=TOKEN_1) == 200
        assert _refused(first)
        assert outputs.feed is feed  # counts and latency history carry over


def test_taken_port_is_refused_in_one_line_and_the_old_one_serves_on() -> None:
    first = free_port()
    with socket.create_server(("127.0.0.1", 0)) as taken, _outputs(_dashboard(first, token=TOKEN_1)) as outputs:
        busy = taken.getsockname()[1]
        server = outputs.dashboard
        with pytest.raises(EdgesegError) as info:
            outputs.prepare(_dashboard(busy, token=TOKEN_2))
        assert _one_line(info.value).startswith(f"field 'dashboard.port': cannot listen on 127.0.0.1:{busy}")
        assert outputs.dashboard is server
        assert (_get(first, token=TOKEN_1), _get(first, token=TOKEN_2)) == (200, 401)


@pytest.mark.parametrize("damage", ["removed", "too short", "a folder"])
def test_unreadable_token_file_is_refused_and_the_old_token_kept(tmp_path: Path, damage: str) -> None:
    token_file = tmp_path / "dashboard.token"
    token_file.write_text(TOKEN_1)
    config = _dashboard(0, token_file=str(token_file))
    with _outputs(config) as outputs:
        assert outputs.dashboard is not None
        port = outputs.dashboard.port
        token_file.unlink()
        if damage == "too short":
            token_file.write_text("short")
        elif damage == "a folder":
            token_file.mkdir()
        with pytest.raises(ConfigError) as info:
            outputs.prepare(config)
        assert _one_line(info.value).startswith(f"dashboard.token_file {token_file}")
        assert _get(port, token=TOKEN_1) == 200


def test_abort_releases_the_new_socket() -> None:
    first, second = free_port(), free_port()
    with _outputs(_dashboard(first)) as outputs:
        prepared = outputs.prepare(_dashboard(second))
        assert not _refused(second)  # bound (its backlog accepts) but not served
        outputs.abort(prepared)
        assert _refused(second)
        assert _get(first) == 200
        with pytest.raises(ValueError, match="aborted"):
            outputs.commit(prepared)


def test_overlapping_address_on_the_same_port_is_rebound() -> None:
    port = free_port()
    with _outputs(_dashboard(port, token=TOKEN_1)) as outputs:
        _reload(outputs, _dashboard(port, host="0.0.0.0", token=TOKEN_2))
        assert outputs.dashboard is not None and outputs.dashboard.config.host == "0.0.0.0"
        assert (_get(port, token=TOKEN_1), _get(port, token=TOKEN_2)) == (401, 200)


def test_dashboard_turned_off_and_on_at_reload() -> None:
    port = free_port()
    with _outputs(_config()) as outputs:
        sinks = outputs.sinks
        assert outputs.dashboard is None and _refused(port)
        _reload(outputs, _dashboard(port))
        assert _get(port) == 200
        feed_relay = next(s for s in sinks if isinstance(s, Relay) and s.name == "dashboard")
        feed_relay.write(synthetic_result(7))
        assert outputs.feed is not None and outputs.feed.seq == 1  # the pipeline's relay reaches the new feed
        _reload(outputs, _config())
        assert outputs.dashboard is None and _refused(port)
        assert outputs.sinks == sinks  # the pipeline's sinks never change


# -- MQTT ---------------------------------------------------------------------------------------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    if MOSQUITTO is None:
        pytest.skip(MISSING_REASON)
    with Mosquitto(tmp_path / "broker") as b:
        yield b


def _mqtt(uri: str, device: str = "cam1", **fields: Any) -> Config:
    return _config(mqtt={"uri": uri, "device_id": device, "reconnect_min_s": 1, "reconnect_max_s": 1, **fields})


def _publish(outputs: PersistentOutputs, frame_ids: range) -> None:
    for frame_id in frame_ids:
        for sink in outputs.sinks:
            sink.write(synthetic_result(frame_id))


@needs_broker
def test_unchanged_mqtt_section_keeps_the_same_client(broker: Mosquitto, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    subscriber = Subscriber(broker.uri, ("edgeseg/#",), client_id="reload-keep", clean=True)
    try:
        config = _mqtt(broker.uri)
        with _outputs(config) as outputs:
            sink = outputs.mqtt
            assert sink is not None and sink.wait_connected(BUDGET_S)
            client = sink._publisher._client
            _publish(outputs, range(0, 5))
            _reload(outputs, config.model_copy(update={"log_level": "debug"}))  # no mqtt field changed
            assert outputs.mqtt is sink and sink._publisher._client is client and sink.connected
            _publish(outputs, range(5, 10))
            assert subscriber.wait_for_ids(set(range(10)), BUDGET_S)
        assert sorted(subscriber.frame_ids()) == list(range(10))
        assert subscriber.wait_for("/available", b"offline", BUDGET_S)  # the final close's
        offline = [m for m in subscriber.messages if m[0].endswith("/available") and m[1] == b"offline"]
        assert len(offline) == 1  # none for the reload
    finally:
        subscriber.close()


@needs_broker
def test_changed_section_same_device_reconnects_without_offline_or_duplicates(
        broker: Mosquitto, tmp_path: Path) -> None:
    subscriber = Subscriber(broker.uri, ("edgeseg/#",), client_id="reload-same", clean=True)
    queue = str(tmp_path / "queue.db")
    try:
        with _outputs(_mqtt(broker.uri, queue={"path": queue})) as outputs:
            old = outputs.mqtt
            assert old is not None and old.wait_connected(BUDGET_S)
            _publish(outputs, range(0, 50))
            _reload(outputs, _mqtt(broker.uri, keepalive_s=20, queue={"path": queue, "max_messages": 500}))
            new = outputs.mqtt
            assert new is not None and new is not old and new.queue is old.queue  # the open queue handed over
            assert new.queue.max_messages == 500
            _publish(outputs, range(50, 100))
            assert subscriber.wait_for_ids(set(range(100)), BUDGET_S)
            assert new.wait_drained(BUDGET_S)
            assert not any(m[0].endswith("/available") and m[1] == b"offline" for m in subscriber.messages)
        assert sorted(subscriber.frame_ids()) == list(range(100))  # each exactly once
    finally:
        subscriber.close()


@needs_broker
@pytest.mark.parametrize("queue_path", ["default", "explicit"])
def test_device_id_change_delivers_the_queue_exactly_once_on_the_new_topic(
        broker: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, queue_path: str) -> None:
    """The default queue file names the device id, so it moves; an explicit one stays and is re-addressed."""
    state = tmp_path / "state"
    monkeypatch.setenv("STATE_DIRECTORY", str(state))
    extra: dict[str, Any] = {} if queue_path == "default" else {"queue": {"path": str(tmp_path / "q.db")}}
    subscriber = Subscriber(broker.uri, ("edgeseg/#",), client_id="reload-device")
    try:
        with _outputs(_mqtt(broker.uri, "cam1", **extra)) as outputs:
            assert outputs.mqtt is not None and outputs.mqtt.wait_connected(BUDGET_S)
            broker.stop()
            _publish(outputs, range(0, 30))  # queued on disk: the broker is away
            assert outputs.mqtt.queue.depth == 30
            _reload(outputs, _mqtt(broker.uri, "cam2", **extra))
            sink = outputs.mqtt
            assert sink is not None and sink.topic == "edgeseg/cam2/detections"
            if queue_path == "default":
                assert sink.queue.path == state / "mqtt-queue-cam2.db"
                assert not (state / "mqtt-queue-cam1.db").exists()  # emptied into the new file, removed
            assert sink.queue.depth == 30
            _publish(outputs, range(30, 40))
            broker.start()
            assert subscriber.wait_for_ids(set(range(40)), BUDGET_S)
            assert sink.wait_drained(BUDGET_S)
        detections = [m[0] for m in subscriber.messages if m[0].endswith("/detections")]
        assert set(detections) == {"edgeseg/cam2/detections"}
        assert sorted(subscriber.frame_ids()) == list(range(40))  # nothing lost, nothing twice
    finally:
        subscriber.close()


@needs_broker
def test_unreadable_password_file_is_refused_and_the_publisher_kept(broker: Mosquitto, tmp_path: Path) -> None:
    password = tmp_path / "mqtt.password"
    password.write_text("secret\n")
    config = _mqtt(broker.uri, username="cam", password_file=str(password), queue={"path": str(tmp_path / "q.db")})
    subscriber = Subscriber(broker.uri, ("edgeseg/+/detections",), client_id="reload-pw", clean=True)
    try:
        with _outputs(config) as outputs:
            sink = outputs.mqtt
            assert sink is not None and sink.wait_connected(BUDGET_S)
            password.unlink()
            with pytest.raises(SinkError) as info:
                outputs.prepare(config)
            assert _one_line(info.value).startswith(f"mqtt.password_file '{password}': cannot read")
            assert outputs.mqtt is sink
            _publish(outputs, range(3))
            assert subscriber.wait_for_ids({0, 1, 2}, BUDGET_S)
            password.write_text("rotated\n")  # a rotated password is a change even in the same section
            prepared = outputs.prepare(config)
            assert prepared.mqtt == "replace"
            outputs.abort(prepared)
            assert outputs.mqtt is sink and sink.connected
    finally:
        subscriber.close()


def test_invalid_mqtt_section_is_refused_by_validation_in_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        _config(mqtt={"uri": "http://broker:1883"})
    assert "mqtt.uri" in _one_line(info.value)


def test_queue_file_held_elsewhere_is_refused_and_abort_releases_what_prepare_opened(tmp_path: Path) -> None:
    """prepare opens a moved queue file before anything runs: held by another process, refused."""
    broker = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens: the queue is what matters here
    held = tmp_path / "held.db"
    holder = DiskQueue(held)
    try:
        with _outputs(_mqtt(broker, queue={"path": str(tmp_path / "a.db")}, drain_timeout_s=0)) as outputs:
            sink = outputs.mqtt
            with pytest.raises(SinkError, match="in use by another process") as info:
                outputs.prepare(_mqtt(broker, queue={"path": str(held)}))
            _one_line(info.value)
            assert outputs.mqtt is sink
            port = free_port()
            both = _config(dashboard={"enabled": True, "port": port},
                           mqtt={"uri": broker, "device_id": "cam1", "queue": {"path": str(tmp_path / "b.db")}})
            prepared = outputs.prepare(both)
            assert (prepared.dashboard, prepared.mqtt) == ("new", "replace")
            outputs.abort(prepared)  # releases the new queue file and the new socket
            DiskQueue(tmp_path / "b.db").close()
            assert _refused(port)
            assert outputs.mqtt is sink and outputs.dashboard is None
    finally:
        holder.close()


def test_closed_outputs_release_the_queue_file(tmp_path: Path) -> None:
    """The next daemon (or a restart) opens the queue file at once: no lock is left behind."""
    config = _mqtt(f"mqtt://127.0.0.1:{free_port()}", queue={"path": str(tmp_path / "q.db")}, drain_timeout_s=0)
    with _outputs(config) as outputs:
        _publish(outputs, range(3))
    queue = DiskQueue(tmp_path / "q.db")
    try:
        assert queue.depth == 3  # kept on disk for the next start
    finally:
        queue.close()


@needs_broker
def test_a_publisher_handover_with_home_assistant_discovery_keeps_its_network_thread_alive(
        broker: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The new publisher connects after a reload that changed the zones it announces. Its discovery
    configs once went out inside paho's CONNACK handling, whose resend loop then saw its message
    dict change size: paho's network thread died (about 2 runs in 3), and nothing was sent again."""
    died: List[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_value))

    def config(*zones: str) -> Config:
        return _config(
            mqtt={"uri": broker.uri, "device_id": "cam1", "reconnect_min_s": 1, "reconnect_max_s": 1,
                  "queue": {"path": str(tmp_path / "queue.db")}, "homeassistant": {"enabled": True}},
            tracker={"enabled": True},
            zones=[{"name": z, "points": [[0, 0], [10, 0], [10, 10]], "classes": ["person"]} for z in zones],
        )

    subscriber = Subscriber(broker.uri, ("edgeseg/#",), client_id="reload-ha", clean=True)
    try:
        for _ in range(3):  # each round has had about a 2 in 3 chance to hit the race
            died.clear()
            with _outputs(config("door", "yard")) as outputs:
                first = outputs.mqtt
                assert first is not None and first.wait_connected(BUDGET_S)
                outputs.commit(outputs.prepare(config("door"), ("person",)))
                second = outputs.mqtt
                assert second is not None and second is not first and second.wait_connected(BUDGET_S)
                _publish(outputs, range(0, 5))
                assert second.wait_drained(BUDGET_S), "the new publisher sends"
            assert died == []
    finally:
        subscriber.close()
