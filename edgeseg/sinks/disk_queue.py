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

A file a dying SD card has scribbled on (random bytes in the header or in pages, found by
``PRAGMA quick_check`` at open or by a failing read later) never stops the daemon: the file (and
its WAL) is renamed to ``<name>.corrupt-<time>`` and kept for inspection (the newest
``QUARANTINE_KEEP``), every record that can still be read is copied into a new queue in the
old order, and one line says so. A file of another queue format is set aside the same way.

Each row carries how it is to be published (``qos``: None for the publisher's configured QoS;
``retain``) and a ``priority``: when the queue is full, the policy takes its victims from the
lowest priority present, so detections (priority 0) go before snapshots, and those before events
and retained state (see ``edgeseg.sinks.mqtt``). A message is never dropped for one of lower
priority: a full queue of events refuses a detection rather than drop an event. A retained
message put with ``collapse`` replaces the waiting (not in-flight) retained messages of its
topic: only the latest state of a topic is worth sending after an outage.

Format 1 files (topic and payload only, before events existed) are upgraded in place at open:
their rows are detections (configured QoS, not retained, priority 0).

Messages the broker will not take (too large for it; a "poison" message it disconnects on) are
set aside by ``dead_letter``: appended to ``<name>.dead-letter.jsonl`` next to the queue, one
JSON object per message with the reason, rotated to ``.1`` at ``dead_letter_max_bytes``.

The file is opened in exclusive locking mode: a second process (a second daemon with the same
queue) is refused instead of sending everything twice. The kernel drops the lock when the holder
dies, so a restarted daemon opens the file at once. One connection, one lock: every method is
safe to call from any thread.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final, List, Literal, Optional, Tuple

from edgeseg.errors import SinkError
from edgeseg.resources import Closeable

log = logging.getLogger(__name__)

DropPolicy = Literal["drop_oldest", "drop_newest"]
Synchronous = Literal["normal", "full"]

SCHEMA_VERSION: Final = 2
"""``PRAGMA user_version`` of the queue file this code reads and writes (format 1 is upgraded)."""
UPGRADABLE_VERSIONS: Final = (1,)
"""Older formats upgraded in place at open (format 1: no qos, retain or priority columns)."""
JOURNAL_SIZE_LIMIT: Final = 16 * 1024 * 1024
"""After a checkpoint the WAL file is truncated back to this many bytes."""

QUARANTINE_KEEP: Final = 3
"""Quarantined (corrupt) queue files kept next to the queue; older ones are deleted."""
DEFAULT_DEAD_LETTER_BYTES: Final = 16 * 1024 * 1024
SALVAGE_LINEAR_PROBES: Final = 64
"""After an unreadable record, the next this many ids are tried one by one, then in doubling steps."""
SALVAGE_MAX_ID: Final = 1 << 62
_CORRUPT_WORDS: Final = ("malformed", "not a database", "corrupt", "queue format", "integrity check")
"""SQLite's words for SQLITE_CORRUPT / SQLITE_NOTADB (Python 3.8 has no error codes), and ours."""

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS messages (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,  -- queue order; never reused
    topic    TEXT    NOT NULL,
    payload  BLOB    NOT NULL,
    created  REAL    NOT NULL,                   -- time.time() when queued
    mid      INTEGER,                            -- NULL: waiting; else the MQTT message id in flight
    qos      INTEGER,                            -- NULL: the publisher's configured QoS
    retain   INTEGER NOT NULL DEFAULT 0,
    priority INTEGER NOT NULL DEFAULT 0          -- a full queue drops the lowest priority first
)
"""
_UPGRADE_FROM_1: Final = (
    "ALTER TABLE messages ADD COLUMN qos INTEGER",
    "ALTER TABLE messages ADD COLUMN retain INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE messages ADD COLUMN priority INTEGER NOT NULL DEFAULT 0",
)
_INDEXES: Final = (
    # The full-queue policy's victims: lowest priority, then oldest (or newest).
    "CREATE INDEX IF NOT EXISTS messages_by_priority ON messages (priority, id)",
    # ``collapse``: the waiting retained messages of one topic.
    "CREATE INDEX IF NOT EXISTS retained_by_topic ON messages (topic) WHERE retain = 1",
)


@dataclass(frozen=True)
class QueuedMessage:
    """One stored message: its row id (queue order), topic, payload and how to publish it.

    ``qos`` None means the publisher's configured QoS (detections); ``priority``: see the module
    docstring.
    """

    id: int
    topic: str
    payload: bytes
    qos: Optional[int] = None
    retain: bool = False
    priority: int = 0


@dataclass(frozen=True)
class Outgoing:
    """A message to store (``DiskQueue.put_many``).

    Attributes:
        topic, payload: what to publish.
        qos: None for the publisher's configured QoS, else 0..2.
        retain: publish with the retain flag.
        priority: the full-queue policy drops lower priorities first (see the module docstring).
        collapse: (retained messages) delete the waiting retained messages of the same topic first.
    """

    topic: str
    payload: bytes
    qos: Optional[int] = None
    retain: bool = False
    priority: int = 0
    collapse: bool = False


@dataclass(frozen=True)
class QueueCounters:
    """What the queue has done since it was opened, and what it holds now.

    Attributes:
        queued: messages stored by ``put``.
        dropped: messages discarded by the full-queue policy (the oldest, or the new one).
        acked: messages deleted on acknowledgement.
        depth: messages on disk now, waiting and in flight.
        inflight: messages marked in flight now.
        dead_lettered: messages set aside in the dead-letter file since open.
        quarantined: unusable queue files set aside since open (at open or while running).
        salvaged: records copied out of those files into the new queue.
    """

    queued: int
    dropped: int
    acked: int
    depth: int
    inflight: int
    dead_lettered: int = 0
    quarantined: int = 0
    salvaged: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def is_corrupt(exc: BaseException) -> bool:
    """True for SQLite's "this file is damaged / not a queue" errors, not for locks, I/O or full disks."""
    return isinstance(exc, sqlite3.DatabaseError) and any(w in str(exc).lower() for w in _CORRUPT_WORDS)


