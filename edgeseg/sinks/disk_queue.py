"""A bounded, ordered, on-disk message queue (SQLite in WAL mode) for store-and-forward MQTT.

A message is a row from the moment ``put`` returns until the broker acknowledges it:

    put ─► waiting ─► mark_inflight(row, mid) ─► in flight ─► ack(mid) ─► row deleted
                           ▲                         │
                           └── requeue_inflight() ◄──┘  on reconnect, and on every open

so neither a broker outage nor a killed process loses a queued message; the price is that a
message whose PUBACK was lost is sent again (at least once; consumers de-duplicate by frame id).

Durability: every ``put`` is one committed transaction. With ``synchronous="normal"`` (the
default) a commit is in the WAL file, i.e. in the kernel's page cache, when ``put`` returns:
it survives the process being killed (SIGKILL, OOM killer, a crash), not a power cut or kernel
panic, after which the last commits may be missing (the file stays consistent). With
``synchronous="full"`` each commit is fsynced and survives power loss too, at the cost of one
flash write per message. In-flight marks and acks are batched: losing one only means a resend.

The file is opened in exclusive locking mode: a second process (a second daemon with the same
queue) is refused instead of sending everything twice. The kernel drops the lock when the holder
dies, so a restarted daemon opens the file at once. One connection, one lock: every method is
safe to call from any thread.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final, Literal

from edgeseg.errors import SinkError
from edgeseg.resources import Closeable

log = logging.getLogger(__name__)

DropPolicy = Literal["drop_oldest", "drop_newest"]
Synchronous = Literal["normal", "full"]

SCHEMA_VERSION: Final = 1
"""``PRAGMA user_version`` of the queue file this code reads and writes."""
JOURNAL_SIZE_LIMIT: Final = 16 * 1024 * 1024
"""After a checkpoint the WAL file is truncated back to this many bytes."""

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS messages (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,  -- queue order; never reused
    topic   TEXT    NOT NULL,
    payload BLOB    NOT NULL,
    created REAL    NOT NULL,                   -- time.time() when queued
    mid     INTEGER                             -- NULL: waiting; else the MQTT message id in flight
)
"""


@dataclass(frozen=True)
class QueuedMessage:
    """One stored message: its row id (queue order), topic and payload."""

    id: int
    topic: str
    payload: bytes


