"""Events through a broker outage: is any event message lost on ``<prefix>/<device>/events``?

A producer writes synthetic frame results with analytics through the real ``MqttSink`` (QoS 1,
disk queue) at ``--fps`` frames per second carrying ``--events-per-s`` event messages per second
in all (new / update / end, documents shaped like ``edgeseg/schemas/event.v1.json``, about 1 KB),
plus the frame's detections and a zone count that changes. After ``--before-s`` seconds the
Mosquitto broker (tests/mosquitto.py, loopback, persistence on) is stopped for ``--outage-s``
seconds and started again on the same port; the producer goes on for ``--after-s`` seconds more.
A paho subscriber with a persistent session counts the event messages that arrive, by their key
(``event_id``, ``type``, ``time``: a QoS 1 re-send has the same key, so it is a duplicate, not a
new message).

    .venv/bin/python benchmarks/bench_events_outage.py            # 20 events/s, a 10 s outage

Prints ``events sent N, received N, lost 0, duplicates k`` and the queue's peak depth and drain
time. Exit status 1 when an event is lost. Needs the ``mosquitto`` binary.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from mosquitto import MISSING_REASON, MOSQUITTO, Mosquitto, Subscriber, synthetic_result  # noqa: E402

from edgeseg.analytics.types import Analytics, Event, TrackUpdate, ZoneUpdate  # noqa: E402
from edgeseg.config.mqtt import MqttConfig  # noqa: E402
from edgeseg.sinks.mqtt import MqttSink  # noqa: E402

BUDGET_S = 300.0
KINDS = ("new", "update", "update", "end")
Key = Tuple[str, str, float]


def event_document(event_id: str, kind: str, t: float, track_id: int) -> Dict[str, Any]:
    """A document of the size and shape of an event message (a zone visit, a short path, a best frame)."""
    return {
        "schema": "edgeseg/event", "version": 1, "type": kind, "event_id": event_id, "track_id": track_id,
        "camera": "bench", "class": "person", "class_id": 0, "time": t,
        "score": {"best": 0.91, "current": 0.84}, "start_time": t - 3.0,
        "end_time": t if kind == "end" else None, "end_reason": "removed" if kind == "end" else None,
        "last_seen": t, "stationary": False,
        "zones": {"door": {"entered_at": t - 2.0, "left_at": None, "dwell_s": 2.0}},
        "current_zones": ["door"], "crossings": [{"line": "gate", "direction": "in", "time": t - 1.0}],
        "best": {"frame_id": 1, "time": t - 1.5, "box": [10.0, 20.0, 110.0, 220.0], "score": 0.91,
                 "mask": {"format": "rle", "size": [480, 640], "counts": "a1b2" * 100}},
        "snapshot": None, "path": [[100.0 + i, 200.0 + i, t - 3.0 + i * 0.3] for i in range(10)],
        "reasons": [kind],
    }


def frame(frame_id: int, per_frame: int, seq: List[int]):  # type: ignore[no-untyped-def]
    """A frame result with ``per_frame`` event messages (each a new key) and a changing zone count."""
    result = synthetic_result(frame_id)
    t = result.frame.timestamp
    events = []
    for _ in range(per_frame):
        n = seq[0]
        seq[0] += 1
        track = n // len(KINDS) + 1
        kind = KINDS[n % len(KINDS)]
        doc = event_document(f"bench-{track}", kind, t + (n % len(KINDS)) * 1e-3, track)
        events.append(Event(type=kind, event_id=doc["event_id"], track_id=track, reasons=(kind,),  # type: ignore[arg-type]
                            document=doc))
    tracks = TrackUpdate(frame_id=frame_id, timestamp=t, track_ids=np.array([1, -1], np.int32), tracks=())
    zones = ZoneUpdate(occupancy={"door": {"person": (frame_id // 7) % 3}})
    return dataclasses.replace(result, analytics=Analytics(tracks=tracks, zones=zones, events=tuple(events)))


def key(payload: bytes) -> Key:
    doc = json.loads(payload)
    return doc["event_id"], doc["type"], doc["time"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events-per-s", type=float, default=20.0)
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--before-s", type=float, default=5.0)
    parser.add_argument("--outage-s", type=float, default=10.0)
    parser.add_argument("--after-s", type=float, default=5.0)
    parser.add_argument("--reconnect-max-s", type=int, default=60, help="mqtt.reconnect_max_s (the default: 60)")
    args = parser.parse_args()
    if MOSQUITTO is None:
        print(MISSING_REASON, file=sys.stderr)
        return 2
    per_frame = max(1, round(args.events_per_s / args.fps))
    total_s = args.before_s + args.outage_s + args.after_s
    frames = int(total_s * args.fps)
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp) / "broker") as broker:
        sub = Subscriber(broker.uri, ("edgeseg/+/events",), client_id="bench-events")
        config = MqttConfig(uri=broker.uri, device_id="bench", reconnect_min_s=1,
                            reconnect_max_s=args.reconnect_max_s, queue={"path": str(Path(tmp) / "q.db")})
        sink = MqttSink(config)
        if not sink.wait_connected(30):
            print("could not connect", file=sys.stderr)
            return 2
        sent: List[Key] = []
        peak = [0]
        seq = [0]

        def produce() -> None:
            t0 = time.monotonic()
            for i in range(frames):
                time.sleep(max(0.0, t0 + i / args.fps - time.monotonic()))
                result = frame(i, per_frame, seq)
                sink.write(result)
                sent.extend(key(json.dumps(e.document).encode()) for e in result.analytics.events)
                peak[0] = max(peak[0], sink.counters().queue_depth)

        producer = threading.Thread(target=produce)
        producer.start()
        time.sleep(args.before_s)
        broker.stop()
        stopped = time.monotonic()
        time.sleep(args.outage_s)
        broker.start()
        restarted = time.monotonic()
        producer.join(BUDGET_S)
        drained = sink.wait_drained(BUDGET_S)
        drain_s = time.monotonic() - restarted
        expected = set(sent)
        deadline = time.monotonic() + BUDGET_S
        while time.monotonic() < deadline:
            got = Counter(key(p) for t, p, _ in list(sub.messages) if t.endswith("/events"))
            if expected <= set(got):
                break
            time.sleep(0.1)
        time.sleep(1.0)  # late duplicates, if any, are counted too
        got = Counter(key(p) for t, p, _ in list(sub.messages) if t.endswith("/events"))
        counters = sink.counters()
        sink.close()
        sub.close()
    lost = len(expected - set(got))
    duplicates = sum(n - 1 for n in got.values())
    print(f"events sent {len(sent)}, received {len(set(got) & expected)}, lost {lost}, duplicates {duplicates}")
    print(f"  {args.events_per_s:g} events/s at {args.fps:g} fps with detections and zone counts; broker down "
          f"{restarted - stopped:.1f} s; queue peak {peak[0]} messages; drained {drain_s:.1f} s after the restart "
          f"({'ok' if drained else 'NOT drained'}); counts superseded in the queue {counters.superseded}; "
          f"dropped {counters.dropped}")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
