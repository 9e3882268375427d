"""The SQLite store-and-forward queue: order, in-flight marks, acks, drop policies, durability."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edgeseg.errors import SinkError
from edgeseg.sinks.disk_queue import DiskQueue

TOPIC = "edgeseg/cam/detections"


def payloads(queue: DiskQueue, limit: int = 1000) -> list[bytes]:
    return [m.payload for m in queue.peek(limit)]


def fill(queue: DiskQueue, ids: range) -> list[bool]:
    return [queue.put(TOPIC, str(i).encode()) for i in ids]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "queue.db"


def test_put_peek_in_order_and_peek_does_not_remove(path: Path) -> None:
    with DiskQueue(path) as q:
        assert fill(q, range(5)) == [True] * 5
        assert payloads(q) == [b"0", b"1", b"2", b"3", b"4"]
        assert payloads(q, 2) == [b"0", b"1"]
        assert q.peek(0) == []
        assert q.counters().as_dict() == {"queued": 5, "dropped": 0, "acked": 0, "depth": 5, "inflight": 0,
                                        "dead_lettered": 0, "quarantined": 0, "salvaged": 0}
        assert q.peek(1)[0].topic == TOPIC


def test_inflight_is_skipped_acked_by_mid_and_requeued_first(path: Path) -> None:
    with DiskQueue(path) as q:
        fill(q, range(5))
        first = q.peek(3)
        q.mark_inflight([(m.id, 100 + k) for k, m in enumerate(first)])
        assert payloads(q) == [b"3", b"4"]  # in flight: not offered again
        assert q.inflight == 3
        assert q.ack([101, 999]) == 1  # 999: unknown mid, ignored
        assert q.counters().as_dict() == {"queued": 5, "dropped": 0, "acked": 1, "depth": 4, "inflight": 2,
                                        "dead_lettered": 0, "quarantined": 0, "salvaged": 0}
        assert q.requeue_inflight() == 2
        assert payloads(q) == [b"0", b"2", b"3", b"4"]  # the requeued ones go first, in order
        assert q.ack([100]) == 0  # a PUBACK from the old connection no longer deletes anything


@pytest.mark.parametrize(
    ("policy", "max_messages", "count", "survivors", "accepted", "dropped"),
    [
        ("drop_oldest", 4, 7, [b"3", b"4", b"5", b"6"], [True] * 7, 3),
        ("drop_newest", 4, 7, [b"0", b"1", b"2", b"3"], [True] * 4 + [False] * 3, 3),
        ("drop_oldest", 4, 4, [b"0", b"1", b"2", b"3"], [True] * 4, 0),
        ("drop_newest", 1, 3, [b"0"], [True, False, False], 2),
    ],
)
def test_full_queue_policy(
    path: Path, policy: str, max_messages: int, count: int, survivors: list[bytes], accepted: list[bool],
    dropped: int,
) -> None:
    with DiskQueue(path, max_messages=max_messages, policy=policy) as q:  # type: ignore[arg-type]
        assert fill(q, range(count)) == accepted
        assert payloads(q) == survivors
        c = q.counters()
        assert (c.dropped, c.depth, c.queued) == (dropped, len(survivors), count - (dropped if policy == "drop_newest"
                                                                                      else 0))


def test_drop_oldest_may_drop_a_message_in_flight(path: Path) -> None:
    with DiskQueue(path, max_messages=3) as q:
        fill(q, range(3))
        q.mark_inflight([(q.peek(1)[0].id, 7)])
        fill(q, range(3, 4))  # drops "0", which was in flight
        assert (q.inflight, q.depth) == (0, 3)
        assert q.ack([7]) == 0
        assert payloads(q) == [b"1", b"2", b"3"]


def test_reopen_keeps_messages_and_requeues_inflight(path: Path) -> None:
    with DiskQueue(path) as q:
        fill(q, range(4))
        q.mark_inflight([(m.id, k + 1) for k, m in enumerate(q.peek(2))])
        q.ack([1])
    with DiskQueue(path) as q:
        assert (q.depth, q.inflight, q.requeued_at_open) == (3, 0, 1)
        assert payloads(q) == [b"1", b"2", b"3"]
        fill(q, range(4, 5))
        assert payloads(q)[-1] == b"4"  # ids keep increasing after a reopen


def test_smaller_limit_on_reopen_drops_down_to_it(path: Path) -> None:
    with DiskQueue(path) as q:
        fill(q, range(6))
    with DiskQueue(path, max_messages=3) as q:
        fill(q, range(6, 7))
        assert payloads(q) == [b"4", b"5", b"6"]
        assert q.counters().dropped == 4


_KILLED_WRITER = """
import os, signal, sys
from edgeseg.sinks.disk_queue import DiskQueue
q = DiskQueue(sys.argv[1])
for i in range(int(sys.argv[2])):
    q.put("t", str(i).encode())
