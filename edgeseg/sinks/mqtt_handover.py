"""Handing an MQTT disk queue from one publisher to the next at a reload, losing nothing.

A reload that changes the ``mqtt`` section replaces the publisher (``edgeseg.service.outputs``).
The queue file is locked by its holder (SQLite exclusive mode), so the new publisher cannot open
it while the old one runs; instead the old one hands its open queue over
(``MqttSink.handover``) and:

- on the same file (``queue.path`` unchanged): the new publisher adopts the open queue as it is,
  with the new size, policy and durability settings (``retune_queue``);
- on another file (the default path names the device id, so a new ``device_id`` moves it, as
  does a new ``queue.path``): every message is moved, oldest first, into the new file
  (``move_queued``) and the emptied old file is removed.

Where the detections topic changes (``device_id`` or ``topic_prefix``), the queued detections
are re-addressed to the new topic: they are this device's undelivered results, the old identity
has been announced ``offline``, and a broker ACL per device would refuse the old topic to the
new client (a refused QoS 1 message is acknowledged, and so silently gone).

Moving copies a batch into the destination (one committed ``put`` each) before deleting it from
the source, so a crash in between duplicates a batch rather than losing it (at least once, as
everywhere in the queue). The copies carry the time of the move as their queueing time.
"""

from __future__ import annotations

import logging
import sqlite3
import typing
from pathlib import Path
from typing import Final

from edgeseg.config.mqtt import MqttConfig
from edgeseg.errors import SinkError
from edgeseg.sinks.disk_queue import DiskQueue

log = logging.getLogger(__name__)

MOVE_BATCH: Final = 500
"""Messages read, copied and deleted per step of a move (bounded memory for any backlog)."""


def retune_queue(queue: DiskQueue, config: MqttConfig) -> None:
    """Give a handed-over queue ``config``'s queue settings: size, policy, durability, dead-letter size.

    The file must be the one ``config`` names (``SinkError`` otherwise). A smaller
    ``max_messages`` applies from the next message queued (the policy then makes room).
    """
    if queue.path != config.queue_path():
        raise SinkError(f"mqtt: queue {str(queue.path)!r} handed over, but mqtt.queue names "
                        f"{str(config.queue_path())!r}")
    settings = config.queue
    queue.max_messages = settings.max_messages
    queue.policy = settings.policy
    queue.dead_letters.max_bytes = settings.dead_letter_max_bytes
    if queue._synchronous != settings.synchronous:  # noqa: SLF001 - DiskQueue has no setter for it yet
        with queue._lock:  # noqa: SLF001
            try:
                queue._conn().execute(f"PRAGMA synchronous={settings.synchronous.upper()}")  # noqa: SLF001
            except (sqlite3.Error, SinkError) as exc:  # the previous durability stays
                log.warning("mqtt: queue %s keeps synchronous=%s (%s)", queue.path, queue._synchronous, exc)  # noqa: SLF001
                return
            queue._synchronous = settings.synchronous  # noqa: SLF001


def move_queued(source: DiskQueue, target: DiskQueue, topics: typing.Mapping[str, str]) -> int:
    """Move every message of ``source`` to the end of ``target``, oldest first; how many moved.

    ``topics`` re-addresses messages (old topic -> new topic); others keep theirs. ``target`` may
    be ``source`` (re-addressing in place: each message goes to the end and the original is
    deleted). Nothing may be in flight from ``source`` (its publisher is stopped). The target's
    full-queue policy applies as for any message (counted as dropped). Raises ``SinkError`` when
    a queue cannot be read or written; what was not moved then stays in ``source``.
    """
    source.requeue_inflight()
    remaining = source.depth
    same = source is target
    saved_max = source.max_messages
    if same:  # room for one batch of copies beside their originals: no message is dropped for it
        source.max_messages = saved_max + MOVE_BATCH
    moved = 0
    try:
        while remaining > 0:
            batch = source.peek(min(MOVE_BATCH, remaining))
            if not batch:
                break
            for message in batch:
                target.put(readdress(message.topic, topics), message.payload, qos=message.qos,
                           retain=message.retain, priority=message.priority)
            # The queue deletes a row only on its acknowledgement: mark the originals in flight
            # under message ids paho never uses (negative), then acknowledge them.
            marks = [(message.id, -(moved + i + 1)) for i, message in enumerate(batch)]
            source.mark_inflight(marks)
            source.ack([mid for _, mid in marks])
            moved += len(batch)
            remaining -= len(batch)
    finally:
        if same:
            source.max_messages = saved_max
    return moved


def readdress(topic: str, topics: typing.Mapping[str, str]) -> str:
    """``topic`` under its new address: ``topics[topic]``, else, for a pair of the same leaf
    (``<old root>/detections`` -> ``<new root>/detections``), any topic under the old root moved
    under the new one (events, snapshots and zone counts follow the detections); else unchanged."""
    if topic in topics:
        return topics[topic]
    for old, new in topics.items():
        old_root, _, old_leaf = old.rpartition("/")
        new_root, _, new_leaf = new.rpartition("/")
        if old_leaf == new_leaf and old_root and topic.startswith(old_root + "/"):
            return new_root + topic[len(old_root):]
    return topic


def remove_queue_file(path: Path) -> None:
    """Delete an emptied, closed queue file and its SQLite side files (missing ones are fine)."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            Path(f"{path}{suffix}").unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("mqtt: cannot remove the emptied queue file %s (%s)", f"{path}{suffix}", exc.strerror)


__all__ = ["MOVE_BATCH", "move_queued", "readdress", "remove_queue_file", "retune_queue"]
