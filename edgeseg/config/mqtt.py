"""The ``mqtt`` section of the configuration: broker, identity, TLS, the on-disk queue, payloads.

Same rules as the rest of the schema (``edgeseg/config/schema.py``): unknown keys are refused,
every field is described, bounded and defaulted, and the model is frozen. An unset ``uri``
means MQTT is off. What can only be checked on the device (TLS files exist, the password file
is readable, the queue directory is writable) is checked when the sink is built
(``edgeseg.sinks.mqtt.MqttSink``), which raises a one-line ``SinkError``.

    mqtt:
      uri: mqtts://broker.lan:8883
      device_id: gate-cam-1          # default: this host's name, made topic-safe
      username: gate-cam-1
      password_file: /etc/edgeseg/mqtt.password
      tls: {ca_file: /etc/edgeseg/ca.pem}
      queue: {max_messages: 100000, policy: drop_oldest}

Topics: ``<topic_prefix>/<device_id>/detections`` (frame results, QoS ``qos``, through the disk
queue; ``detections: false`` turns them off), ``.../available`` (``online``/``offline``, retained,
with ``offline`` as Last Will) and ``.../stats`` (the daemon's periodic snapshot, QoS 0, not
queued). With tracking on: ``.../events`` (one JSON event per message, QoS 1, queued),
``.../events/<event_id>/snapshot`` (its JPEG, with ``publish_snapshots``) and
``.../zones/<zone>/<class>`` (the count, retained, queued). ``homeassistant`` adds Home
Assistant MQTT discovery configs for those counts (``edgeseg.sinks.homeassistant``).

Several cameras (``camera_topics``, resolved by ``Config.uses_camera_topics``): each camera's
detections, events, snapshots and counts move one level down, to
``<topic_prefix>/<device_id>/<camera>/...``, and ``.../<camera>/status`` says ``online`` or
``offline`` (retained) as its stream comes and goes; ``available`` and ``stats`` stay the device's.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any, Final, Literal, NamedTuple, Optional
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from edgeseg.config.errors import parse_section
from edgeseg.sources.uri import mask_credentials
from edgeseg.strict import StrictModel

SCHEMES: Final = {"mqtt": 1883, "mqtts": 8883}
"""URI scheme to default port; ``mqtts`` turns TLS on."""
DEVICE_ID_MAX = 64
DEVICE_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
"""One topic level: no ``/``, no wildcards (``+`` ``#``), nothing a shell or a broker ACL trips on."""
TOPIC_PREFIX_PATTERN: Final = r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$"
"""One or more topic levels, without leading, trailing or doubled ``/`` and without wildcards."""
FALLBACK_DEVICE_ID: Final = "edgeseg"
MQTT_MAX_PAYLOAD: Final = 268_435_455
"""The largest payload the MQTT protocol can carry (its remaining-length limit)."""
PROTOCOLS: Final = {"5": 5, "3.1.1": 4}
"""``mqtt.protocol`` to paho's protocol constant (``MQTTv5`` = 5, ``MQTTv311`` = 4)."""
DEFAULT_POISON_DISCONNECTS: Final = 3
DEFAULT_DEAD_LETTER_BYTES: Final = 16 * 1024 * 1024
DEFAULT_MAX_PAYLOAD: Final = 131_072
"""128 KiB: what AWS IoT Core accepts, and room for a hundred RLE masks of a 1080p frame."""
QUEUE_FILE_PREFIX: Final = "mqtt-queue"


def sanitise_device_id(name: str) -> str:
    """``name`` as one topic level: other characters become ``_``, at most 64 characters."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", name.strip())[:DEVICE_ID_MAX].strip("_.-")
    return cleaned or FALLBACK_DEVICE_ID


def default_device_id() -> str:
    """This host's name (its first label), made topic-safe."""
    return sanitise_device_id(socket.gethostname().split(".")[0])


class BrokerAddress(NamedTuple):
    """Where the broker listens, parsed from ``mqtt://host[:port]`` or ``mqtts://host[:port]``."""

    scheme: str
    host: str
    port: int

    @property
    def tls(self) -> bool:
        return self.scheme == "mqtts"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_broker_uri(uri: str) -> BrokerAddress:
    """Parse a broker URI, or raise ``ValueError`` saying what is wrong with it."""
    expected = "expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"
    shown = mask_credentials(uri)  # the messages below quote the URI; its password stays out
    try:
        parts = urlsplit(uri.strip())
        port = parts.port
    except ValueError as exc:  # a non-numeric or out-of-range port
        raise ValueError(f"broker URI {shown!r}: {exc}; {expected}") from None
    if parts.scheme not in SCHEMES:
        raise ValueError(f"broker URI {shown!r}: unknown scheme {parts.scheme!r}; {expected}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("broker URI: put credentials in mqtt.username and mqtt.password_file, "
                         "not in the URI (URIs are logged)")
    if not parts.hostname:
        raise ValueError(f"broker URI {shown!r}: no host; {expected}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"broker URI {shown!r}: unexpected path, query or fragment; {expected}")
    if port == 0:
        raise ValueError(f"broker URI {shown!r}: port 0; {expected}")
    return BrokerAddress(parts.scheme, parts.hostname, port or SCHEMES[parts.scheme])


class TlsConfig(StrictModel):
    ca_file: Optional[str] = Field(
        None, min_length=1, description="CA bundle (PEM) the broker's certificate must chain to; null = system CAs"
    )
    cert_file: Optional[str] = Field(None, min_length=1, description="client certificate (PEM), for mutual TLS")
    key_file: Optional[str] = Field(None, min_length=1, description="private key (PEM) of cert_file")
    insecure: bool = Field(
        False, description="skip the broker host-name check (the chain is still verified); for brokers reached by IP"
    )

    @model_validator(mode="after")
    def _key_needs_cert(self) -> TlsConfig:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("tls.key_file is set but tls.cert_file is not")
        return self


class QueueConfig(StrictModel):
    path: Optional[str] = Field(
        None, min_length=1,
        description="SQLite file holding unsent messages; null = $STATE_DIRECTORY (systemd) or "
        "~/.local/state/edgeseg, file mqtt-queue-<device_id>.db",
    )
    max_messages: int = Field(
        100_000, ge=10, le=10_000_000, description="messages kept on disk while the broker is away; then `policy`"
    )
    policy: Literal["drop_oldest", "drop_newest"] = Field(
        "drop_oldest", description="which message goes when the queue is full (counted as dropped)"
    )
    synchronous: Literal["normal", "full"] = Field(
        "normal",
        description="normal: a queued message survives a killed process, not a power cut (fast); "
        "full: fsync per message, survives power loss too (slow on eMMC/SD)",
    )
    dead_letter_max_bytes: int = Field(
        DEFAULT_DEAD_LETTER_BYTES, ge=64 * 1024, le=1024 * 1024 * 1024,
        description="messages the broker cannot take go to <queue file>.dead-letter.jsonl; at this size it "
        "is rotated to .1 (so at most about twice this on disk)",
    )


class HomeAssistantConfig(StrictModel):
    enabled: bool = Field(
        False, description="publish Home Assistant MQTT discovery configs (retained) for an occupancy binary sensor "
        "and a count sensor per zone and class, and the camera's connectivity, on every connect",
    )
    discovery_prefix: str = Field(
        "homeassistant", min_length=1, max_length=128, pattern=TOPIC_PREFIX_PATTERN,
        description="Home Assistant's discovery prefix (its MQTT integration setting): configs go to "
        "<discovery_prefix>/<component>/<node>/<object>/config",
    )
    status_topic: Optional[str] = Field(
        None, min_length=1, max_length=256, pattern=TOPIC_PREFIX_PATTERN,
        description="Home Assistant's birth topic: its 'online' there republishes the configs; null = "
        "<discovery_prefix>/status",
    )
    device_name: Optional[str] = Field(
        None, min_length=1, max_length=128,
        description="the device's name in Home Assistant; null = 'edgeseg <device_id>'",
    )

    def birth_topic(self) -> str:
        """Where Home Assistant announces ``online`` after it (re)starts."""
        return self.status_topic if self.status_topic is not None else f"{self.discovery_prefix}/status"


class MqttConfig(StrictModel):
    uri: Optional[str] = Field(
        None, min_length=1, max_length=2048, description="broker, mqtt://HOST[:PORT] or mqtts://HOST[:PORT]; null = off"
    )
    device_id: str = Field(
        default_factory=default_device_id, min_length=1, max_length=DEVICE_ID_MAX, pattern=DEVICE_ID_PATTERN,
        description="this device's topic level (letters, digits, _ . -); default: the host name, made topic-safe",
    )
    topic_prefix: str = Field(
        "edgeseg", min_length=1, max_length=128, pattern=TOPIC_PREFIX_PATTERN,
        description="first topic level(s): <topic_prefix>/<device_id>/{detections,available,stats}",
    )
    username: Optional[str] = Field(None, min_length=1, max_length=256, description="broker user name")
    password: Optional[SecretStr] = Field(None, description="broker password (prefer password_file)")
    password_file: Optional[str] = Field(
        None, min_length=1, description="file whose first line is the broker password (keep it mode 0600)"
    )
    tls: Optional[TlsConfig] = Field(None, description="TLS files and checks; needs an mqtts:// uri")
    protocol: Literal["5", "3.1.1"] = Field(
        "5", description="MQTT version; 5 lets the broker announce its maximum packet size in CONNACK, so "
        "oversized messages are never sent (3.1.1 brokers only disconnect; see poison_disconnects)",
    )
    poison_disconnects: int = Field(
        DEFAULT_POISON_DISCONNECTS, ge=1, le=100,
        description="a message in flight (sent one at a time) at this many disconnects in a row is set aside "
        "in the dead-letter file, so one message the broker refuses never blocks the rest",
    )
    qos: int = Field(1, ge=0, le=2, description="QoS of detections; 1 = at least once (the queue's guarantee)")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keep-alive; a silent broker is noticed after 1.5x")
    reconnect_min_s: int = Field(1, ge=1, le=60, description="first reconnect delay; doubles per failure")
    reconnect_max_s: int = Field(60, ge=1, le=3600, description="longest reconnect delay")
    max_inflight: int = Field(
        100, ge=1, le=1000, description="messages handed to the broker and not yet acknowledged, at most"
    )
    queue: QueueConfig = Field(default_factory=QueueConfig, description="the on-disk store-and-forward queue")
    mask_format: Literal["rle", "polygon", "none"] = Field("rle", description="mask encoding in detection payloads")
    max_payload_bytes: int = Field(
        DEFAULT_MAX_PAYLOAD, ge=1024, le=MQTT_MAX_PAYLOAD,
        description="a larger payload has its masks degraded (rle -> polygon -> none); still larger: set aside "
        "in the dead-letter file. A smaller maximum packet size announced by the broker lowers it",
    )
    drain_timeout_s: float = Field(
        5.0, ge=0.0, le=60.0, description="on close, wait this long for the queue to empty (the rest stays on disk)"
    )
    detections: bool = Field(
        True, description="publish every frame's result on <topic_prefix>/<device_id>/detections; false when only "
        "events and zone counts are wanted",
    )
    events: bool = Field(
        True, description="with tracking on: publish each event message on <topic_prefix>/<device_id>/events "
        "(QoS at least 1, through the disk queue; a full queue drops detections and snapshots first)",
    )
    publish_snapshots: bool = Field(
        False, description="with events: publish an event's snapshot JPEG on .../events/<event_id>/snapshot "
        "(QoS at least 1, not retained); one over max_payload_bytes is skipped and counted",
    )
    occupancy: bool = Field(
        True, description="with zones: publish each zone's count per class on .../zones/<zone>/<class> (retained, "
        "through the disk queue) when it changes, and every count at start",
    )
    homeassistant: HomeAssistantConfig = Field(
        default_factory=HomeAssistantConfig, description="Home Assistant MQTT discovery (off by default)"
    )
    camera_topics: Literal["auto", "on", "off"] = Field(
        "auto", description="one topic level per camera: <topic_prefix>/<device_id>/<camera>/{detections,events,"
        "zones,status}, with a retained online/offline status per camera; auto = on when the config has a "
        "cameras: list or runs more than one camera; off = every camera on the device's topics",
    )

    # Cross-field checks are field validators on the later field, never a model validator: the
    # error of a model validator carries the whole section as its input, password included, and
    # error messages end up in logs.

    @field_validator("uri")
    @classmethod
    def _valid_uri(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            parse_broker_uri(value)
        return value

    @field_validator("password_file")
    @classmethod
    def _password_needs_user(cls, value: Optional[str], info: ValidationInfo) -> Optional[str]:
        password = info.data.get("password")
        if password is not None and value is not None:
            raise ValueError("set password or password_file, not both")
        if (password is not None or value is not None) and info.data.get("username") is None:
            raise ValueError("a password needs a username")
        return value

    @field_validator("tls")
    @classmethod
    def _tls_needs_mqtts(cls, value: Optional[TlsConfig], info: ValidationInfo) -> Optional[TlsConfig]:
        uri = info.data.get("uri")
        if value is not None and uri is not None and not parse_broker_uri(uri).tls:
            raise ValueError("tls settings need an mqtts:// uri")
        return value

    @field_validator("reconnect_max_s")
    @classmethod
    def _backoff_order(cls, value: int, info: ValidationInfo) -> int:
        low = info.data.get("reconnect_min_s")
        if low is not None and value < low:
            raise ValueError(f"must be >= reconnect_min_s ({low})")
        return value

    @field_validator("homeassistant")
    @classmethod
    def _discovery_needs_counts(cls, value: HomeAssistantConfig, info: ValidationInfo) -> HomeAssistantConfig:
        if value.enabled and info.data.get("occupancy") is False:
            raise ValueError("Home Assistant discovery needs mqtt.occupancy: true (its sensors read the zone counts)")
        return value

    @property
    def enabled(self) -> bool:
        return self.uri is not None

    @property
    def broker(self) -> BrokerAddress:
        """The parsed ``uri``; ``ValueError`` when MQTT is off."""
        if self.uri is None:
            raise ValueError("mqtt.uri is not set")
        return parse_broker_uri(self.uri)

    def topic(self, leaf: str) -> str:
        """``<topic_prefix>/<device_id>/<leaf>``."""
        return f"{self.topic_prefix}/{self.device_id}/{leaf}"

    def queue_path(self) -> Path:
        """The queue file: ``queue.path``, or the state directory's ``mqtt-queue-<device_id>.db``."""
        if self.queue.path is not None:
            return Path(self.queue.path).expanduser()
        state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        folder = Path(state) if state else Path.home() / ".local" / "state" / "edgeseg"
        return folder / f"{QUEUE_FILE_PREFIX}-{self.device_id}.db"

    def dead_letter_path(self) -> Path:
        """Where messages that cannot be sent are set aside: next to the queue file."""
        queue = self.queue_path()
        return queue.with_name(f"{queue.name}.dead-letter.jsonl")


def parse_mqtt_config(raw: Any, origin: str = "mqtt") -> MqttConfig:
    """Validate the ``mqtt`` section alone, or raise a one-line ``ConfigError``."""
    return parse_section(MqttConfig, raw, origin)
