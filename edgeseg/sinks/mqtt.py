"""``mqtt:URI``: frame results and events to an MQTT broker, stored on disk until the broker acknowledges them.

    write(result) ─► JSON (frame result, events, counts) ─► DiskQueue.put_many (pipeline thread)
                                                                  │
    feeder thread: oldest waiting rows ─► paho publish (QoS 1) ─► mark in flight (row, mid)
                   ◄── events: PUBACK(mid) ─► delete row · connected / lost ─► requeue in flight
                                                                  │
    paho network thread (loop_start): connect, TLS, keep-alive, reconnect with backoff

Topics, with ``P = <topic_prefix>/<device_id>``: ``P/detections`` (frame results), ``P/available``
(``online`` on every connect, ``offline`` on close and as Last Will, both retained) and
``P/stats`` (``publish_stats``: QoS 0, not retained, not queued: a snapshot that the next one
supersedes; queueing it would spend queue room meant for detections and replay stale numbers).

With tracking on (``result.analytics``), through the same queue:

- ``P/events``: each event message (``Event.document``, schema ``edgeseg/schemas/event.v1.json``)
  as JSON, QoS ``max(1, qos)``, not retained. Consumers de-duplicate a re-sent one by
  (``event_id``, ``type``, ``time``).
- ``P/events/<event_id>/snapshot``: the event's JPEG when it carries one and ``publish_snapshots``
  is on (QoS ``max(1, qos)``, not retained); a JPEG larger than the payload room is skipped and
  counted (``snapshots_skipped``), never degraded.
- ``P/zones/<zone>/<class>``: the number of tracked objects of that class in the zone, as a
  decimal string, retained, QoS ``max(1, qos)``: every count once with the first result that
  has analytics (zeros included: a new or reloaded publisher states them all again), then only
  when it changes. A newer count replaces a still waiting older one of the same topic in the
  queue (``superseded``): after an outage the broker gets the latest count, not the history.
- Home Assistant discovery configs (``mqtt.homeassistant``, ``edgeseg.sinks.homeassistant``),
  retained, straight to the broker on every connect and on Home Assistant's ``online``.

Several cameras (``camera_topics``; ``mqtt.camera_topics``, resolved by
``Config.uses_camera_topics``): everything a camera produces moves one level down, by
``result.camera`` (an event: by its document's ``camera``): ``P/<camera>/detections``,
``P/<camera>/events``, ``P/<camera>/events/<event_id>/snapshot``, ``P/<camera>/zones/<zone>/<class>``,
each as above, and

- ``P/<camera>/status``: ``online``/``offline`` (``write_status``, called as the camera's stream
  comes up and drops), retained, QoS ``max(1, qos)``, through the queue like the counts: nothing
  is lost in an outage and a newer status replaces a still waiting older one of the camera
  (``superseded``), so after an outage with a flapping camera the broker gets its latest status.
  Its priority is the events' (a full queue drops detections first). The Last Will covers
  ``P/available`` only: a dead daemon leaves each camera's last status standing, which is why
  Home Assistant's camera entities also depend on ``P/available``. On a clean ``close`` every
  camera last announced ``online`` is sent ``offline`` (queued, then drained like the rest).

``P/available`` and ``P/stats`` stay the device's. A result with no camera (``camera`` "": the
self-test) goes to the device's topics. Without camera topics every topic is as above and
``write_status`` does nothing: the device's ``P/available`` is the one camera's availability.

``detections: false`` leaves ``P/detections`` out (events and counts only). Full-queue policy
with priorities (``DiskQueue``): detections (0) go first, then snapshots (1), and events and
counts (2) only when nothing of lower priority is left; a full queue of events refuses a new
detection rather than drop an event.

Guarantees: ``write`` returns once the message is committed to the queue (see
``edgeseg.sinks.disk_queue`` for what survives what); it never waits on the network. A message
leaves the queue only on its PUBACK, so a broker outage or a killed daemon loses nothing; after
a reconnect or a restart whatever was not acknowledged is sent again, oldest first (at least
once: consumers de-duplicate by ``frame_id``). At most ``max_inflight`` messages are handed to
paho at a time, so a long backlog stays on disk, not in memory.

Reconnecting is paho's (``reconnect_delay_set`` + ``connect_async`` + ``loop_start``): an
unreachable broker or refused credentials are not exceptions but one log line per change of
state (connected, lost, unreachable, refused); ``write`` goes on queueing meanwhile. On every
connect paho's own copies of unacknowledged messages are dropped (``drop_out_messages``) and
the queue re-sends them, so there is one source of truth and the order on the wire is the
queue's order.

Size: the broker's limit is on the whole PUBLISH packet (fixed header + topic + packet id +
properties + payload), so sizes here are packet sizes (``publish_packet_size``). The limit is
the broker's MQTT 5 CONNACK Maximum Packet Size where it gives one (``protocol: "5"``, the
default) and ``max_payload_bytes`` for the payload. At ``write`` a payload over the limit has
its masks degraded, rle -> polygon -> none (the first that fits; counted in ``degraded``); if
even a mask-less payload is too large the frame is set aside in the dead-letter file (counted
in ``refused``; nothing is raised: the frame is kept, and the pipeline goes on). A message
queued before the limit was known is degraded or set aside when its turn comes
(``oversize``). Nothing larger than the broker's limit is ever sent: a broker disconnects a
client that sends one, and the same message would be first again after every reconnect.

Poison messages: a broker that does not announce its limit (MQTT 3.1.1) just disconnects. When a
connection drops with messages in flight that were sent moments before, the feeder sends one
message at a time until those messages are through; a message that is alone in flight at
``poison_disconnects`` disconnects in a row (counting the first) is set aside (``poisoned``), so
the queue always moves. Each cause is logged once; the dead-letter file
(``<queue>.dead-letter.jsonl``) keeps every message set aside, with its reason.

Reload: ``MqttSink(config, start=False)`` checks and builds everything but opens no queue and no
connection, so a replacement is prepared while the running sink still holds the queue file.
The running one then stops sending (``hold``: what is in flight is acknowledged first, not sent
twice) and hands its open queue over (``handover``), and the new one starts on it
(``start(queue=...)``); ``edgeseg.sinks.mqtt_handover`` moves the messages when the file
changes. The owner of all this is ``edgeseg.service.outputs``.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import queue
import ssl
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Final, List, NamedTuple, Optional, Sequence, Set, Tuple

import numpy as np
from pydantic import ValidationError

from edgeseg.config.errors import pydantic_message
from edgeseg.config.mqtt import MQTT_MAX_PAYLOAD, PROTOCOLS, BrokerAddress, MqttConfig
from edgeseg.errors import SinkError
from edgeseg.sinks.base import MaskFormat, Sink, SinkOptions
from edgeseg.sinks.disk_queue import DiskQueue, Outgoing, QueuedMessage
from edgeseg.sinks.homeassistant import (
    DISCOVERY_QOS,
    DiscoveryMessage,
    ZoneClasses,
    camera_topic,
    discovery_messages,
    status_topic,
    topic_level,
    zone_topic,
)
from edgeseg.sinks.mqtt_handover import retune_queue
from edgeseg.sinks.serialize import frame_result_to_dict
from edgeseg.sources.uri import mask_credentials
from edgeseg.structures import FrameResult

if TYPE_CHECKING:
    from edgeseg.analytics.types import Event

try:
    import paho.mqtt.client as mqtt
except ImportError:  # pragma: no cover - paho-mqtt is a runtime dependency
    raise SinkError("the mqtt sink needs paho-mqtt 2.x: pip install 'paho-mqtt>=2,<3'") from None
if not hasattr(mqtt, "CallbackAPIVersion"):  # pragma: no cover
    raise SinkError("the mqtt sink needs paho-mqtt 2.x, found 1.x: pip install 'paho-mqtt>=2,<3'")

log = logging.getLogger(__name__)

TOPIC_DETECTIONS: Final = "detections"
TOPIC_AVAILABLE: Final = "available"
TOPIC_STATS: Final = "stats"
TOPIC_EVENTS: Final = "events"
SNAPSHOT_LEAF: Final = "snapshot"
MIN_EVENT_QOS: Final = 1
"""Events, snapshots and counts go at least at QoS 1 (the queue's guarantee), whatever ``qos`` says."""
PRIORITY_DETECTIONS: Final = 0
PRIORITY_SNAPSHOTS: Final = 1
PRIORITY_EVENTS: Final = 2
"""Events and retained counts: a full queue drops them only when nothing of lower priority is left."""
PRIORITY_STATUS: Final = PRIORITY_EVENTS
"""A camera's status, like the counts: retained state that must not be lost behind detections."""
ONLINE: Final = b"online"
OFFLINE: Final = b"offline"
AVAILABILITY_QOS: Final = 1
STATS_QOS: Final = 0
JSON_SEPARATORS: Final = (",", ":")
FEEDER_POLL_S: Final = 0.5
"""The feeder tops up at least this often while connected, even without events."""
EVENT_BATCH: Final = 1000
"""Events the feeder handles before it publishes again (acks are deleted in one transaction)."""
STOP_TIMEOUT_S: Final = 5.0
"""Longest wait for the ``offline`` message, the network thread and the feeder on close."""
DRAIN_POLL_S: Final = 0.02
_ACCEPTED: Final = (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN)
"""publish() results for which paho holds a QoS>0 message (NO_CONN: it would send it on reconnect)."""
_BAD_CREDENTIALS: Final = (134, 135)
"""MQTT 5 reason codes (MQTT 3.1.1 return codes 4 and 5 map to them): bad user name or password,
not authorised."""
MQTT_MAX_PACKET: Final = 1 + 4 + MQTT_MAX_PAYLOAD
"""The largest packet MQTT can frame: fixed header byte, 4-byte remaining length, remaining length."""
POISON_WINDOW_S: Final = 10.0
"""A disconnect this long after a message was sent is not blamed on the message (a flaky link
or a broker restart is not a poison message; a broker refusing a packet drops the client at once)."""
_PACKET_TOO_LARGE: Final = 149
"""MQTT 5 reason code 0x95, Packet too large."""
_DEGRADE: Final[dict[str, tuple[MaskFormat, ...]]] = {
    "rle": ("rle", "polygon", "none"),
    "polygon": ("polygon", "none"),
    "none": ("none",),
}


# ---------------------------------------------------------------------------------------- payload


class Payload(NamedTuple):
    """An encoded frame result and the mask format it ended up with."""

    data: bytes
    mask_format: MaskFormat


def encode_frame_result(
    result: FrameResult, mask_format: MaskFormat, max_bytes: int, limit_name: str = "mqtt.max_payload_bytes"
) -> Payload:
    """The frame result as compact JSON of at most ``max_bytes``, masks degraded as needed.

    Raises ``SinkError`` when even the mask-less form is larger than ``max_bytes`` (the message
    names the limit as ``limit_name``).
    """
    size = 0
    for fmt in _DEGRADE[mask_format]:
        data = json.dumps(frame_result_to_dict(result, fmt), separators=JSON_SEPARATORS).encode("utf-8")
        if len(data) <= max_bytes:
            return Payload(data, fmt)
        size = len(data)
    raise SinkError(
        f"mqtt: frame {result.frame.frame_id} is {size} bytes even without masks, over "
        f"{limit_name}={max_bytes}; not sent (fewer instances, or a larger limit)"
    )


def _varint_len(value: int) -> int:
    """Bytes of MQTT's variable-length "remaining length" encoding of ``value``."""
    return 1 if value < 128 else 2 if value < 16_384 else 3 if value < 2_097_152 else 4


def publish_packet_size(topic: str, payload_len: int, qos: int, v5: bool) -> int:
    """Bytes on the wire of a PUBLISH without properties: what a broker's maximum packet size limits.

    Fixed header (1 byte + remaining length), topic (2-byte length + UTF-8), packet id (QoS > 0),
    properties length (MQTT 5: one byte, 0), payload.
    """
    remaining = 2 + len(topic.encode("utf-8")) + (2 if qos > 0 else 0) + (1 if v5 else 0) + payload_len
    return 1 + _varint_len(remaining) + remaining


def strip_masks(payload: bytes) -> bytes | None:
    """A queued frame-result or event payload with every mask left out (``mask: null``, as
    mask_format none); None when the payload is neither (not JSON, or no masks to leave out)."""
    try:
        doc = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    instances = doc.get("instances")
    if isinstance(instances, list):
        for instance in instances:
            if isinstance(instance, dict):
                instance["mask"] = None
    elif not _null_masks(doc):
        return None
    return json.dumps(doc, separators=JSON_SEPARATORS).encode("utf-8")


def _null_masks(value: object) -> bool:
    """Set every ``mask`` entry at any depth of a JSON value to None; True when one was not None."""
    changed = False
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "mask" and item is not None:
                value[key] = None
                changed = True
            else:
                changed = _null_masks(item) or changed
    elif isinstance(value, list):
        for item in value:
            changed = _null_masks(item) or changed
    return changed


def encode_event(document: Mapping[str, Any], max_bytes: int, limit_name: str = "mqtt.max_payload_bytes") -> Payload:
    """An event document as compact JSON of at most ``max_bytes``: as it is, else with its masks
    left out (``mask_format`` of the payload says which). ``SinkError`` when even that is too large,
    or the document is not JSON."""
    try:
        data = json.dumps(document, separators=JSON_SEPARATORS, default=_json_default).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise SinkError(f"mqtt: event is not JSON: {exc}") from None
    if len(data) <= max_bytes:
        return Payload(data, "rle")
    smaller = strip_masks(data)
    if smaller is not None and len(smaller) <= max_bytes:
        return Payload(smaller, "none")
    event_id = document.get("event_id", "?") if isinstance(document, Mapping) else "?"
    raise SinkError(f"mqtt: event {event_id} is {len(smaller or data)} bytes even without masks, over "
                    f"{limit_name}={max_bytes}; not sent")


def _event_text(document: Mapping[str, Any]) -> bytes:
    """An event document for the dead-letter file: its JSON, or its repr when it is not JSON."""
    try:
        return json.dumps(document, separators=JSON_SEPARATORS, default=_json_default).encode("utf-8")
    except (TypeError, ValueError):
        return repr(document).encode("utf-8", "replace")


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):  # a read-only mapping (an event's document may be a MappingProxyType)
        return dict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# -------------------------------------------------------------------------------------- publisher


