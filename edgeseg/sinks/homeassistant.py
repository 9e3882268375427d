"""Home Assistant MQTT discovery: the configs that make a camera's zone counts appear with no YAML.

Home Assistant's MQTT integration creates an entity for every retained JSON config it finds on
``<discovery_prefix>/<component>/[<node_id>/]<object_id>/config`` (node and object ids of
``[a-zA-Z0-9_-]``), grouped into one device by the ``device`` block's ``identifiers``; see
https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery (discovery topic, payload,
device registry keys) and the binary sensor / sensor pages for their keys. For each zone and
each class it counts, this module describes:

- an occupancy ``binary_sensor`` (``device_class: occupancy``): on while the count is above 0,
  read from the retained count with ``value_template`` ``{{ 'ON' if value|int > 0 else 'OFF' }}``;
- a count ``sensor`` (``state_class: measurement``) reading the same retained count;

plus one ``binary_sensor`` (``device_class: connectivity``) for the camera itself, reading the
device's availability topic. Every zone entity names that topic as its ``availability_topic``
(``online``/``offline``, Home Assistant's default payloads), so the counts show "unavailable",
not a stale number, while the camera is down.

The configs are built here as plain data (no I/O); ``edgeseg.sinks.mqtt`` publishes them,
retained at QoS 1, straight to the broker on every connect (not through the disk queue: they are
sent again on the next connect anyway), and again whenever Home Assistant announces ``online``
on its birth topic (``<discovery_prefix>/status``), which it does after a restart.

Ids: the node id is the device id; the object id is ``<zone>_<class>_occupancy`` /
``..._count``, reduced to the allowed characters, with a short digest of the original names
when that reduction changed them (so "a b" and "a_b" stay two entities). ``unique_id`` is
``edgeseg_<device>_<object>``: stable across restarts, so Home Assistant keeps the user's
renames and areas.

With camera topics (``mqtt.camera_topics``, several cameras), ``cameras`` maps each camera to
its zones. Each camera gets a connectivity ``binary_sensor`` reading its retained status topic
``<prefix>/<device>/<camera>/status`` (object id ``<camera>_online``; unavailable while the
device is offline, since the Last Will covers only the device's topic), and its zone entities
read ``<prefix>/<device>/<camera>/zones/<zone>/<class>``, with the camera in the object id
(``<camera>_<zone>_<class>_occupancy``) and in the name, and are available only while both the
device and the camera are online (``availability`` with both topics, ``availability_mode: all``).
The device's own connectivity entity stays (named "Device online"), so one device in Home
Assistant holds every camera's entities.
"""

from __future__ import annotations

import hashlib
import json
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Dict, Final, List, Optional, Tuple

from edgeseg import __version__
from edgeseg.config.mqtt import MqttConfig

COMPONENT_BINARY_SENSOR: Final = "binary_sensor"
COMPONENT_SENSOR: Final = "sensor"
MODEL: Final = "edgeseg"
OCCUPANCY_TEMPLATE: Final = "{{ 'ON' if value|int > 0 else 'OFF' }}"
"""Home Assistant template: the retained count to the binary sensor's ON/OFF."""
DISCOVERY_QOS: Final = 1
STATUS_LEAF: Final = "status"
ONLINE_PAYLOAD: Final = "online"
OFFLINE_PAYLOAD: Final = "offline"
_ID_BAD: Final = re.compile(r"[^a-zA-Z0-9_-]")
_LEVEL_BAD: Final = re.compile(r"[/+#\x00]")


@dataclass(frozen=True)
class DiscoveryMessage:
    """One retained discovery config: where it goes and its JSON."""

    topic: str
    payload: bytes

    def document(self) -> Dict[str, Any]:
        doc: Dict[str, Any] = json.loads(self.payload)
        return doc


def topic_level(name: str) -> str:
    """``name`` as one MQTT topic level: ``/``, ``+``, ``#`` and NUL become ``_`` (empty: ``_``)."""
    return _LEVEL_BAD.sub("_", name) or "_"


def camera_topic(config: MqttConfig, camera: str, leaf: str) -> str:
    """``<prefix>/<device>/<camera>/<leaf>``; the device's ``<prefix>/<device>/<leaf>`` for camera ""."""
    return config.topic(f"{topic_level(camera)}/{leaf}" if camera else leaf)


def zone_topic(config: MqttConfig, zone: str, class_name: str, camera: str = "") -> str:
    """The retained count's topic, ``<prefix>/<device>/zones/<zone>/<class>``, or with a camera
    (camera topics) ``<prefix>/<device>/<camera>/zones/<zone>/<class>``."""
    return camera_topic(config, camera, f"zones/{topic_level(zone)}/{topic_level(class_name)}")


def status_topic(config: MqttConfig, camera: str) -> str:
    """A camera's retained ``online``/``offline``: ``<prefix>/<device>/<camera>/status``."""
    if not camera:
        raise ValueError("a camera status topic needs a camera name")
    return camera_topic(config, camera, STATUS_LEAF)