@dataclass(frozen=True)
class QueueCounters:
    """What the queue has done since it was opened, and what it holds now.

    Attributes:
        queued: messages stored by ``put``.
        dropped: messages discarded by the full-queue policy (the oldest, or the new one).
        acked: messages deleted on acknowledgement.
        depth: messages on disk now, waiting and in flight.
        inflight: messages marked in flight now.
    """

    queued: int
    dropped: int
    acked: int
    depth: int
    inflight: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class DiskQueue(Closeable):
    """Store-and-forward queue in one SQLite file.

    Args:
        path: the database file (its directory is created).
        max_messages: most rows kept; a ``put`` into a full queue applies ``policy``.
        policy: ``drop_oldest`` deletes the oldest row (in flight or not) to make room;
            ``drop_newest`` refuses the new message. Either is counted in ``dropped``.
        synchronous: ``normal`` or ``full``; see the module docstring.

    Attributes:
        requeued_at_open: messages found in flight when the file was opened (sent by a process
            that stopped or died before their acknowledgement); they go out again first.

    Raises:
        SinkError: the file cannot be created or opened, is not a queue of this version, or
            is held by another process.
    """

    def __init__(
        self,
        path: str | Path,
        max_messages: int = 100_000,
        policy: DropPolicy = "drop_oldest",
        synchronous: Synchronous = "normal",
    ):
        if max_messages < 1:
            raise ValueError(f"max_messages must be >= 1, got {max_messages}")
        if policy not in ("drop_oldest", "drop_newest"):
            raise ValueError(f"policy must be drop_oldest or drop_newest, got {policy!r}")
        if synchronous not in ("normal", "full"):
            raise ValueError(f"synchronous must be normal or full, got {synchronous!r}")
        self.path = Path(path)
        self.max_messages = max_messages
        self.policy: DropPolicy = policy
        self._lock = threading.RLock()
        self._inflight: dict[int, int] = {}  # MQTT mid -> row id
        self._queued = self._dropped = self._acked = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db: sqlite3.Connection | None = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False, timeout=0.0
            )
        except (OSError, sqlite3.Error) as exc:
            raise SinkError(f"cannot open MQTT queue {str(self.path)!r}: {exc}") from None
        try:
            self._depth, self.requeued_at_open = self._setup(synchronous)
        except sqlite3.OperationalError as exc:
            self._close_quietly()
            if "locked" in str(exc):
                raise SinkError(
                    f"MQTT queue {str(self.path)!r} is in use by another process (one queue file per daemon)"
                ) from None
            raise SinkError(f"cannot open MQTT queue {str(self.path)!r}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            self._close_quietly()
            raise SinkError(f"MQTT queue {str(self.path)!r} is not a usable SQLite queue: {exc}") from None
        if self._depth:
            log.info("MQTT queue %s: %d unsent messages from before (%d were in flight)",
                     self.path, self._depth, self.requeued_at_open)

    def _setup(self, synchronous: Synchronous) -> tuple[int, int]:
        db = self._conn()
        # Exclusive locking first: WAL then needs no shared-memory file, and the lock is ours.
        db.execute("PRAGMA locking_mode=EXCLUSIVE")
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot switch to WAL journal mode (got {mode})")
        db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        db.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        db.execute("BEGIN IMMEDIATE")  # takes the exclusive lock now, not at the first put
        try:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            tables = db.execute("SELECT count(*) FROM sqlite_master WHERE name='messages'").fetchone()[0]
            if tables and version != SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"queue format {version}, this edgeseg reads {SCHEMA_VERSION}")
            db.execute(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            # Nothing is in flight in a fresh process: what was, goes out again first.
            requeued = db.execute("UPDATE messages SET mid=NULL WHERE mid IS NOT NULL").rowcount
            depth = int(db.execute("SELECT count(*) FROM messages").fetchone()[0])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return depth, requeued

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise SinkError(f"MQTT queue {str(self.path)!r} is closed")
        return self._db

    def _close_quietly(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- the producer side ---------------------------------------------------------------------

    def put(self, topic: str, payload: bytes) -> bool:
        """Store one message durably (see the module docstring); False if ``drop_newest`` refused it.

        Raises ``SinkError`` when the write fails (disk full, file gone, queue closed).
        """
        with self._lock:
            db = self._conn()
            try:
                if self._depth >= self.max_messages:
                    if self.policy == "drop_newest":
                        self._dropped += 1
                        return False
                    db.execute("BEGIN IMMEDIATE")
                    try:
                        self._drop_oldest(db, self._depth - self.max_messages + 1)
                        self._insert(db, topic, payload)
                        db.execute("COMMIT")
                    except BaseException:
                        db.execute("ROLLBACK")
                        raise
                else:
                    self._insert(db, topic, payload)  # autocommit: one transaction
            except sqlite3.Error as exc:
                raise SinkError(f"cannot write to MQTT queue {str(self.path)!r}: {exc}") from None
            self._depth += 1
            self._queued += 1
            return True

    @staticmethod
    def _insert(db: sqlite3.Connection, topic: str, payload: bytes) -> None:
        db.execute("INSERT INTO messages (topic, payload, created) VALUES (?, ?, ?)", (topic, payload, time.time()))

    def _drop_oldest(self, db: sqlite3.Connection, count: int) -> None:
        rows = db.execute("SELECT id, mid FROM messages ORDER BY id LIMIT ?", (count,)).fetchall()
        db.executemany("DELETE FROM messages WHERE id=?", [(row_id,) for row_id, _ in rows])
        for row_id, mid in rows:
            if mid is not None and self._inflight.get(mid) == row_id:
                del self._inflight[mid]  # its PUBACK, should it come, then deletes nothing
        self._depth -= len(rows)
        self._dropped += len(rows)

    # -- the sender side -----------------------------------------------------------------------

    def peek(self, limit: int) -> list[QueuedMessage]:
        """Up to ``limit`` waiting (not in-flight) messages, oldest first; they stay queued."""
        if limit <= 0:
            return []
        with self._lock:
            try:
                rows = self._conn().execute(
                    "SELECT id, topic, payload FROM messages WHERE mid IS NULL ORDER BY id LIMIT ?", (limit,)
                ).fetchall()
            except sqlite3.Error as exc:
                raise SinkError(f"cannot read MQTT queue {str(self.path)!r}: {exc}") from None
        return [QueuedMessage(int(i), str(t), bytes(p)) for i, t, p in rows]

    def mark_inflight(self, sent: Iterable[tuple[int, int]]) -> None:
        """Record ``(row id, mid)`` pairs handed to the client, in one transaction."""
        pairs = list(sent)
        if not pairs:
            return
        with self._lock:
            db = self._conn()
            try:
                db.execute("BEGIN")
                db.executemany("UPDATE messages SET mid=? WHERE id=?", [(mid, row_id) for row_id, mid in pairs])
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback(db)
                raise SinkError(f"cannot write to MQTT queue {str(self.path)!r}: {exc}") from None
            for row_id, mid in pairs:
                self._inflight[mid] = row_id

    def ack(self, mids: Iterable[int]) -> int:
        """Delete the in-flight messages with these MQTT message ids; how many were deleted.

        An unknown mid (a message dropped by the policy meanwhile, or from before a requeue) is
        ignored.
        """
        with self._lock:
            rows = [self._inflight.pop(mid) for mid in mids if mid in self._inflight]
            if not rows:
                return 0
            db = self._conn()
            try:
                db.execute("BEGIN")
                db.executemany("DELETE FROM messages WHERE id=?", [(row_id,) for row_id in rows])
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback(db)
                raise SinkError(f"cannot write to MQTT queue {str(self.path)!r}: {exc}") from None
            self._depth -= len(rows)
            self._acked += len(rows)
            return len(rows)

    def requeue_inflight(self) -> int:
        """Every in-flight message back to waiting (the connection they were sent on is gone)."""
        with self._lock:
            if not self._inflight:
                return 0
            try:
                self._conn().execute("UPDATE messages SET mid=NULL WHERE mid IS NOT NULL")
            except sqlite3.Error as exc:
                raise SinkError(f"cannot write to MQTT queue {str(self.path)!r}: {exc}") from None
            count = len(self._inflight)
            self._inflight.clear()
            return count

    @staticmethod
    def _rollback(db: sqlite3.Connection) -> None:
        if db.in_transaction:
            db.execute("ROLLBACK")

    # -- state ---------------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Messages on disk, waiting and in flight."""
        return self._depth

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def counters(self) -> QueueCounters:
        with self._lock:
            return QueueCounters(self._queued, self._dropped, self._acked, self._depth, len(self._inflight))

    def oldest_age_s(self) -> float | None:
        """Seconds since the oldest stored message was queued; None when empty."""
        with self._lock:
            row = self._conn().execute("SELECT created FROM messages ORDER BY id LIMIT 1").fetchone()
        return None if row is None or row[0] is None else max(0.0, time.time() - float(row[0]))

    def close(self) -> None:
        """Checkpoint and close; unsent messages stay in the file for the next open. Idempotent."""
        with self._lock:
            if self._db is None:
                return
            db, self._db = self._db, None
            try:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:  # the data is in the WAL anyway; the next open replays it
                log.debug("MQTT queue %s: checkpoint on close failed: %s", self.path, exc)
            finally:
                db.close()

    def __repr__(self) -> str:
        c = self.counters() if self._db is not None else None
        return f"DiskQueue({str(self.path)!r}, depth={self._depth}, counters={c})"