print("written", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_every_put_survives_sigkill(path: Path) -> None:
    """A put that returned is on disk even if the process dies right after (no close, no checkpoint)."""
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(path), "300"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert proc.stdout.strip() == "written"
    with DiskQueue(path) as q:
        assert q.depth == 300
        assert payloads(q, 1000) == [str(i).encode() for i in range(300)]


def test_second_opener_is_refused_while_the_first_holds_the_file(path: Path) -> None:
    with DiskQueue(path) as q:
        fill(q, range(2))
        with pytest.raises(SinkError, match="in use by another process"):
            DiskQueue(path)
        holder = subprocess.run(
            [sys.executable, "-c", "import sys; from edgeseg.sinks.disk_queue import DiskQueue; DiskQueue(sys.argv[1])",
             str(path)], capture_output=True, text=True, timeout=60)
        assert "in use by another process" in holder.stderr
    with DiskQueue(path) as q:  # released on close
        assert q.depth == 2


def test_unusable_file_is_quarantined_not_refused(path: Path) -> None:
    """More variants in tests/test_hardening_mqtt.py; here: the queue opens and says where the file went."""
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a database, just some text" * 50)
    with DiskQueue(path) as q:
        assert q.depth == 0 and q.quarantined_files[0].read_bytes().startswith(b"this is not a database")


def test_closed_queue_refuses_and_close_is_idempotent(path: Path) -> None:
    q = DiskQueue(path)
    q.close()
    q.close()
    with pytest.raises(SinkError, match="closed"):
        q.put(TOPIC, b"x")


@pytest.mark.parametrize(
    ("kwargs", "raises"),
    [
        ({"max_messages": 0}, "max_messages"),
        ({"policy": "drop_random"}, "policy"),
        ({"synchronous": "off"}, "synchronous"),
    ],
)
def test_bad_arguments(path: Path, kwargs: dict[str, object], raises: str) -> None:
    with pytest.raises(ValueError, match=raises):
        DiskQueue(path, **kwargs)  # type: ignore[arg-type]


def test_synchronous_full_is_applied(path: Path) -> None:
    with DiskQueue(path, synchronous="full") as q:
        assert q._conn().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert q._conn().execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_producer_and_sender_threads_lose_nothing(path: Path) -> None:
    """One thread puts while another peeks, marks and acks, as the sink's threads do."""
    total = 2000
    with DiskQueue(path, max_messages=total) as q:
        done = threading.Event()
        seen: list[bytes] = []

        def sender() -> None:
            mid = 0
            while not (done.is_set() and q.depth == 0):
                batch = q.peek(50)
                pairs = []
                for m in batch:
                    mid += 1
                    pairs.append((m.id, mid))
                    seen.append(m.payload)
                q.mark_inflight(pairs)
                q.ack([p[1] for p in pairs])

        thread = threading.Thread(target=sender)
        thread.start()
        fill(q, range(total))
        done.set()
        thread.join(30)
        assert not thread.is_alive()
        assert seen == [str(i).encode() for i in range(total)]
        assert q.counters().as_dict() == {"queued": total, "dropped": 0, "acked": total, "depth": 0, "inflight": 0,
                                                 "dead_lettered": 0, "quarantined": 0, "salvaged": 0}
