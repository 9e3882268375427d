"""Issue 11, the MQTT part: what a hostile broker, a careless spec and a failing SD card broke.

Tables, one per class of fault:
  * a broker that refuses large packets (Mosquitto ``max_packet_size 1000``, real broker): over
    MQTT 5 (the limit is announced in CONNACK) and MQTT 3.1.1 (it only disconnects: the poison
    rule), the large message written while connected or queued before the limit was known; the
    small ones around it must all arrive, the large one must be degraded or set aside;
  * a damaged queue file (random bytes in the header, in page 1, in the pages of the records,
    truncated, text, another format): the queue opens, the file is quarantined, what can be
    read is kept;
  * sink specs: URIs as specs, credentials never echoed, every registered kind in the CLI help.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import sqlite3
import time
from pathlib import Path
from typing import Callable, List, Optional

import pytest
from mosquitto import MISSING_REASON, MOSQUITTO, Mosquitto, Subscriber, first_occurrences, free_port, synthetic_result

from edgeseg.cli import build_parser
from edgeseg.config.mqtt import MqttConfig
from edgeseg.errors import SinkError
from edgeseg.sinks import create_sink, register_sink, sink_kinds, sink_usage
from edgeseg.sinks.disk_queue import QUARANTINE_KEEP, DeadLetters, DiskQueue
from edgeseg.sinks.mqtt import MqttSink, publish_packet_size

BUDGET_S = 30.0
"""Safety net for waits on the broker; reaching it fails the test, it is not measured."""
BROKER_LIMIT = 1000
SECRET = "hunter2-S3cret"
TOPIC = "edgeseg/cam/detections"
PAGE = 4096


# ------------------------------------------------------------------------- oversize / poison


def limited_broker(workdir: Path) -> Mosquitto:
    """A real Mosquitto that refuses packets over ``BROKER_LIMIT`` bytes."""
    broker = Mosquitto(workdir)
    broker.stop()
    with open(broker.config_path, "a") as f:
        f.write(f"max_packet_size {BROKER_LIMIT}\n")
    broker.start()
    return broker


@pytest.mark.skipif(MOSQUITTO is None, reason=MISSING_REASON)
@pytest.mark.parametrize(
    ("protocol", "when", "big_instances", "counter", "delivered_maskless"),
    [
        ("5", "connected", 40, "refused", False),  # announced limit, known at write: never queued
        ("5", "connected", 6, "degraded", True),  # fits without masks: sent that way
        ("5", "queued_offline", 40, "oversize", False),  # queued before the limit was known
        ("5", "queued_offline", 6, "degraded", True),
        ("3.1.1", "connected", 40, "poisoned", False),  # no announced limit: the broker just disconnects
        ("3.1.1", "connected", 6, "poisoned", False),
        ("3.1.1", "queued_offline", 40, "poisoned", False),
    ],
)
def test_one_message_the_broker_refuses_never_blocks_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, protocol: str, when: str, big_instances: int, counter: str,
    delivered_maskless: bool,
) -> None:
    caplog.set_level(logging.INFO, logger="edgeseg.sinks.mqtt")
    big_id, small_ids = 5, [i for i in range(40) if i != 5]
    with limited_broker(tmp_path / "broker") as broker:
        sub = Subscriber(broker.uri, ("edgeseg/+/detections",), client_id="counter")
        if when == "queued_offline":
            broker.stop()
        sink = MqttSink(MqttConfig(uri=broker.uri, device_id="cam", protocol=protocol, reconnect_min_s=1,
                                   reconnect_max_s=1, queue={"path": str(tmp_path / "q.db")}))
        try:
            if when == "connected":
                assert sink.wait_connected(BUDGET_S)
            for i in range(40):
                size = (480, 640) if i == big_id else (48, 64)
                sink.write(synthetic_result(i, size=size, instances=big_instances if i == big_id else 2))
            if when == "queued_offline":
                broker.start()
            expected = set(small_ids) | ({big_id} if delivered_maskless else set())
            assert sub.wait_for_ids(expected, BUDGET_S), f"missing: {sorted(expected - set(sub.frame_ids()))}"
            assert sink.wait_drained(BUDGET_S)
            arrived = first_occurrences(sub.frame_ids())
            assert arrived == sorted(expected)  # in order, nothing lost
            c = sink.counters()
            assert getattr(c, counter) == 1, c
            assert c.queue_depth == 0
            dead = sink._queue.dead_letters.read()
            if delivered_maskless:
                big = next(p for p in sub.payloads() if p["frame_id"] == big_id)
                assert all(inst["mask"] is None for inst in big["instances"])
                assert dead == []
            else:
                assert [json.loads(e["payload"])["frame_id"] for e in dead] == [big_id]
                assert c.dead_lettered == 1 and big_id not in sub.frame_ids()
                said = [r.getMessage() for r in caplog.records
                        if r.levelno == logging.ERROR and "set aside" in r.getMessage()]
                assert len(said) == 1 and str(sink._queue.dead_letters.path) in said[0], said
            if protocol == "5":  # the limit is known: the broker never has to drop us
                assert c.max_packet_size == BROKER_LIMIT
                assert not [r for r in caplog.records if "lost the connection" in r.getMessage()]
            else:  # bounded: the first disconnect, then poison_disconnects - 1 more with it alone in flight
                lost = [r for r in caplog.records if "lost the connection" in r.getMessage()]
                assert 1 <= len(lost) <= sink.config.poison_disconnects + 1
        finally:
            sink.close()
            sub.close()


@pytest.mark.parametrize(
    ("topic", "payload_len", "qos", "v5", "expected"),
    [
        ("a/b", 10, 0, False, 1 + 1 + 2 + 3 + 10),
        ("a/b", 10, 1, False, 1 + 1 + 2 + 3 + 2 + 10),
        ("a/b", 10, 1, True, 1 + 1 + 2 + 3 + 2 + 1 + 10),
        ("a/b", 200, 1, False, 1 + 2 + 2 + 3 + 2 + 200),  # remaining length 207: two bytes
        ("ü", 0, 0, False, 1 + 1 + 2 + 2),  # the topic counts in UTF-8 bytes
    ],
)
def test_packet_size_is_the_whole_publish_packet(topic: str, payload_len: int, qos: int, v5: bool,
                                                 expected: int) -> None:
    assert publish_packet_size(topic, payload_len, qos, v5) == expected


def test_dead_letter_file_is_inspectable_and_bounded(tmp_path: Path) -> None:
    dead = DeadLetters(tmp_path / "q.db.dead-letter.jsonl", max_bytes=2048)
    for i in range(20):
        dead.add(TOPIC, json.dumps({"frame_id": i}).encode() + b" " * 200, "too large", 1.0)
    dead.add(TOPIC, b"\xff\x00binary", "poison")
    entries = dead.read()
    assert entries[-1]["payload_base64"] and entries[-1]["reason"] == "poison"
    assert json.loads(entries[0]["payload"])["frame_id"] > 0  # the oldest went to .1
    assert dead.path.stat().st_size <= 2048 and (tmp_path / "q.db.dead-letter.jsonl.1").stat().st_size <= 2048
    assert dead.count == 21


def test_dead_letter_moves_inflight_and_waiting_rows(tmp_path: Path) -> None:
    with DiskQueue(tmp_path / "q.db") as q:
        for i in range(4):
            q.put(TOPIC, str(i).encode())
        first = q.peek(2)
        q.mark_inflight([(m.id, 10 + k) for k, m in enumerate(first)])
        assert q.dead_letter([first[0].id, q.peek(1)[0].id], "test") == 2
        assert (q.depth, q.inflight, q.inflight_rows()) == (2, 1, [first[1].id])
        assert [m.payload for m in q.peek(10)] == [b"3"]
        assert [e["payload"] for e in q.dead_letters.read()] == ["0", "2"]
        assert q.counters().dead_lettered == 2


# ------------------------------------------------------------------------ damaged queue files


def _fill(path: Path, count: int = 300) -> List[bytes]:
    payloads = [json.dumps({"frame_id": i, "pad": "x" * 400}).encode() for i in range(count)]
    with DiskQueue(path) as q:
        for p in payloads:
            q.put(TOPIC, p)
    return payloads


def _scribble(offset: int, length: int) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        rng = random.Random(offset * 7919 + length)
        with open(path, "r+b") as f:
            f.seek(offset)
            f.write(bytes(rng.randrange(256) for _ in range(length)))
    return damage


def _leaf_pages(path: Path) -> None:
    """Random bytes over two pages in the middle of the records (the header and schema intact)."""
    pages = path.stat().st_size // PAGE
    _scribble((pages // 2) * PAGE, 2 * PAGE)(path)


def _truncate(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2 + 123)


def _text(path: Path) -> None:
    path.write_bytes(b"this is not a database, just some text" * 50)


def _other_format(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=7")
    db.commit()
    db.close()


@pytest.mark.parametrize(
    ("damage", "min_kept", "max_kept"),
    [
        (_scribble(0, 100), 0, 0),  # the 100-byte header: not a database any more
        (_scribble(16, 8), 0, 300),  # page size and format bytes
        (_scribble(100, 12), 0, 300),  # page 1's b-tree header: the schema is unreadable
        (_leaf_pages, 150, 299),  # some records gone, header intact: keep the others
        (_truncate, 50, 299),
        (_text, 0, 0),
        (_other_format, 0, 300),  # not damaged, but not ours to read: set aside for a matching edgeseg
    ],
)
def test_damaged_queue_is_quarantined_and_the_readable_records_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: Callable[[Path], None], min_kept: int, max_kept: int
) -> None:
    caplog.set_level(logging.INFO, logger="edgeseg.sinks.disk_queue")
    path = tmp_path / "q.db"
    payloads = _fill(path)
    damage(path)
    before = path.read_bytes()
    with DiskQueue(path) as q:
        kept = [m.payload for m in q.peek(1000)]
        assert min_kept <= len(kept) <= max_kept
        assert kept == [p for p in payloads if p in set(kept)]  # a subset, in the original order
        c = q.counters()
        assert (c.quarantined, c.salvaged, c.depth) == (1, len(kept), len(kept))
        (quarantined,) = q.quarantined_files
        assert quarantined.exists() and quarantined.parent == path.parent
        if damage is not _other_format:  # kept as found (a foreign file may be checkpointed by the salvage)
            assert quarantined.stat().st_size == len(before)
        q.put(TOPIC, b"after")  # a working queue
        assert q.peek(1000)[-1].payload == b"after"
    lines = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(lines) == 1 and "moved to" in lines[0].getMessage() and "\n" not in lines[0].getMessage()
    with DiskQueue(path) as q:  # and it stays good
        assert q.depth == len(kept) + 1 and q.counters().quarantined == 0


def test_mqtt_sink_starts_over_a_damaged_queue(tmp_path: Path) -> None:
    """What ``serve`` builds first: it must come up, not exit at every start."""
    path = tmp_path / "q.db"
    _fill(path, 20)
    _scribble(0, 100)(path)
    sink = MqttSink(MqttConfig(uri=f"mqtt://127.0.0.1:{free_port()}", device_id="cam", queue={"path": str(path)}))
    try:
        sink.write(synthetic_result(1))
        c = sink.counters()
        assert (c.quarantined, c.queue_depth) == (1, 1)
    finally:
        sink.close()


def test_quarantined_files_are_bounded(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    for _ in range(QUARANTINE_KEEP + 2):
        _text(path)
        DiskQueue(path).close()
        time.sleep(1.01)  # quarantine names carry the second
    assert len([p for p in tmp_path.glob("q.db.corrupt-*") if not p.name.endswith(("-wal", "-shm"))]) == \
        QUARANTINE_KEEP


# -------------------------------------------------------------------------------- sink specs


@pytest.mark.parametrize(
    ("spec", "built", "error"),
    [
        ("mqtt://127.0.0.1:{port}", True, None),
        ("MQTT://127.0.0.1:{port}", True, None),
        ("mqtts://127.0.0.1:{port}", True, None),
        ("mqtt:mqtt://127.0.0.1:{port}", True, None),
        ("mqtt:mqtt://u:{secret}@host", False, "credentials in mqtt.username"),
        ("mqtt://u:{secret}@host", False, "credentials in mqtt.username"),
        ("mqtts://u:{secret}@host:8883", False, "credentials in mqtt.username"),
        ("mqtt:http://u:{secret}@host", False, "unknown scheme 'http'"),
        ("mqtt://u:{secret}@host:99999", False, "sink spec"),
        ("mqtt:mqtt://u:{secret}@", False, "sink spec"),
        ("ftp://u:{secret}@host/x", False, "unknown kind 'ftp'"),
        ("u:{secret}@host", False, "unknown kind"),
        ("mqtt:", False, "must be KIND:PATH"),
    ],
)
def test_sink_specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: str, built: bool,
                    error: Optional[str]) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    spec = spec.format(port=free_port(), secret=SECRET)
    if built:
        sink = create_sink(spec)
        try:
            assert isinstance(sink, MqttSink)
        finally:
            sink.close()
        return
    assert error is not None
    with pytest.raises(SinkError, match=re.escape(error)) as info:
        create_sink(spec)
    assert SECRET not in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("command", ["run", "bench", "serve"])
def test_cli_sink_help_lists_every_registered_kind(command: str) -> None:
    register_sink("helptest", lambda path, options: create_sink("jsonl:" + path), "helptest:X  only in tests")
    try:
        parser = build_parser()
        sub = next(a for a in parser._actions if a.dest == "command").choices[command]  # type: ignore[union-attr]
        text = " ".join(sub.format_help().split())
        assert "mqtt" in sink_kinds()
        for usage in sink_usage():
            assert " ".join(usage.split()) in text, usage
    finally:
        from edgeseg.sinks import _KINDS

        del _KINDS["helptest"]


def test_run_summary_line_masks_sink_specs() -> None:
    source = Path(__file__).resolve().parents[1] / "edgeseg" / "cli.py"
    assert 'join(mask_credentials(spec) for spec in specs)' in source.read_text()
    assert os.path.exists(source)