class DeadLetters:
    """The dead-letter file: messages set aside, one JSON object per line, for people and ``jq``.

    Each line: ``set_aside`` (unix time), ``reason``, ``topic``, ``queued`` (unix time or null),
    ``bytes``, and ``payload`` (the text, when it is UTF-8) or ``payload_base64``. Bounded: at
    ``max_bytes`` the file becomes ``<file>.1`` (replacing the previous one). Every line is
    fsynced: setting a message aside deletes it from the queue, so its copy must be on disk first.
    """

    def __init__(self, path: Path, max_bytes: int = DEFAULT_DEAD_LETTER_BYTES):
        self.path = path
        self.max_bytes = max_bytes
        self.count = 0

    def add(self, topic: str, payload: bytes, reason: str, queued: Optional[float] = None) -> None:
        """Append one message; raises ``OSError`` when the file cannot be written."""
        entry = {"set_aside": round(time.time(), 3), "reason": reason, "topic": topic,
                 "queued": queued, "bytes": len(payload)}
        try:
            entry["payload"] = payload.decode("utf-8")
        except UnicodeDecodeError:
            entry["payload_base64"] = base64.b64encode(payload).decode("ascii")
        line = (json.dumps(entry, separators=(",", ":")) + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size and size + len(line) > self.max_bytes:
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        with open(self.path, "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.count += 1

    def read(self) -> List[dict]:
        """The entries of the current file (not the rotated one), oldest first."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]


_Row = Tuple[int, str, bytes, Optional[float], Optional[int], int, int]
"""A salvaged record: id, topic, payload, created, qos, retain, priority."""


def _valid_row(row: Tuple[object, ...]) -> Optional[_Row]:
    """A salvaged record with the types the schema promises, or None (a scrambled record).

    Scrambled publishing fields fall back to a detection's (configured QoS, not retained, priority 0).
    """
    row_id, topic, payload, created, qos, retain, priority = row
    if not isinstance(row_id, int) or not isinstance(topic, str) or not topic or not isinstance(payload, bytes):
        return None
    return (row_id, topic, payload, float(created) if isinstance(created, (int, float)) else None,
            qos if isinstance(qos, int) and 0 <= qos <= 2 else None,
            1 if retain == 1 else 0,
            priority if isinstance(priority, int) else 0)


_SQLITE_MAGIC: Final = b"SQLite format 3\x00"


def salvage(path: Path) -> Tuple[List[_Row], int]:
    """The readable records of a damaged queue file, in id order, and how many reads failed.

    A damaged page makes the table scan fail where it lies; the scan then resumes at the next
    id whose page can be read (found by seeking past the failure, one id at a time, then in
    doubling steps), so one bad page costs the records on it, not the rest of the file. A
    truncated file (SQLite refuses every read when the header's page count is past the end) is
    read from a copy cut to whole pages with the page count corrected.
    """
    rows, failures = _salvage(path)
    if rows or not failures:
        return rows, failures
    copy = path.with_name(f"{path.name}.salvage-tmp")
    try:
        data = bytearray(path.read_bytes())
        if not data.startswith(_SQLITE_MAGIC) or len(data) < 100:
            return rows, failures
        page_size = int.from_bytes(data[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        if page_size < 512 or page_size & (page_size - 1):
            return rows, failures
        pages = len(data) // page_size
        del data[pages * page_size:]
        data[28:32] = pages.to_bytes(4, "big")
        copy.write_bytes(bytes(data))
        return _salvage(copy)
    except OSError:
        return rows, failures
    finally:
        for suffix in ("", "-wal", "-shm", "-journal"):
            try:
                Path(f"{copy}{suffix}").unlink()
            except OSError:
                pass


def _salvage(path: Path) -> Tuple[List[_Row], int]:
    rows: List[_Row] = []
    failures = 0
    try:
        db = sqlite3.connect(str(path), isolation_level=None, timeout=0.0)
    except sqlite3.Error:
        return rows, 1
    columns = _salvage_columns(db)
    select = f"SELECT {columns} FROM messages WHERE id > ? ORDER BY id"
    try:
        last = 0
        while True:
            try:
                for raw in db.execute(select, (last,)):
                    last = raw[0] if isinstance(raw[0], int) and raw[0] > last else last + 1
                    good = _valid_row(raw)
                    if good is None:
                        failures += 1
                    else:
                        rows.append(good)
                break  # the scan reached the end
            except sqlite3.Error:
                failures += 1
                found = _next_readable(db, last, columns)
                if found is None:
                    break
                row, last = found
                if row is not None:
                    rows.append(row)
    finally:
        db.close()
    return rows, failures


def _salvage_columns(db: sqlite3.Connection) -> str:
    """The select list of a salvage: format 2's columns, or format 1's with a detection's defaults."""
    try:
        names = {str(r[1]) for r in db.execute("PRAGMA table_info(messages)").fetchall()}
    except sqlite3.Error:
        names = set()
    if {"qos", "retain", "priority"} <= names:
        return "id, topic, payload, created, qos, retain, priority"
    return "id, topic, payload, created, NULL, 0, 0"


def _next_readable(db: sqlite3.Connection, after: int, columns: str) -> Optional[Tuple[Optional[_Row], int]]:
    """The first record readable by a direct seek past ``after``, and the id to resume after.

    None when no seek succeeds (the table's root is gone) or the end of the table is reached.
    """
    step, probe = 1, after + 1
    for attempt in range(SALVAGE_LINEAR_PROBES + 64):
        if probe > SALVAGE_MAX_ID:
            return None
        try:
            raw = db.execute(
                f"SELECT {columns} FROM messages WHERE id >= ? ORDER BY id LIMIT 1", (probe,)
            ).fetchone()
        except sqlite3.Error:
            if attempt >= SALVAGE_LINEAR_PROBES:
                step *= 2
            probe += step
            continue
        if raw is None:
            return None
        row_id = raw[0] if isinstance(raw[0], int) else probe
        return _valid_row(raw), max(row_id, probe)
    return None


class DiskQueue(Closeable):
    """Store-and-forward queue in one SQLite file.

    Args:
        path: the database file (its directory is created).
        max_messages: most rows kept; a ``put`` into a full queue applies ``policy``.
        policy: ``drop_oldest`` deletes the oldest row (in flight or not) to make room;
            ``drop_newest`` refuses the new message. Either is counted in ``dropped``.
        synchronous: ``normal`` or ``full``; see the module docstring.
        dead_letter_path: the dead-letter file; default ``<path>.dead-letter.jsonl``.
        dead_letter_max_bytes: its size at which it is rotated.

    Attributes:
        requeued_at_open: messages found in flight when the file was opened (sent by a process
            that stopped or died before their acknowledgement); they go out again first.
        quarantined_files: damaged queue files set aside since open, newest last.

    Raises:
        SinkError: the file cannot be created or opened (permissions, I/O) or is held by another
            process. A damaged file is not an error: it is quarantined and a new queue started.
    """

    def __init__(
        self,
        path: str | Path,
        max_messages: int = 100_000,
        policy: DropPolicy = "drop_oldest",
        synchronous: Synchronous = "normal",
        dead_letter_path: str | Path | None = None,
        dead_letter_max_bytes: int = DEFAULT_DEAD_LETTER_BYTES,
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
        self._synchronous: Synchronous = synchronous
        dead = Path(dead_letter_path) if dead_letter_path is not None else self.path.with_name(
            f"{self.path.name}.dead-letter.jsonl")
        self.dead_letters = DeadLetters(dead, dead_letter_max_bytes)
        self._lock = threading.RLock()
        self._inflight: dict[int, int] = {}  # MQTT mid -> row id
        self._queued = self._dropped = self._acked = self._salvaged = 0
        #: Waiting retained messages replaced by a newer one of their topic (``collapse``) since open.
        self.superseded = 0
        self.quarantined_files: List[Path] = []
        self._db: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SinkError(f"cannot open MQTT queue {str(self.path)!r}: {exc}") from None
        try:
            self._depth, self.requeued_at_open = self._open()
        except sqlite3.DatabaseError as exc:  # damaged or foreign: set aside, keep what reads, go on
            self._recover(exc)
            self.requeued_at_open = 0
        if self._depth:
            log.info("MQTT queue %s: %d unsent messages from before (%d were in flight)",
                     self.path, self._depth, self.requeued_at_open)

    def _open(self) -> tuple[int, int]:
        """Connect and set up; ``sqlite3.DatabaseError`` (only) when the file is damaged or foreign."""
        try:
            self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=0.0)
        except (OSError, sqlite3.Error) as exc:
            raise SinkError(f"cannot open MQTT queue {str(self.path)!r}: {exc}") from None
        try:
            return self._setup(self._synchronous)
        except sqlite3.Error as exc:
            self._close_quietly()
            if is_corrupt(exc):
                raise
            if "locked" in str(exc):
                raise SinkError(
                    f"MQTT queue {str(self.path)!r} is in use by another process (one queue file per daemon)"
                ) from None
            raise SinkError(f"cannot open MQTT queue {str(self.path)!r}: {exc}") from None

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
            # Reads every page once (b-trees, overflow chains, free list): a scribbled page is found
            # now, not in the middle of serving. About a second per 100 MB of queue on an SD card.
            check = [str(r[0]) for r in db.execute("PRAGMA quick_check(3)").fetchall()]
            if check != ["ok"]:
                raise sqlite3.DatabaseError(f"integrity check: {'; '.join(check)}")
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            tables = db.execute("SELECT count(*) FROM sqlite_master WHERE name='messages'").fetchone()[0]
            if tables and version in UPGRADABLE_VERSIONS:
                for statement in _UPGRADE_FROM_1:  # in this transaction: all or nothing
                    db.execute(statement)
                log.info("MQTT queue %s: upgraded from format %d to %d", self.path, version, SCHEMA_VERSION)
            elif tables and version != SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"queue format {version}, this edgeseg reads {SCHEMA_VERSION}")
            db.execute(_SCHEMA)
            for statement in _INDEXES:
                db.execute(statement)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            # Nothing is in flight in a fresh process: what was, goes out again first.
            requeued = db.execute("UPDATE messages SET mid=NULL WHERE mid IS NOT NULL").rowcount
            depth = int(db.execute("SELECT count(*) FROM messages").fetchone()[0])
            db.execute("COMMIT")
        except BaseException:
            self._rollback(db)
            raise
        return depth, requeued

    def _recover(self, exc: BaseException) -> None:
        """Quarantine the damaged file, start a new queue with every record still readable, say so once.

        Raises ``SinkError`` only when the new file cannot be made (permissions, a full disk).
        """
        self._close_quietly()
        self._inflight.clear()
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        try:
            for suffix in ("", "-wal", "-shm", "-journal"):
                side = Path(f"{self.path}{suffix}")
                if side.exists():
                    os.replace(side, Path(f"{target}{suffix}"))
        except OSError as err:
            raise SinkError(f"MQTT queue {str(self.path)!r} is damaged ({exc}) and cannot be moved aside: "
                            f"{err}") from None
        rows, failures = salvage(target)
        self._depth, _ = self._open()  # a damaged new file is beyond saving: let it raise
        db = self._conn()
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO messages (id, topic, payload, created, qos, retain, priority) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [(i, t, p, c if c is not None else time.time(), q, r, pr)
                            for i, t, p, c, q, r, pr in rows])
            db.execute("COMMIT")
        except sqlite3.Error as err:
            self._rollback(db)
            raise SinkError(f"cannot write to MQTT queue {str(self.path)!r}: {err}") from None
        self._depth += len(rows)
        self._salvaged += len(rows)
        self.quarantined_files.append(target)
        log.error("MQTT queue %s is damaged (%s): moved to %s for inspection; %d readable messages kept in a "
                  "new queue%s", self.path, exc, target.name, len(rows),
                  f", {failures} unreadable places skipped" if failures else "")
        self._prune_quarantine()

    def _prune_quarantine(self) -> None:
        """Keep the newest ``QUARANTINE_KEEP`` quarantined files: a failing card must not fill itself."""
        olds = sorted(self.path.parent.glob(f"{self.path.name}.corrupt-*"))  # the names sort by time
        mains = [p for p in olds if not p.name.endswith(("-wal", "-shm", "-journal"))]
        for old in mains[:-QUARANTINE_KEEP]:
            for suffix in ("", "-wal", "-shm", "-journal"):
                try:
                    Path(f"{old}{suffix}").unlink()
                except OSError:
                    pass

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise SinkError(f"MQTT queue {str(self.path)!r} is closed")
        return self._db

    def _close_quietly(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None

    # -- the producer side ---------------------------------------------------------------------

    def put(self, topic: str, payload: bytes, qos: Optional[int] = None, retain: bool = False,
            priority: int = 0, collapse: bool = False) -> bool:
        """Store one message durably (see the module docstring); False if the full-queue policy
        refused it (``drop_newest``, or nothing of its priority or lower to drop).

        Raises ``SinkError`` when the write fails (disk full, file gone, queue closed). A file
        found damaged here is quarantined and the message goes into the new queue.
        """
        return self.put_many([Outgoing(topic, payload, qos, retain, priority, collapse)]) == 1

    def put_many(self, messages: Sequence[Outgoing]) -> int:
        """Store several messages in one committed transaction, in order; how many were stored.

        One commit for the messages of one frame (its detections, events and counts) rather than
        one each. Errors as ``put``.
        """
        if not messages:
            return 0
        with self._lock:
            try:
                return self._put_many(messages)
            except sqlite3.Error as exc:
                self._recover_or_raise(exc, "write to")
            try:
                return self._put_many(messages)
            except sqlite3.Error as exc:
                raise SinkError(f"cannot write to MQTT queue {str(self.path)!r}: {exc}") from None

    def _put_many(self, messages: Sequence[Outgoing]) -> int:
        db = self._conn()
        depth, dropped, superseded = self._depth, self._dropped, self.superseded
        inflight = dict(self._inflight)
        stored = 0
        db.execute("BEGIN IMMEDIATE")
        try:
            for m in messages:
                if m.collapse and m.retain:
                    gone = db.execute("DELETE FROM messages WHERE topic=? AND retain=1 AND mid IS NULL",
                                      (m.topic,)).rowcount
                    self._depth -= gone
                    self.superseded += gone
                if self._depth >= self.max_messages and not self._make_room(db, m.priority):
                    self._dropped += 1
                    continue
                db.execute(
                    "INSERT INTO messages (topic, payload, created, qos, retain, priority) VALUES (?, ?, ?, ?, ?, ?)",
                    (m.topic, m.payload, time.time(), m.qos, 1 if m.retain else 0, m.priority),
                )
                self._depth += 1
                stored += 1
            db.execute("COMMIT")
        except BaseException:
            self._rollback(db)
            self._depth, self._dropped, self.superseded = depth, dropped, superseded
            self._inflight = inflight
            raise
        self._queued += stored
        return stored

    def _make_room(self, db: sqlite3.Connection, priority: int) -> bool:
        """Drop what the policy says to bring the queue under ``max_messages`` for a message of
        ``priority``; False when the new message is the one to go.

        Victims are taken from the lowest priority present below ``priority`` first (oldest first
        for ``drop_oldest``, newest first for ``drop_newest``); then, for ``drop_oldest`` only,
        the oldest of the same priority. Never a message of higher priority.
        """
        need = self._depth - self.max_messages + 1
        order = "ASC" if self.policy == "drop_oldest" else "DESC"
        rows = db.execute(f"SELECT id, mid FROM messages WHERE priority < ? ORDER BY priority ASC, id {order} LIMIT ?",
                          (priority, need)).fetchall()
        if len(rows) < need and self.policy == "drop_oldest":
            rows += db.execute("SELECT id, mid FROM messages WHERE priority = ? ORDER BY id ASC LIMIT ?",
                               (priority, need - len(rows))).fetchall()
        self._delete_dropped(db, rows)
        return self._depth < self.max_messages

    def _recover_or_raise(self, exc: sqlite3.Error, action: str) -> None:
        """A damaged file is quarantined (the caller then retries once); other errors become SinkError."""
        if not is_corrupt(exc):
            raise SinkError(f"cannot {action} MQTT queue {str(self.path)!r}: {exc}") from None
        self._recover(exc)

    def _delete_dropped(self, db: sqlite3.Connection, rows: List[Tuple[int, Optional[int]]]) -> None:
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
        query = ("SELECT id, topic, payload, qos, retain, priority FROM messages WHERE mid IS NULL "
                 "ORDER BY id LIMIT ?")
        with self._lock:
            try:
                rows = self._conn().execute(query, (limit,)).fetchall()
            except sqlite3.Error as exc:
                self._recover_or_raise(exc, "read")
                try:
                    rows = self._conn().execute(query, (limit,)).fetchall()
                except sqlite3.Error as exc:
                    raise SinkError(f"cannot read MQTT queue {str(self.path)!r}: {exc}") from None
        return [QueuedMessage(int(i), str(t), bytes(p), None if q is None else int(q), bool(r), int(pr))
                for i, t, p, q, r, pr in rows]

    def dead_letter(self, row_ids: Iterable[int], reason: str) -> int:
        """Move these messages (waiting or in flight) to the dead-letter file; how many were moved.

        The copy is fsynced before the rows are deleted, so a crash in between means the message
        is in both places (then sent again or set aside again), never in neither. Should the
        dead-letter file not be writable, the rows are deleted all the same (logged): a message
        that cannot be delivered must not block every message behind it.
        """
        ids = list(row_ids)
        if not ids:
            return 0
        with self._lock:
            db = self._conn()
            marks = ",".join("?" * len(ids))
            try:
                rows = db.execute(f"SELECT id, topic, payload, created FROM messages WHERE id IN ({marks}) ORDER BY id",
                                  ids).fetchall()
            except sqlite3.Error as exc:
                raise SinkError(f"cannot read MQTT queue {str(self.path)!r}: {exc}") from None
            for row_id, topic, payload, created in rows:
                try:
                    self.dead_letters.add(str(topic), bytes(payload), reason, created)
                except OSError as exc:
                    log.error("MQTT queue %s: cannot write the dead-letter file %s (%s); message %d (%s) "
                              "discarded", self.path, self.dead_letters.path, exc, row_id, reason)
            try:
                db.execute("BEGIN")
                db.executemany("DELETE FROM messages WHERE id=?", [(r[0],) for r in rows])
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback(db)
                raise SinkError(f"cannot write to MQTT queue {str(self.path)!r}: {exc}") from None
            gone = {r[0] for r in rows}
            for mid in [m for m, r in self._inflight.items() if r in gone]:
                del self._inflight[mid]
            self._depth -= len(rows)
            return len(rows)

    def inflight_rows(self) -> List[int]:
        """Row ids of the messages in flight now, oldest first."""
        with self._lock:
            return sorted(self._inflight.values())

    def oldest_id(self) -> Optional[int]:
        """Row id of the oldest stored message; None when empty."""
        with self._lock:
            try:
                row = self._conn().execute("SELECT min(id) FROM messages").fetchone()
            except sqlite3.Error as exc:
                raise SinkError(f"cannot read MQTT queue {str(self.path)!r}: {exc}") from None
        return None if row is None or row[0] is None else int(row[0])

    def mark_inflight(self, sent: Iterable[tuple[int, int]]) -> None:
        """Record ``(row id, mid)`` pairs handed to the client, in one transaction."""
        pairs = list(sent)
        if not pairs:
            return
        with self._lock:
            db = self._conn()
            marked = []
            try:
                db.execute("BEGIN")
                for row_id, mid in pairs:
                    # A row dropped or superseded since it was peeked is gone: its PUBACK then deletes nothing.
                    if db.execute("UPDATE messages SET mid=? WHERE id=?", (mid, row_id)).rowcount:
                        marked.append((row_id, mid))
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback(db)
                raise SinkError(f"cannot write to MQTT queue {str(self.path)!r}: {exc}") from None
            for row_id, mid in marked:
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
        try:
            if db.in_transaction:
                db.execute("ROLLBACK")
        except sqlite3.Error:  # a damaged file may refuse even this; the transaction dies with the connection
            pass

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
            return QueueCounters(self._queued, self._dropped, self._acked, self._depth, len(self._inflight),
                                 self.dead_letters.count, len(self.quarantined_files), self._salvaged)

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