def discovery_id(*names: str) -> str:
    """``names`` joined by ``_`` in Home Assistant's id characters ``[a-zA-Z0-9_-]``; a short digest of
    the originals is appended when characters had to be replaced, so distinct names stay distinct."""
    joined = "_".join(names)
    cleaned = _ID_BAD.sub("_", joined)
    if cleaned != joined:
        cleaned += "_" + hashlib.sha1(joined.encode("utf-8")).hexdigest()[:6]
    return cleaned


def device_block(config: MqttConfig) -> Dict[str, Any]:
    """The ``device`` mapping every entity shares: one device per camera (its device id)."""
    ha = config.homeassistant
    return {
        "identifiers": [config.device_id],
        "name": ha.device_name if ha.device_name is not None else f"edgeseg {config.device_id}",
        "model": MODEL,
        "manufacturer": MODEL,
        "sw_version": __version__,
    }


ZoneClasses = typing.Mapping[str, typing.Sequence[str]]  # typing's: evaluated at import, on 3.8 too
"""zone name -> the class names it counts."""


def discovery_messages(config: MqttConfig, zones: ZoneClasses,
                       cameras: Optional[Mapping[str, ZoneClasses]] = None) -> List[DiscoveryMessage]:
    """The discovery configs of ``zones`` (zone name -> the class names it counts), in a stable order.

    ``cameras`` (camera topics on): camera name -> its zones; then the entities are per camera
    (see the module docstring) and ``zones`` is not used. Empty when
    ``mqtt.homeassistant.enabled`` is false.
    """
    ha = config.homeassistant
    if not ha.enabled:
        return []
    node = discovery_id(config.device_id)
    available = config.topic("available")
    device = device_block(config)
    origin = {"name": MODEL, "sw_version": __version__}
    messages: List[DiscoveryMessage] = []

    def add(component: str, object_id: str, body: Dict[str, Any]) -> None:
        payload = {"unique_id": f"edgeseg_{node}_{object_id}", **body}
        topic = f"{ha.discovery_prefix}/{component}/{node}/{object_id}/config"
        messages.append(DiscoveryMessage(topic, json.dumps(payload, separators=(",", ":")).encode("utf-8")))

    def connectivity(name: str, state: str) -> Dict[str, Any]:
        return {
            "name": name,
            "device_class": "connectivity",
            "state_topic": state,
            "payload_on": ONLINE_PAYLOAD,
            "payload_off": OFFLINE_PAYLOAD,
            "entity_category": "diagnostic",
            "qos": DISCOVERY_QOS,
            "device": device,
            "origin": origin,
        }

    def add_zones(camera: str, per_zone: ZoneClasses, availability: Dict[str, Any]) -> None:
        prefix = f"{camera} " if camera else ""
        ids = (camera,) if camera else ()
        for zone, classes in _pairs(per_zone):
            for class_name in classes:
                state = zone_topic(config, zone, class_name, camera)
                common = {**availability, "qos": DISCOVERY_QOS, "device": device, "origin": origin}
                add(COMPONENT_BINARY_SENSOR, discovery_id(*ids, zone, class_name, "occupancy"), {
                    "name": f"{prefix}{zone} {class_name} occupancy",
                    "device_class": "occupancy",
                    "state_topic": state,
                    "value_template": OCCUPANCY_TEMPLATE,
                    "payload_on": "ON",
                    "payload_off": "OFF",
                    **common,
                })
                add(COMPONENT_SENSOR, discovery_id(*ids, zone, class_name, "count"), {
                    "name": f"{prefix}{zone} {class_name} count",
                    "state_topic": state,
                    "state_class": "measurement",
                    "icon": "mdi:counter",
                    **common,
                })

    add(COMPONENT_BINARY_SENSOR, "camera_online",
        connectivity("Camera online" if cameras is None else "Device online", available))
    if cameras is None:
        add_zones("", zones, {
            "availability_topic": available,
            "payload_available": ONLINE_PAYLOAD,
            "payload_not_available": OFFLINE_PAYLOAD,
        })
        return messages
    for camera, per_zone in cameras.items():
        status = status_topic(config, camera)
        add(COMPONENT_BINARY_SENSOR, discovery_id(camera, "online"), {
            **connectivity(f"{camera} online", status),
            # The camera's status is retained and outlives a dead daemon (the Last Will covers
            # only the device's topic): the device's availability says whether it is current.
            "availability_topic": available,
            "payload_available": ONLINE_PAYLOAD,
            "payload_not_available": OFFLINE_PAYLOAD,
        })
        add_zones(camera, per_zone, {
            "availability": [
                {"topic": available, "payload_available": ONLINE_PAYLOAD, "payload_not_available": OFFLINE_PAYLOAD},
                {"topic": status, "payload_available": ONLINE_PAYLOAD, "payload_not_available": OFFLINE_PAYLOAD},
            ],
            "availability_mode": "all",
        })
    return messages


def _pairs(zones: Mapping[str, Sequence[str]]) -> List[Tuple[str, List[str]]]:
    """Zones in their given order, each with its classes deduplicated in order."""
    return [(zone, list(dict.fromkeys(classes))) for zone, classes in zones.items()]


__all__ = ["DiscoveryMessage", "camera_topic", "discovery_id", "discovery_messages", "status_topic", "topic_level",
           "zone_topic"]
