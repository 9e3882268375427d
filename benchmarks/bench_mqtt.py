"""MQTT sink: throughput through the disk queue to a local Mosquitto, and the loss checks.

Needs the ``mosquitto`` binary (Debian: ``apt-get install -y mosquitto``); the broker runs on a
free loopback port with a generated config (tests/mosquitto.py), a paho subscriber with a
persistent session counts what arrives, by frame id.

    .venv/bin/python benchmarks/bench_mqtt.py                  # throughput + both loss checks
    .venv/bin/python benchmarks/bench_mqtt.py --messages 20000 --skip-loss
    .venv/bin/python benchmarks/bench_mqtt.py --oversize [--protocol 3.1.1] [--oversize-s 30]

Throughput, three numbers (messages are synthetic frame results with RLE masks, QoS 1):
  write      ``MqttSink.write`` calls per second (JSON + RLE + one committed SQLite insert)
             while the broker is connected and the feeder sends concurrently;
  end-to-end from the first write to the last frame at the subscriber, same run;
  drain      a backlog queued while the broker was down, from its restart to the last PUBACK.
Oversize (issue 11): a broker with ``max_packet_size 1000``; a producer at --rate frames/s of small
  frames for --oversize-s seconds with one frame early (the 5th) too large even without masks.
  Prints delivered/expected of the others and where the large one went (dead-letter file,
  counter). Pass = every other frame arrives, in order.
Loss checks (pass = every frame id arrives, first arrivals in order; duplicates are counted):
  outage     a producer at --rate frames/s; the broker is stopped for --outage-s seconds
             mid-run and restarted on the same port;
  sigkill    a publisher child (tests/mosquitto.py) at max(--rate, 100) frames/s; after 2 s the
             broker is paused (SIGSTOP: connection open, no PUBACKs) for 2 s, the child is
             SIGKILLed with messages in flight and waiting, the broker resumes, and the child
             is restarted with the same queue file and the next frame ids.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from mosquitto import (  # noqa: E402 - tests/ is put on the path first
    MISSING_REASON,
    MOSQUITTO,
    ChildOutput,
    Mosquitto,
    Subscriber,
    first_occurrences,
    start_child,
    synthetic_result,
)

from edgeseg.config.mqtt import MqttConfig  # noqa: E402
from edgeseg.sinks.disk_queue import DiskQueue  # noqa: E402
from edgeseg.sinks.mqtt import MqttSink, encode_frame_result  # noqa: E402

TOPICS = ("edgeseg/+/detections",)
BUDGET_S = 120.0
TARGET_MSGS_PER_S = 500.0
RESULT_SIZE = (480, 640)
INSTANCES = 3


def _config(uri: str, work: Path, device: str) -> MqttConfig:
    return MqttConfig(uri=uri, device_id=device, reconnect_min_s=1, reconnect_max_s=2,
                      queue={"path": str(work / f"{device}.db"), "max_messages": 1_000_000})


def _delivery(sub: Subscriber, expected: int) -> dict[str, Any]:
    ids = sub.frame_ids()
    firsts = first_occurrences(ids)
    lost = sorted(set(range(expected)) - set(ids))
    return {
        "expected": expected,
        "received": len(ids),
        "lost": len(lost),
        "lost_ids": lost[:20],
        "duplicates": len(ids) - len(firsts),
        "in_order": firsts == sorted(firsts),
    }


def throughput(work: Path, count: int, instances: int = INSTANCES) -> dict[str, Any]:
    results = [synthetic_result(i, size=RESULT_SIZE, instances=instances) for i in range(count)]
    with Mosquitto(work / "broker-throughput") as broker:
        sub = Subscriber(broker.uri, TOPICS, client_id="bench-throughput")
        sink = MqttSink(_config(broker.uri, work, "bench-live"))
        assert sink.wait_connected(10), "no connection to the local broker"
        t0 = time.perf_counter()
        for r in results:
            sink.write(r)
        t_written = time.perf_counter()
        sub.wait_for_ids(set(range(count)), BUDGET_S)
        t_received = time.perf_counter()
        sink.wait_drained(BUDGET_S)
        sink.close()
        live = _delivery(sub, count)
        sub.close()

        # drain: queue a backlog with the broker down, then time broker restart -> queue empty
        sub = Subscriber(broker.uri, TOPICS, client_id="bench-drain")
        broker.stop()
        sink = MqttSink(_config(broker.uri, work, "bench-backlog"))
        for r in results:
            sink.write(r)
        broker.start()
        assert sink.wait_connected(10), "no reconnection to the local broker"
        t_up = time.perf_counter()
        drained = sink.wait_drained(BUDGET_S)
        t_drained = time.perf_counter()
        sub.wait_for_ids(set(range(count)), BUDGET_S)
        sink.close()
        backlog = _delivery(sub, count)
        sub.close()
    payload_bytes = len(encode_frame_result(results[0], "rle", 1 << 20).data)
    return {
        "messages": count,
        "payload_bytes": payload_bytes,
        "write_msgs_per_s": round(count / (t_written - t0), 1),
        "end_to_end_msgs_per_s": round(count / (t_received - t0), 1),
        "drain_msgs_per_s": round(count / (t_drained - t_up), 1) if drained else None,
        "live_delivery": live,
        "backlog_delivery": backlog,
    }


def outage_check(
    work: Path, rate: float, outage_s: float, before_s: float = 3.0, after_s: float = 3.0
) -> dict[str, Any]:
    count = int(rate * (before_s + outage_s + after_s))
    with Mosquitto(work / "broker-outage") as broker:
        sub = Subscriber(broker.uri, TOPICS, client_id="bench-outage")
        sink = MqttSink(_config(broker.uri, work, "bench-outage"))
        assert sink.wait_connected(10)
        max_write_ms = 0.0

        def produce() -> None:
            nonlocal max_write_ms
            t0 = time.monotonic()
            for i in range(count):
                time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
                t = time.perf_counter()
                sink.write(synthetic_result(i, size=RESULT_SIZE, instances=INSTANCES))
                max_write_ms = max(max_write_ms, (time.perf_counter() - t) * 1e3)

        producer = threading.Thread(target=produce)
        producer.start()
        time.sleep(before_s)
        broker.stop()
        t_down = time.monotonic()
        depth_in_outage = 0
        while time.monotonic() - t_down < outage_s:
            time.sleep(0.1)
            depth_in_outage = max(depth_in_outage, sink.counters().queue_depth)
        broker.start()
        measured_outage = time.monotonic() - t_down
        producer.join()
        sink.wait_drained(BUDGET_S)
        sub.wait_for_ids(set(range(count)), BUDGET_S)
        sink.close()
        out = _delivery(sub, count)
        sub.close()
    out.update(outage_s=round(measured_outage, 1), rate=rate, max_queue_depth=depth_in_outage,
               max_write_ms=round(max_write_ms, 2))
    return out


def sigkill_check(
    work: Path, rate: float, run_s: float = 2.0, paused_s: float = 2.0, rest: int = 200
) -> dict[str, Any]:
    queue = work / "bench-child.db"
    with Mosquitto(work / "broker-sigkill") as broker:
        sub = Subscriber(broker.uri, TOPICS, client_id="bench-sigkill")
        first = ChildOutput(start_child(broker.uri, queue, count=10**7, rate=rate, hold=True))
        second: ChildOutput | None = None
        try:
            first.wait_queued(int(rate * run_s), BUDGET_S)
            broker.pause()  # no PUBACKs from here on: the window fills, the rest waits on disk
            first.wait_queued(int(rate * (run_s + paused_s)), BUDGET_S)
            first.kill()
            broker.resume()
            killed_after = first.last_queued
            with DiskQueue(queue) as left:  # what the killed child left: waiting + in flight
                unacked, inflight = left.depth, left.requeued_at_open
            second = ChildOutput(start_child(broker.uri, queue, start=killed_after + 1, count=rest))
            second.drained.wait(BUDGET_S)
            second.proc.wait(BUDGET_S)
        finally:
            for child in (first, second):
                if child is not None and child.proc.poll() is None:
                    child.kill()
        end = killed_after + 1 + rest
        sub.wait_for_ids(set(range(end)), BUDGET_S)
        out = _delivery(sub, end)
        sub.close()
    out.update(killed_after_frame=killed_after, rate=rate, unacked_at_kill=unacked, inflight_at_kill=inflight)
    return out


OVERSIZE_LIMIT = 1000
OVERSIZE_AT = 5


def oversize_check(work: Path, rate: float, seconds: float, protocol: str) -> dict[str, Any]:
    count = int(rate * seconds)
    with Mosquitto(work / f"broker-oversize-{protocol}") as broker:
        broker.stop()
        with open(broker.config_path, "a") as f:
            f.write(f"max_packet_size {OVERSIZE_LIMIT}\n")
        broker.start()
        sub = Subscriber(broker.uri, TOPICS, client_id=f"bench-oversize-{protocol}")
        config = MqttConfig(uri=broker.uri, device_id="bench-oversize", protocol=protocol, reconnect_min_s=1,
                            reconnect_max_s=2, queue={"path": str(work / f"oversize-{protocol}.db")})
        sink = MqttSink(config)
        assert sink.wait_connected(10)
        t0 = time.monotonic()
        for i in range(count):
            time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            big = i == OVERSIZE_AT
            sink.write(synthetic_result(i, size=RESULT_SIZE if big else (48, 64), instances=40 if big else 2))
        others = set(range(count)) - {OVERSIZE_AT}
        sub.wait_for_ids(others, 10)
        elapsed = time.monotonic() - t0
        counters = sink.counters()
        dead = sink._queue.dead_letters.read()  # noqa: SLF001 - the benchmark inspects the file
        sink.close()
        ids = sub.frame_ids()
        sub.close()
    firsts = [i for i in first_occurrences(ids) if i != OVERSIZE_AT]
    where = [{"frame_id": json.loads(e["payload"])["frame_id"], "reason": e["reason"]} for e in dead]
    return {
        "protocol": protocol,
        "broker_max_packet_size": OVERSIZE_LIMIT,
        "seconds": round(elapsed, 1),
        "delivered": len(set(ids) & others),
        "expected": len(others),
        "in_order": firsts == sorted(firsts),
        "oversize_delivered": OVERSIZE_AT in ids,
        "oversize_went_to": str(config.dead_letter_path()) if where else None,
        "dead_letters": where,
        "counters": {k: getattr(counters, k) for k in ("refused", "oversize", "poisoned", "dead_lettered",
                                                        "degraded", "max_packet_size", "acked", "sent")},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5000, help="messages for the throughput runs")
    parser.add_argument("--instances", type=int, default=INSTANCES, help="masked instances per frame (payload size)")
    parser.add_argument("--rate", type=float, default=30.0, help="frames/s of the loss-check producers")
    parser.add_argument("--outage-s", type=float, default=10.0, help="broker outage of the loss check")
    parser.add_argument("--skip-loss", action="store_true", help="throughput only")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--oversize", action="store_true", help="only the oversize-message check (issue 11)")
    parser.add_argument("--oversize-s", type=float, default=30.0, help="duration of the oversize check")
    parser.add_argument("--protocol", choices=["5", "3.1.1", "both"], default="both",
                        help="MQTT version of the oversize check")
    args = parser.parse_args()
    if MOSQUITTO is None:
        print(f"bench_mqtt: {MISSING_REASON}", file=sys.stderr)
        return 2
    report: dict[str, Any] = {}
    if args.oversize:
        with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as tmp:
            protocols = ["5", "3.1.1"] if args.protocol == "both" else [args.protocol]
            runs = [oversize_check(Path(tmp), args.rate, args.oversize_s, p) for p in protocols]
        ok = all(r["delivered"] == r["expected"] and r["in_order"] for r in runs)
        for r in runs:
            print(json.dumps(r) if args.json else
                  f"oversize, MQTT {r['protocol']}, broker max_packet_size {r['broker_max_packet_size']}: "
                  f"delivered {r['delivered']}/{r['expected']} others in {r['seconds']} s (in order: "
                  f"{r['in_order']}); the oversize frame: delivered={r['oversize_delivered']}, went to "
                  f"{r['oversize_went_to']} {r['dead_letters']}; counters {r['counters']}")
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as tmp:
        work = Path(tmp)
        report["throughput"] = throughput(work, args.messages, args.instances)
        if not args.skip_loss:
            report["outage"] = outage_check(work, args.rate, args.outage_s)
            report["sigkill"] = sigkill_check(work, max(args.rate, 100.0))
    ok = report["throughput"]["end_to_end_msgs_per_s"] >= TARGET_MSGS_PER_S and all(
        r["lost"] == 0 for r in (report["throughput"]["live_delivery"], report["throughput"]["backlog_delivery"],
                                 report.get("outage", {"lost": 0}), report.get("sigkill", {"lost": 0}))
    )
    report["pass"] = ok
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        t = report["throughput"]
        print(f"throughput ({t['messages']} msgs of {t['payload_bytes']} B, QoS 1, disk queue): "
              f"write {t['write_msgs_per_s']}/s, end-to-end {t['end_to_end_msgs_per_s']}/s, "
              f"backlog drain {t['drain_msgs_per_s']}/s (target >= {TARGET_MSGS_PER_S:.0f}/s)")
        for name in ("live_delivery", "backlog_delivery"):
            print(f"  {name}: {t[name]}")
        for name in ("outage", "sigkill"):
            if name in report:
                print(f"{name}: {report[name]}")
        print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