def drop_out_messages(client: mqtt.Client) -> None:
    """Drop paho's copies of unacknowledged messages (the disk queue is the one source of truth).

    ``Client.drop_out_messages`` exists from paho-mqtt 2.2, which needs Python 3.9; Python 3.8
    (JetPack 5) gets at most 2.1. There the same is done on the same two attributes that 2.2's
    method uses (the runtime tests run against 2.1 under Python 3.8).
    """
    drop = getattr(client, "drop_out_messages", None)
    if callable(drop):
        drop()
        return
    with client._out_message_mutex:  # noqa: SLF001 - paho 2.0/2.1, see above
        client._out_messages.clear()  # noqa: SLF001


class ConnectionState(str, enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    REFUSED = "refused"


class _Kind(enum.Enum):
    ACK = "ack"  # PUBACK (QoS 1), PUBCOMP (QoS 2) or written (QoS 0) for a mid
    UP = "up"  # connected: start sending from the head of the queue
    DOWN = "down"  # connection gone: what was in flight goes back to waiting
    WAKE = "wake"  # a new message was queued
    STOP = "stop"


class _Event(NamedTuple):
    kind: _Kind
    mid: int = 0


_WAKE: Final = _Event(_Kind.WAKE)


class MqttPublisher:
    """One paho client: credentials, TLS, Last Will, availability, and paho's own reconnects.

    Callbacks run in paho's network thread and do no I/O of their own beyond paho calls: they
    report acknowledgements and connection changes through the ``events`` queue, and log each
    change of connection state once.

    Raises:
        SinkError: TLS files that cannot be loaded.
    """

    def __init__(self, config: MqttConfig, password: str | None, events: queue.SimpleQueue[_Event],
                 discovery: Sequence[DiscoveryMessage] = ()):
        self.broker: BrokerAddress = config.broker
        self.client_id = f"edgeseg-{config.device_id}"
        self.available_topic = config.topic(TOPIC_AVAILABLE)
        self._events = events
        #: Retained Home Assistant discovery configs, published on every connect and whenever
        #: Home Assistant announces itself on ``ha_status_topic`` (it restarted).
        self.discovery = tuple(discovery)
        self.ha_status_topic = config.homeassistant.birth_topic() if self.discovery else None
        self.discovery_published = 0
        self._backoff = f"{config.reconnect_min_s}..{config.reconnect_max_s} s"
        self._state = ConnectionState.CONNECTING
        self._state_lock = threading.Lock()
        self._connected = threading.Event()
        self._stopping = False
        self.v5 = PROTOCOLS[config.protocol] == mqtt.MQTTv5
        self.max_packet_size: int | None = None
        """The broker's Maximum Packet Size from its last CONNACK (MQTT 5); None: not announced."""
        if self.v5:  # clean_start is given to connect_async; paho refuses clean_session with MQTT 5
            client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                 client_id=self.client_id, protocol=mqtt.MQTTv5)
        else:
            client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                 client_id=self.client_id, clean_session=True, protocol=mqtt.MQTTv311)
        if config.username is not None:
            client.username_pw_set(config.username, password)
        if self.broker.tls:
            tls = config.tls
            try:
                client.tls_set(
                    ca_certs=None if tls is None else _expand(tls.ca_file),
                    certfile=None if tls is None else _expand(tls.cert_file),
                    keyfile=None if tls is None else _expand(tls.key_file),
                    cert_reqs=ssl.CERT_REQUIRED,
                    tls_version=ssl.PROTOCOL_TLS_CLIENT,
                )
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise SinkError(f"mqtt: cannot load the TLS files of mqtt.tls: {exc}") from None
            client.tls_insecure_set(tls is not None and tls.insecure)
        client.will_set(self.available_topic, OFFLINE, qos=AVAILABILITY_QOS, retain=True)
        client.reconnect_delay_set(config.reconnect_min_s, config.reconnect_max_s)
        # Our window plus the availability message and the discovery configs; the queue never
        # hands paho more.
        client.max_inflight_messages_set(config.max_inflight + 1 + len(self.discovery))
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        if self.ha_status_topic is not None:
            client.message_callback_add(self.ha_status_topic, self._on_ha_status)
        self._client = client
        self._keepalive = config.keepalive_s

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def start(self) -> None:
        """Connect in the background; paho retries with backoff until ``stop``."""
        if self.v5:
            self._client.connect_async(self.broker.host, self.broker.port, keepalive=self._keepalive,
                                       clean_start=True)
        else:
            self._client.connect_async(self.broker.host, self.broker.port, keepalive=self._keepalive)
        self._client.loop_start()

    @property
    def packet_limit(self) -> int:
        """The largest PUBLISH packet the broker takes: its announced limit, else MQTT's own."""
        return self.max_packet_size if self.max_packet_size is not None else MQTT_MAX_PACKET

    def packet_size(self, topic: str, payload_len: int, qos: int) -> int:
        return publish_packet_size(topic, payload_len, qos, self.v5)

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> int | None:
        """Hand one message to paho; its mid, or None when paho did not take it.

        A message over the broker's limit is never handed over: the broker would drop the
        connection (and with it everything in flight) instead of refusing just that message.
        """
        if self.packet_size(topic, len(payload), qos) > self.packet_limit:
            return None
        try:
            info = self._client.publish(topic, payload, qos=qos, retain=retain)
        except ValueError as exc:  # an invalid topic or an oversized payload
            log.error("mqtt: cannot publish to %s: %s", topic, exc)
            return None
        if info.rc == mqtt.MQTT_ERR_SUCCESS or (qos > 0 and info.rc in _ACCEPTED):
            return int(info.mid)
        return None

    def stop(self, timeout: float = STOP_TIMEOUT_S, offline: bool = True) -> None:
        """Publish ``offline`` (retained), disconnect cleanly and end the network thread.

        ``offline=False`` leaves the retained ``online`` standing: for a publisher replaced by
        one with the same availability topic (a reload), which announces ``online`` again as
        it connects. A clean disconnect does not fire the Last Will either.
        """
        self._stopping = True
        if offline and self.connected:
            info = self._client.publish(self.available_topic, OFFLINE, qos=AVAILABILITY_QOS, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError) as exc:
                log.warning("mqtt: could not publish 'offline' before disconnecting: %s", exc)
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()

    # -- paho callbacks (network thread) -------------------------------------------------------

    def _set_state(self, state: ConnectionState, level: int, message: str, *args: object) -> None:
        with self._state_lock:
            changed = state != self._state
            self._state = state
        if changed:
            log.log(level, message, *args)

    def _on_connect(
        self, client: mqtt.Client, _userdata: Any, _flags: mqtt.ConnectFlags, reason: Any, _properties: Any
    ) -> None:
        if reason.is_failure:
            hint = " (check mqtt.username and the password)" if reason.value in _BAD_CREDENTIALS else ""
            self._set_state(
                ConnectionState.REFUSED, logging.ERROR,
                "mqtt: broker %s refused the connection: %s%s; retrying every %s, detections are queued on disk",
                self.broker, reason, hint, self._backoff,
            )
            return
        limit = getattr(_properties, "MaximumPacketSize", None) if _properties is not None else None
        limit = int(limit) if isinstance(limit, int) and limit > 0 else None
        if limit != self.max_packet_size and limit is not None:
            log.info("mqtt: broker %s takes packets of at most %d bytes; larger detections are degraded or "
                     "set aside", self.broker, limit)
        self.max_packet_size = limit
        drop_out_messages(client)  # the disk queue re-sends them, in order
        client.publish(self.available_topic, ONLINE, qos=AVAILABILITY_QOS, retain=True)
        if self.ha_status_topic is not None:
            # The configs themselves are sent by the feeder on this UP (``announce``), not here:
            # publishing them inside paho's CONNACK handling let its resend loop over
            # _out_messages see the dict change size, killing its network thread.
            client.subscribe(self.ha_status_topic, qos=DISCOVERY_QOS)
        self._connected.set()
        self._set_state(ConnectionState.CONNECTED, logging.INFO, "mqtt: connected to %s as %s",
                        self.broker, self.client_id)
        self._events.put(_Event(_Kind.UP))

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        # paho calls this inside its `except OSError:` block: the exception is the reason.
        exc = sys.exc_info()[1]
        reason = f"{type(exc).__name__}: {exc}" if exc is not None else "connection failed"
        self._set_state(
            ConnectionState.DISCONNECTED, logging.WARNING,
            "mqtt: cannot reach broker %s (%s); retrying every %s, detections are queued on disk",
            self.broker, reason, self._backoff,
        )

    def _on_disconnect(
        self, client: mqtt.Client, _userdata: Any, _flags: mqtt.DisconnectFlags, reason: Any, _properties: Any
    ) -> None:
        drop_out_messages(client)
        was_connected = self._connected.is_set()
        self._connected.clear()
        self._events.put(_Event(_Kind.DOWN))
        if self._stopping:
            self._set_state(ConnectionState.DISCONNECTED, logging.INFO, "mqtt: disconnected from %s", self.broker)
        elif was_connected:
            too_large = getattr(reason, "value", None) == _PACKET_TOO_LARGE
            self._set_state(
                ConnectionState.DISCONNECTED, logging.WARNING,
                "mqtt: lost the connection to %s (%s%s); reconnecting every %s, detections are queued on disk",
                self.broker, reason, ": a packet over its maximum packet size" if too_large else "", self._backoff,
            )
        elif self._state is not ConnectionState.REFUSED:  # closed before CONNACK: TLS or protocol trouble
            self._set_state(
                ConnectionState.DISCONNECTED, logging.WARNING,
                "mqtt: broker %s closed the connection before accepting it (%s%s); retrying every %s, "
                "detections are queued on disk", self.broker, reason,
                "; a client certificate it does not accept?" if self.broker.tls else "", self._backoff,
            )

    def _on_publish(self, _client: mqtt.Client, _userdata: Any, mid: int, _reason: Any, _properties: Any) -> None:
        self._events.put(_Event(_Kind.ACK, mid))

    def _on_ha_status(self, client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        """Home Assistant (re)started and said ``online``: it forgot non-retained state, and a
        broker that lost its retained messages forgot the configs; send them again."""
        if bytes(message.payload).strip() == ONLINE:
            self._publish_discovery(client)

    def announce(self) -> None:
        """Send the Home Assistant discovery configs (the feeder, on every connect)."""
        if self.ha_status_topic is not None:
            self._publish_discovery(self._client)

    def _publish_discovery(self, client: mqtt.Client) -> None:
        """Every discovery config, retained, QoS 1, straight to paho (their acks match no queued row)."""
        for item in self.discovery:
            if self.packet_size(item.topic, len(item.payload), DISCOVERY_QOS) > self.packet_limit:
                continue  # a broker that takes no packet this size: Home Assistant gets the rest
            try:
                client.publish(item.topic, item.payload, qos=DISCOVERY_QOS, retain=True)
            except ValueError as exc:
                log.error("mqtt: cannot publish the Home Assistant config %s: %s", item.topic, exc)
                continue
            self.discovery_published += 1


# ------------------------------------------------------------------------------------------- sink


@dataclass(frozen=True)
class MqttCounters:
    """The sink's numbers for the daemon's STATUS= line and the stats topic.

    Attributes:
        connected: the broker connection is up.
        state: connecting, connected, disconnected or refused.
        queued: messages stored in the disk queue since start (detections, events, snapshots, counts).
        sent: publishes handed to paho (re-sends included).
        acked: messages acknowledged by the broker and deleted from the queue.
        dropped: messages discarded by the full-queue policy.
        queue_depth: messages on disk now (waiting and in flight).
        inflight: messages sent and not yet acknowledged.
        degraded: frames whose masks were degraded to fit ``max_payload_bytes`` or the broker's limit.
        refused: frames too large even without masks at ``write``: set aside, never queued.
        oversize: queued messages over the broker's limit found when their turn came: set aside.
        poisoned: messages set aside by the disconnect rule (``poison_disconnects``).
        dead_lettered: messages in the dead-letter file since start (refused + oversize + poisoned).
        max_packet_size: the broker's announced maximum packet size; None when not announced.
        quarantined: damaged queue files set aside since start (see ``DiskQueue``).
        salvaged: records recovered from them into the new queue.
        stats_published: ``publish_stats`` calls that went out.
        oldest_queued_s: age of the oldest stored message; None when the queue is empty.
        events_queued: event messages stored since start.
        snapshots_queued: event snapshots stored since start.
        snapshots_skipped: snapshots larger than the payload room, not sent.
        counts_queued: retained zone counts stored since start.
        superseded: zone counts and camera statuses replaced in the queue by a newer one of their
            topic (one caught on its way out at that moment is still sent).
        discovery_published: Home Assistant discovery configs handed to the broker.
        statuses_queued: camera statuses (``online``/``offline``, camera topics) stored since start.
    """

    connected: bool
    state: str
    queued: int
    sent: int
    acked: int
    dropped: int
    queue_depth: int
    inflight: int
    degraded: int
    refused: int
    oversize: int
    poisoned: int
    dead_lettered: int
    max_packet_size: int | None
    quarantined: int
    salvaged: int
    stats_published: int
    oldest_queued_s: float | None
    events_queued: int = 0
    snapshots_queued: int = 0
    snapshots_skipped: int = 0
    counts_queued: int = 0
    superseded: int = 0
    discovery_published: int = 0
    statuses_queued: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CameraTopics:
    """Where one camera's messages go: ``P/<camera>/...`` with camera topics, the device's ``P/...``
    without them (``camera`` "")."""

    camera: str
    detections: str
    events: str

    @classmethod
    def of(cls, config: MqttConfig, camera: str) -> CameraTopics:
        return cls(camera, camera_topic(config, camera, TOPIC_DETECTIONS), camera_topic(config, camera, TOPIC_EVENTS))

    def snapshot(self, event_id: str) -> str:
        return f"{self.events}/{topic_level(event_id)}/{SNAPSHOT_LEAF}"


class MqttSink(Sink):
    """Publishes frame results to ``<prefix>/<device>/detections``, and with tracking on events and
    zone counts, through a disk queue.

    Args:
        config: the ``mqtt`` section (its ``uri`` must be set).
        zones: zone name -> the class names it counts (from the zones config): the entities of
            Home Assistant discovery. Counts are published for whatever ``analytics`` reports.
        camera_topics: each camera's messages on ``P/<camera>/...`` and its status on
            ``P/<camera>/status`` (see the module docstring); False: every topic as for one camera.
        camera_zones: with ``camera_topics``, camera name -> its zones (as ``zones``): the cameras
            and zone entities announced to Home Assistant (``zones`` is then not announced).
        start: open the queue and connect now. ``False`` builds and checks everything that can
            fail without touching the queue file or the network (password file, TLS files, the
            paho client); ``open_queue`` and ``start`` do the rest. That is how a reload prepares
            a replacement while the running publisher still holds the queue file
            (``edgeseg.service.outputs``).

    Raises:
        SinkError: (one line) MQTT is off, the password file or a TLS file cannot be read, the
            queue file cannot be opened or is held by another daemon. An unreachable broker or
            refused credentials are not errors here: they are logged and retried.
    """

    def __init__(self, config: MqttConfig, start: bool = True,
                 zones: Optional[ZoneClasses] = None, camera_topics: bool = False,
                 camera_zones: Optional[Mapping[str, ZoneClasses]] = None):
        if config.uri is None:
            raise SinkError("mqtt: no broker configured (mqtt.uri is not set)")
        self.config = config
        self.broker = config.broker
        self.mask_format: MaskFormat = config.mask_format
        self.topic = config.topic(TOPIC_DETECTIONS)
        self.events_topic = config.topic(TOPIC_EVENTS)
        self.stats_topic = config.topic(TOPIC_STATS)
        self.available_topic = config.topic(TOPIC_AVAILABLE)
        self.zones: Dict[str, List[str]] = _zone_lists(zones)
        self.camera_topics = bool(camera_topics)
        self.camera_zones: Dict[str, Dict[str, List[str]]] = (
            {str(cam): _zone_lists(z) for cam, z in (camera_zones or {}).items()} if self.camera_topics else {})
        self._topics: Dict[str, CameraTopics] = {"": CameraTopics.of(config, "")}
        self._event_qos = max(MIN_EVENT_QOS, config.qos)
        #: The last count queued per (camera, zone, class) (camera "" without camera topics): only
        #: a change is published again. Empty in a new publisher (a start or a reload), so its
        #: first analytics state every count.
        self._counts: Dict[Tuple[str, str, str], int] = {}
        self._events_queued = self._snapshots_queued = self._snapshots_skipped = self._counts_queued = 0
        #: camera -> its last status given to ``write_status`` (camera topics only); every camera
        #: whose last status is online is sent offline on a clean close.
        self._statuses: Dict[str, bool] = {}
        self._status_lock = threading.Lock()
        self._statuses_queued = 0
        password = _password(config)
        _check_tls_files(config)
        #: What the password and TLS files held when read: a reload whose section is unchanged
        #: still reconnects when one of those files was replaced (a rotated password or cert).
        self.credentials_digest = credentials_digest(config, password)
        self._events: queue.SimpleQueue[_Event] = queue.SimpleQueue()
        discovery = discovery_messages(config, self.zones, self.camera_zones if self.camera_topics else None)
        self._publisher = MqttPublisher(config, password, self._events, discovery)
        self._queue: Optional[DiskQueue] = None
        self._started = False
        self._closed = False
        self._holding = False  # the feeder sends nothing new (a handover is coming)
        # Held by the feeder while it checks _holding and hands messages to paho, and by hold():
        # once hold() has set _holding, no top-up is half done, so what is in flight is known.
        self._send_lock = threading.Lock()
        self._full = False
        self._sent = self._degraded = self._refused = self._stats_published = 0
        self._oversize = self._poisoned = 0
        self._said: Set[str] = set()  # causes already logged once
        self._sent_at: Dict[int, float] = {}  # row id -> monotonic time of its last publish
        self._strikes: Dict[int, int] = {}  # row id -> disconnects it was in flight at, in careful mode
        self._careful_until: Optional[int] = None  # one message at a time until this row id is through
        self._feeder_errors: set[str] = set()
        self._feeder = threading.Thread(target=self._feed, name="edgeseg-mqtt-feeder", daemon=True)
        if start:
            self.start()

    @property
    def queue(self) -> DiskQueue:
        """The disk queue this sink feeds from (``SinkError`` before it is opened or after handover)."""
        if self._queue is None:
            raise SinkError(f"mqtt: the queue of {self.broker} is not open")
        return self._queue

    @property
    def has_queue(self) -> bool:
        return self._queue is not None

    def open_queue(self) -> DiskQueue:
        """Open the configured queue file now (``SinkError`` when it cannot be, or is held by
        another process); a second call returns the same queue."""
        if self._queue is None:
            c = self.config
            self._queue = DiskQueue(
                c.queue_path(), c.queue.max_messages, c.queue.policy, c.queue.synchronous,
                dead_letter_path=c.dead_letter_path(), dead_letter_max_bytes=c.queue.dead_letter_max_bytes,
            )
        return self._queue

    def start(self, queue: Optional[DiskQueue] = None) -> None:
        """Start sending: the feeder thread and the connection (in the background).

        ``queue``: an open queue handed over by the sink this one replaces (``handover``), on the
        same file; its size, policy, durability and dead-letter settings become this config's.
        Without it the configured queue file is opened (unless ``open_queue`` already did).
        """
        if self._started or self._closed:
            raise SinkError(f"mqtt sink for {self.broker} was started already")
        if queue is not None:
            if self._queue is not None and self._queue is not queue:
                raise SinkError(f"mqtt: the sink for {self.broker} has a queue already")
            retune_queue(queue, self.config)
            self._queue = queue
        q = self.open_queue()
        with self._status_lock:  # statuses given before start, in order with any that come now
            self._started = True
            try:
                self._store_statuses(self._statuses)
            except SinkError as exc:
                log.error("mqtt: cannot queue the cameras' statuses: %s", exc)
        self._feeder.start()
        self._publisher.start()
        log.info("mqtt: publishing to %s on %s (queue %s, %d waiting)", self.broker, self.topic, q.path, q.depth)

    # -- Sink ----------------------------------------------------------------------------------

    def write(self, result: FrameResult) -> None:
        """Queue one frame's messages on disk (its result, and its events and changed counts when it
        has analytics) in one transaction; returns once committed, never waits on the network."""
        if self._closed or not self._started:
            raise SinkError(f"mqtt sink for {self.broker} is {'closed' if self._closed else 'not started'}")
        topics = self.topics_for(result.camera)
        messages: List[Outgoing] = []
        if self.config.detections:
            data = self._detection_payload(result, topics.detections)
            if data is not None:
                messages.append(Outgoing(topics.detections, data, None, False, PRIORITY_DETECTIONS))
        analytics = result.analytics
        counts: Dict[Tuple[str, str, str], int] = {}
        if analytics is not None:
            if self.config.events:
                for event in analytics.events:
                    messages.extend(self._event_messages(event, result.camera))
            if self.config.occupancy:
                counts = self._changed_counts(analytics.zones.occupancy, topics.camera)
                messages.extend(
                    Outgoing(zone_topic(self.config, zone, cls, camera), str(n).encode("ascii"), self._event_qos,
                             True, PRIORITY_EVENTS, collapse=True)
                    for (camera, zone, cls), n in counts.items()
                )
        self._store(messages)
        self._counts.update(counts)  # after the commit: a failed write states them again next time
        self._counts_queued += len(counts)

    def write_events(self, events: Iterable[Event]) -> None:
        """Queue event messages that belong to no frame (the ``end`` messages when the run stops,
        ``EventManager.finish``), like those of ``write``; nothing when ``events`` is off."""
        if self._closed or not self._started:
            raise SinkError(f"mqtt sink for {self.broker} is {'closed' if self._closed else 'not started'}")
        if self.config.events:
            self._store([m for event in events for m in self._event_messages(event)])

    def write_status(self, camera: str, online: bool) -> None:
        """Queue ``online``/``offline`` for ``camera`` on ``P/<camera>/status`` (retained, QoS at least
        1; a newer status replaces a still waiting older one). Does nothing without camera topics,
        or for camera "". Before ``start`` the status is remembered and queued at ``start``; after
        ``close`` it is ignored (the close sent the camera offline). Called from the cameras'
        capture threads; ``SinkError`` when the queue cannot be written."""
        if not self.camera_topics or not camera:
            return
        with self._status_lock:
            if self._closed:
                return
            self._statuses[camera] = bool(online)
            if not self._started:
                return
            self._store_statuses({camera: bool(online)})

    def camera_statuses(self) -> Dict[str, bool]:
        """camera -> its last status given to ``write_status`` (True: online)."""
        with self._status_lock:
            return dict(self._statuses)

    def topics_for(self, camera: str) -> CameraTopics:
        """The topics of ``camera``'s messages: its own level with camera topics, else the device's."""
        key = camera if self.camera_topics else ""
        topics = self._topics.get(key)
        if topics is None:
            topics = self._topics.setdefault(key, CameraTopics.of(self.config, key))
        return topics

    def _store_statuses(self, statuses: Mapping[str, bool]) -> None:
        """Queue each camera's status: retained, collapsing a waiting older one of its topic."""
        if not statuses:
            return
        self._put([Outgoing(status_topic(self.config, camera), ONLINE if online else OFFLINE, self._event_qos,
                            True, PRIORITY_STATUS, collapse=True) for camera, online in statuses.items()])
        self._statuses_queued += len(statuses)

    def _announce_offline(self) -> None:
        """Queue ``offline`` for every camera last announced online (a clean close or a handover)."""
        with self._status_lock:
            cameras = [camera for camera, online in self._statuses.items() if online]
            try:
                self._store_statuses(dict.fromkeys(cameras, False))
            except SinkError as exc:
                log.error("mqtt: cannot queue 'offline' for cameras %s: %s", ", ".join(cameras), exc)
                return
            self._statuses.update(dict.fromkeys(cameras, False))

    def _store(self, messages: List[Outgoing]) -> None:
        """Commit one write's messages to the queue and wake the feeder."""
        if not messages:
            return
        self._put(messages)
        self._events_queued += sum(m.priority == PRIORITY_EVENTS and not m.retain for m in messages)
        self._snapshots_queued += sum(m.priority == PRIORITY_SNAPSHOTS for m in messages)

    def _put(self, messages: List[Outgoing]) -> None:
        """Commit messages to the queue in one transaction and wake the feeder (no counters: the
        statuses come from other threads than the writes, each kind counts its own)."""
        self.queue.put_many(messages)
        self._note_fullness()
        self._events.put(_WAKE)

    def _detection_payload(self, result: FrameResult, topic: str) -> Optional[bytes]:
        """The frame result's payload on ``topic``, masks degraded to fit; None (set aside, counted)
        when even the mask-less form is too large."""
        limit = self._payload_limit(topic)
        name = "mqtt.max_payload_bytes" if limit == self.config.max_payload_bytes else (
            f"the payload room (broker {self.broker}'s maximum packet size {self._publisher.packet_limit} "
            f"less topic and headers)")
        try:
            payload = encode_frame_result(result, self.mask_format, limit, name)
        except SinkError as exc:
            self._refused += 1
            data = encode_frame_result(result, "none", MQTT_MAX_PAYLOAD).data
            self._set_aside_unqueued(data, f"refused at write: {exc}", topic)
            self._say_once("refused", logging.ERROR, "%s; set aside in %s (further ones are counted as refused)",
                           exc, self.queue.dead_letters.path)
            return None
        if payload.mask_format != self.mask_format:
            self._degraded += 1
            self._say_once("degraded", logging.WARNING,
                           "mqtt: frame %d over %d bytes with %s masks: sent with %s (further degradations are "
                           "counted)", result.frame.frame_id, limit, self.mask_format, payload.mask_format)
        return payload.data

    def _event_messages(self, event: Event, camera: str = "") -> List[Outgoing]:
        """An event's message, and its snapshot's when it has one and ``publish_snapshots`` is on,
        on the topics of the event's camera (its document's ``camera``; else ``camera``)."""
        own = event.document.get("camera") if isinstance(event.document, Mapping) else None
        topics = self.topics_for(own if isinstance(own, str) and own else camera)
        events_topic = topics.events
        limit = self._payload_limit(events_topic, self._event_qos)
        try:
            payload = encode_event(event.document, limit)
        except SinkError as exc:
            self._refused += 1
            self._set_aside_unqueued(_event_text(event.document), f"refused at write: {exc}", events_topic)
            self._say_once("refused-event", logging.ERROR, "%s; set aside in %s (further ones are counted as "
                           "refused)", exc, self.queue.dead_letters.path)
            return []
        if payload.mask_format == "none":
            self._degraded += 1
            self._say_once("degraded-event", logging.WARNING, "mqtt: event %s over %d bytes: sent without its mask "
                           "(further degradations are counted)", event.event_id, limit)
        out = [Outgoing(events_topic, payload.data, self._event_qos, False, PRIORITY_EVENTS)]
        if event.snapshot is not None and self.config.publish_snapshots:
            topic = topics.snapshot(event.event_id)
            room = self._payload_limit(topic, self._event_qos)
            if len(event.snapshot) <= room:
                out.append(Outgoing(topic, bytes(event.snapshot), self._event_qos, False, PRIORITY_SNAPSHOTS))
            else:
                self._snapshots_skipped += 1
                self._say_once("snapshot-size", logging.WARNING,
                               "mqtt: snapshot of event %s is %d bytes, over the payload room %d "
                               "(mqtt.max_payload_bytes or the broker's limit): not published (further ones are "
                               "counted as snapshots_skipped)", event.event_id, len(event.snapshot), room)
        return out

    def _changed_counts(self, occupancy: Mapping[str, Mapping[str, int]],
                        camera: str) -> Dict[Tuple[str, str, str], int]:
        """The (camera, zone, class) counts that differ from the last ones queued (all of them the
        first time); ``camera`` is the topic level ("" without camera topics)."""
        changed: Dict[Tuple[str, str, str], int] = {}
        for zone, per_class in occupancy.items():
            for cls, count in per_class.items():
                key = (camera, str(zone), str(cls))
                n = int(count)
                if self._counts.get(key) != n:
                    changed[key] = n
        return changed

    def close(self) -> None:
        """Wait up to ``drain_timeout_s`` for the queue to empty, publish ``offline``, disconnect.

        What is still queued stays on disk for the next start. Idempotent. A sink never started
        only releases its queue (if ``open_queue`` opened one); after ``handover`` the queue is
        the next sink's and is left open.
        """
        if self._closed:
            return
        with self._status_lock:
            self._closed = True  # a status from a capture thread from now on is ignored
        if not self._started:
            if self._queue is not None:
                self._queue.close()
            return
        self._announce_offline()
        if self._publisher.connected and self.config.drain_timeout_s > 0:
            self.wait_drained(self.config.drain_timeout_s)
        self._stop_sending(offline=True)
        q = self.queue
        left = q.depth
        q.close()
        if left:
            log.info("mqtt: closed with %d messages queued in %s; they go out after the next start", left, q.path)

    # -- handing the queue over (a reload) -----------------------------------------------------

    def hold(self, timeout: float) -> bool:
        """Send nothing more, and wait up to ``timeout`` s for what is in flight to be acknowledged.

        ``write`` still queues. Called before ``handover``: a message whose PUBACK arrives here
        is deleted now rather than sent again by the next publisher (a duplicate). True when
        nothing is left in flight.
        """
        with self._send_lock:  # a top-up in progress finishes first: its messages count as in flight
            self._holding = True
        if not self._started or self._closed:
            return True
        deadline = time.monotonic() + timeout
        while self.queue.inflight and self._publisher.connected:
            if time.monotonic() >= deadline:
                return False
            time.sleep(DRAIN_POLL_S)
        return not self.queue.inflight

    def handover(self, offline: bool, statuses_offline: Optional[bool] = None) -> DiskQueue:
        """Stop this publisher and give its still open queue to the one replacing it.

        Whatever is still in flight goes back to waiting, so the next publisher sends it (first).
        ``offline``: announce ``offline`` on this availability topic (the device id or topic
        prefix changes); otherwise the retained ``online`` stays and the next publisher repeats it.
        ``statuses_offline`` (default: ``offline``): queue ``offline`` on the status topic of every
        camera announced online, for the next publisher to send (its status topics differ, or it
        has none); otherwise they stay, and the next publisher restates them on its own.
        The sink is closed afterwards; ``close`` leaves the queue alone.
        """
        if self._closed or not self._started:
            raise SinkError(f"mqtt sink for {self.broker} is not running: nothing to hand over")
        self._holding = True
        with self._status_lock:
            self._closed = True
        if offline if statuses_offline is None else statuses_offline:
            self._announce_offline()
        self._stop_sending(offline=offline)
        q = self.queue
        q.requeue_inflight()
        return q  # the next sink's now: this one is closed, and close() leaves it alone

    def _stop_sending(self, offline: bool) -> None:
        self._publisher.stop(offline=offline)
        self._events.put(_Event(_Kind.STOP))
        self._feeder.join(STOP_TIMEOUT_S)

    # -- for the daemon ------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._publisher.connected

    @property
    def state(self) -> ConnectionState:
        return self._publisher.state

    def counters(self) -> MqttCounters:
        q = self.queue.counters()
        oldest = self.queue.oldest_age_s() if q.depth and not self._closed else None
        return MqttCounters(
            connected=self.connected,
            state=self.state.value,
            queued=q.queued,
            sent=self._sent,
            acked=q.acked,
            dropped=q.dropped,
            queue_depth=q.depth,
            inflight=q.inflight,
            degraded=self._degraded,
            refused=self._refused,
            oversize=self._oversize,
            poisoned=self._poisoned,
            dead_lettered=q.dead_lettered,
            max_packet_size=self._publisher.max_packet_size,
            quarantined=q.quarantined,
            salvaged=q.salvaged,
            stats_published=self._stats_published,
            oldest_queued_s=None if oldest is None else round(oldest, 1),
            events_queued=self._events_queued,
            snapshots_queued=self._snapshots_queued,
            snapshots_skipped=self._snapshots_skipped,
            counts_queued=self._counts_queued,
            superseded=self.queue.superseded,
            discovery_published=self._publisher.discovery_published,
            statuses_queued=self._statuses_queued,
        )

    def status(self) -> dict[str, Any]:
        """``counters()`` as a dict plus the broker: the daemon's ``mqtt`` entry of its stats."""
        return {"broker": str(self.broker), **self.counters().as_dict()}

    def publish_stats(self, stats: Mapping[str, Any]) -> bool:
        """Publish a stats snapshot to ``<prefix>/<device>/stats`` (QoS 0, not retained, not queued).

        Returns False (nothing sent) while disconnected. Raises ``SinkError`` for a value that
        is not JSON.
        """
        try:
            data = json.dumps(dict(stats), separators=JSON_SEPARATORS, default=_json_default).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise SinkError(f"mqtt: stats are not JSON: {exc}") from None
        if self._closed or not self._publisher.connected:
            return False
        if self._publisher.publish(self.stats_topic, data, STATS_QOS) is None:
            return False
        self._stats_published += 1
        return True

    def wait_connected(self, timeout: float) -> bool:
        """True once connected (within ``timeout`` seconds)."""
        return self._publisher.wait_connected(timeout)

    def wait_drained(self, timeout: float) -> bool:
        """True once every queued message is acknowledged (within ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while self.queue.depth:
            if time.monotonic() >= deadline:
                return False
            time.sleep(DRAIN_POLL_S)
        return True

    # -- internals -----------------------------------------------------------------------------

    def _payload_limit(self, topic: Optional[str] = None, qos: Optional[int] = None) -> int:
        """Most payload bytes a message on ``topic`` (default: detections) may have: ``max_payload_bytes``,
        and what fits the broker's packets."""
        overhead = self._publisher.packet_size(self.topic if topic is None else topic, 0,
                                               self.config.qos if qos is None else qos)
        return max(1, min(self.config.max_payload_bytes, self._publisher.packet_limit - overhead))

    def _qos(self, message: QueuedMessage) -> int:
        """A queued message's QoS: its own, or the configured one (detections)."""
        return self.config.qos if message.qos is None else message.qos

    def _say_once(self, cause: str, level: int, message: str, *args: object) -> None:
        if cause not in self._said:
            self._said.add(cause)
            log.log(level, message, *args)

    def _set_aside_unqueued(self, payload: bytes, reason: str, topic: Optional[str] = None) -> None:
        try:
            self.queue.dead_letters.add(self.topic if topic is None else topic, payload, reason, time.time())
        except OSError as exc:
            log.error("mqtt: cannot write the dead-letter file %s (%s); frame discarded (%s)",
                      self.queue.dead_letters.path, exc, reason)

    def _note_fullness(self) -> None:
        full = self.queue.depth >= self.queue.max_messages
        if full and not self._full:
            log.warning("mqtt: queue full (%d messages, broker %s %s): now %s, counted as dropped",
                        self.queue.max_messages, self.broker, self.state.value,
                        "dropping the oldest" if self.queue.policy == "drop_oldest" else "refusing new ones")
        elif self._full and not full:
            log.info("mqtt: queue has room again (%d dropped so far)", self.queue.counters().dropped)
        self._full = full

    def _feed(self) -> None:
        """The feeder thread: apply events in order, then top up the in-flight window."""
        connected = False
        while True:
            try:
                events = [self._events.get(timeout=FEEDER_POLL_S)]
            except queue.Empty:
                events = []
            while len(events) < EVENT_BATCH:
                try:
                    events.append(self._events.get_nowait())
                except queue.Empty:
                    break
            try:
                connected, stop = self._apply(events, connected)
                if stop:
                    return
                # The client's own flag too: between a lost connection and its DOWN event here,
                # messages handed to paho would only be dropped at the reconnect and sent again.
                with self._send_lock:
                    if connected and not self._holding and self._publisher.connected:
                        self._top_up()
            except SinkError as exc:  # the queue file failed (disk full, removed): say so once, retry
                if str(exc) not in self._feeder_errors:
                    self._feeder_errors.add(str(exc))
                    log.error("%s (retrying)", exc)
                time.sleep(FEEDER_POLL_S)

    def _apply(self, events: list[_Event], connected: bool) -> tuple[bool, bool]:
        acks: list[int] = []
        for event in events:
            if event.kind is _Kind.ACK:
                acks.append(event.mid)
            elif event.kind in (_Kind.UP, _Kind.DOWN):
                self.queue.ack(acks)  # acks that came before the change still count
                acks = []
                if event.kind is _Kind.DOWN:
                    self._blame_inflight()
                self.queue.requeue_inflight()
                self._sent_at.clear()
                connected = event.kind is _Kind.UP
                if connected:
                    self._publisher.announce()
            elif event.kind is _Kind.STOP:
                self.queue.ack(acks)
                return connected, True
        self.queue.ack(acks)
        return connected, False

    def _blame_inflight(self) -> None:
        """The poison rule, on a lost connection: strike what was just sent; set aside a lone repeat offender.

        With several messages in flight the culprit is unknown, so the feeder goes careful: one
        message at a time until every one of them is through. Then the message in flight at a
        disconnect is the one the broker dropped us for; at ``poison_disconnects`` strikes in a
        row it goes to the dead-letter file and the queue moves on.
        """
        now = time.monotonic()
        rows = self.queue.inflight_rows()
        recent = [r for r in rows if now - self._sent_at.get(r, -POISON_WINDOW_S) < POISON_WINDOW_S]
        if not recent:
            return
        for row in recent:
            self._strikes[row] = self._strikes.get(row, 0) + 1
        if len(rows) == 1 and self._strikes[rows[0]] >= self.config.poison_disconnects:
            row = rows[0]
            strikes = self._strikes.pop(row)
            reason = (f"in flight at {strikes} disconnects in a row from broker {self.broker}: the broker "
                      f"refuses it (too large for it, or a topic it forbids)")
            if self.queue.dead_letter([row], reason):
                self._poisoned += 1
                self._say_once("poisoned", logging.ERROR,
                               "mqtt: queued message #%d was %s; set aside in %s (further ones are counted as "
                               "poisoned)",
                               row, reason, self.queue.dead_letters.path)
            return
        if self._careful_until is None:
            log.info("mqtt: connection to %s dropped with %d messages just sent; sending one at a time until they "
                     "are through", self.broker, len(recent))
        self._careful_until = max(max(rows), self._careful_until or 0)

    def _top_up(self) -> None:
        window = self.config.max_inflight
        if self._careful_until is not None:
            oldest = self.queue.oldest_id()
            if oldest is None or oldest > self._careful_until:
                self._careful_until = None  # every suspect is through: full speed again
                self._strikes.clear()
            else:
                window = 1
        room = window - self.queue.inflight
        sent: list[tuple[int, int]] = []
        try:
            for message in self.queue.peek(room):
                payload = self._fit(message)
                if payload is None:
                    continue
                mid = self._publisher.publish(message.topic, payload, self._qos(message), message.retain)
                if mid is None:
                    break
                sent.append((message.id, mid))
                self._sent_at[message.id] = time.monotonic()
        finally:
            self.queue.mark_inflight(sent)
            self._sent += len(sent)

    def _fit(self, message: QueuedMessage) -> bytes | None:
        """The payload to send for a queued message: as stored, mask-less if only that fits the
        broker, or None (set aside) when nothing does."""
        limit = self._publisher.packet_limit
        qos = self._qos(message)
        size = self._publisher.packet_size(message.topic, len(message.payload), qos)
        if size <= limit:
            return message.payload
        smaller = strip_masks(message.payload)
        if smaller is not None and self._publisher.packet_size(message.topic, len(smaller), qos) <= limit:
            self._degraded += 1
            self._say_once("degraded-queued", logging.WARNING,
                           "mqtt: a queued message of %d bytes is over the broker's maximum packet size %d: sent "
                           "without masks (further ones are counted as degraded)", size, limit)
            return smaller
        reason = f"packet of {size} bytes, over the maximum packet size {limit} of broker {self.broker}"
        if self.queue.dead_letter([message.id], reason):
            self._oversize += 1
            self._say_once("oversize", logging.ERROR,
                           "mqtt: queued message #%d is a %s; set aside in %s (further ones are counted as "
                           "oversize)",
                           message.id, reason, self.queue.dead_letters.path)
        return None


def _password(config: MqttConfig) -> str | None:
    if config.password is not None:
        return config.password.get_secret_value()
    if config.password_file is None:
        return None
    path = Path(config.password_file).expanduser()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SinkError(f"mqtt.password_file {str(path)!r}: cannot read ({exc})") from None
    return lines[0] if lines else ""


def credentials_digest(config: MqttConfig, password: str | None) -> str:
    """A digest of the password and of the TLS files' contents (``SinkError`` when one cannot be
    read): what a reload compares to notice a rotated password or certificate behind unchanged
    file names. Only the digest is kept, never the bytes."""
    digest = hashlib.sha256(b"password:" + (b"-" if password is None else b"=" + password.encode("utf-8")))
    tls = config.tls
    for field in ("ca_file", "cert_file", "key_file"):
        value = None if tls is None else getattr(tls, field)
        digest.update(f"\0{field}:".encode("ascii"))
        if value is None:
            continue
        path = Path(value).expanduser()
        try:
            digest.update(path.read_bytes())
        except OSError as exc:
            raise SinkError(f"mqtt.tls.{field} {value!r}: cannot read ({exc.strerror or exc})") from None
    return digest.hexdigest()


def _expand(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser())


def _check_tls_files(config: MqttConfig) -> None:
    if config.tls is None:
        return
    for field in ("ca_file", "cert_file", "key_file"):
        value = getattr(config.tls, field)
        if value is not None and not Path(value).expanduser().is_file():
            raise SinkError(f"mqtt.tls.{field} {value!r}: no such file")


def mqtt_sink_from_spec(uri: str, options: SinkOptions, camera_topics: Optional[bool] = None) -> MqttSink:
    """The ``mqtt:URI`` (or bare ``mqtt[s]://...``) sink spec: the broker URI, every other setting
    at its default. Errors quote the URI with its password masked. ``camera_topics``: None takes
    ``options.camera_topics`` where the options have it (several cameras), else off."""
    try:
        config = MqttConfig(uri=uri, mask_format=options.mask_format)
    except ValidationError as exc:
        reasons = "; ".join(mask_credentials(pydantic_message(e["msg"])) for e in exc.errors())
        raise SinkError(f"sink spec {mask_credentials(uri)!r}: {reasons}") from None
    if camera_topics is None:
        camera_topics = bool(getattr(options, "camera_topics", False))
    return MqttSink(config, camera_topics=camera_topics)


def _zone_lists(zones: Optional[ZoneClasses]) -> Dict[str, List[str]]:
    return {str(z): [str(c) for c in classes] for z, classes in (zones or {}).items()}
