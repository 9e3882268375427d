"""The daemon's persistent outputs, and how a reload changes them without a gap or a loss.

The dashboard (its HTTP server and the feed sink behind it) and the MQTT publisher outlive the
pipeline: a reload rebuilds the pipeline but must not take the device offline for subscribers,
drop the dashboard's viewers for nothing, or lose a queued message. ``PersistentOutputs`` owns
them and applies a changed ``dashboard:`` or ``mqtt:`` section in two phases:

    prepare(new)  everything that can fail, before anything running is touched: the token read
                  (token_file too, even in an unchanged section: a rotated file is applied), a
                  new listening socket bound for a new address, the new MQTT publisher built
                  (password and TLS files read) and its queue file opened when it moves
                  -> PreparedOutputs, or one line (EdgesegError) with all it opened released
    commit(p)     the swap, nothing left to fail on: a new token is in force for the next
                  request (the old one gets 401, its open streams end); a new address is served
                  before the old one closes; the old publisher stops sending, hands its open
                  queue to the new one (moved to the new file when the file changes), and the
                  new one connects: nothing queued is lost, nothing is left in flight twice
    abort(p)      releases what prepare opened; the running outputs were never touched

The pipeline feeds two relays (``sinks``) that stay the same for the owner's whole life and
point at the current feed and publisher (or at nothing while one is off). So a pipeline can be
built before or after a commit, and the publisher swap happens under the relay's lock: a write
waits for the swap instead of reaching a publisher that has handed its queue over. The daemon's
reload is then

    plan_reload (refuse restart-only fields) -> open the model -> outputs.prepare(new)
    -> stop the old pipeline -> start the new one on outputs.sinks -> outputs.commit(prepared)

and on any failure after prepare: ``outputs.abort(prepared)`` and the old pipeline again: the
outputs were not touched, so the running configuration is kept whole (a reload never applies
half). Only the main thread calls prepare, commit, abort, open and close.

An unchanged ``mqtt:`` section (and unchanged password and TLS files) keeps the very same
publisher and broker session. A changed one reconnects; when the availability topic stays the
same, no ``offline`` is published in between (the new client announces ``online`` again).
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import typing
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, List, Literal, Optional

from edgeseg.config import Config
from edgeseg.config.dashboard import DashboardConfig
from edgeseg.config.mqtt import MqttConfig
from edgeseg.dashboard.controls import Controls
from edgeseg.dashboard.feed import DashboardSink
from edgeseg.dashboard.server import (
    CamerasFn,
    DashboardError,
    DashboardServer,
    MetricsFn,
    StatsFn,
    SwitchesFn,
    SystemFn,
)
from edgeseg.errors import EdgesegError, SinkError
from edgeseg.service.reload_plan import changed_fields
from edgeseg.sinks.base import Sink
from edgeseg.sinks.mqtt_handover import move_queued, remove_queue_file
from edgeseg.sources.uri import mask_credentials
from edgeseg.structures import FrameResult

if TYPE_CHECKING:
    from edgeseg.analytics.types import Event
    from edgeseg.sinks.mqtt import MqttSink

log = logging.getLogger("edgeseg.serve")

ZoneClasses = typing.Mapping[str, typing.Sequence[str]]  # zone name -> the class names it counts
CameraZones = typing.Mapping[str, ZoneClasses]  # camera name -> its zones
MqttFactory = typing.Callable[..., "MqttSink"]  # evaluated at import: 3.8's form
"""Builds an unstarted publisher for an ``mqtt`` section: ``factory(config, zones, camera_topics=...,
camera_zones=...)`` (``MqttSink(config, start=False, ...)``)."""

DashboardStep = Literal["none", "stop", "retune", "new", "rebind"]
MqttStep = Literal["none", "keep", "stop", "start", "replace"]


def unstarted_mqtt_sink(config: MqttConfig, zones: ZoneClasses, camera_topics: bool = False,
                        camera_zones: Optional[CameraZones] = None) -> MqttSink:
    """The default ``MqttFactory``: everything checked and built, no queue opened, not connected.
    ``zones``: the zone counts it announces to Home Assistant (when discovery is on);
    ``camera_topics``: a topic level per camera, ``camera_zones`` the zones of each camera then."""
    from edgeseg.sinks.mqtt import MqttSink  # paho is imported only where MQTT is configured

    return MqttSink(config, start=False, zones=zones, camera_topics=camera_topics, camera_zones=camera_zones)


def zone_classes(config: Config, class_names: typing.Sequence[str]) -> typing.Dict[str, typing.List[str]]:
    """zone -> the classes it counts (its filter, or every class of the model), while tracking."""
    if not config.tracker.enabled:
        return {}
    return {z.name: list(z.counted_classes(class_names)) for z in config.zones}


def camera_zone_classes(config: Config, class_names: typing.Sequence[str]) -> typing.Dict[str, typing.Dict[
        str, typing.List[str]]]:
    """camera -> its zones (as ``zone_classes``), every camera of the config listed (no zones: {})."""
    tracking = config.tracker.enabled
    return {spec.name: {z.name: list(z.counted_classes(class_names)) for z in spec.zones} if tracking else {}
            for spec in config.camera_specs()}


class Relay(Sink):
    """A sink that stays in the pipeline and forwards to the output of the moment, or drops.

    ``close`` does nothing: the owner closes what a relay points at (a relay outlives every
    pipeline, which may close its sinks).
    """

    def __init__(self, name: str):
        self.name = name
        self._lock = threading.RLock()
        self._target: Optional[Sink] = None
        self._statuses: typing.Dict[str, bool] = {}  # camera -> its latest status

    @property
    def target(self) -> Optional[Sink]:
        return self._target

    def write(self, result: FrameResult) -> None:
        with self._lock:
            target = self._target
            if target is not None:
                target.write(result)

    def write_events(self, events: Sequence[Event]) -> None:
        with self._lock:
            target = self._target
            if target is not None:
                target.write_events(events)

    def write_status(self, camera: str, online: bool) -> None:
        """Forward a camera's status, and remember it: a target swapped in later is told every
        camera's latest status (the pipeline says it only when it changes)."""
        with self._lock:
            self._statuses[camera] = online
            target = self._target
            if target is not None:
                target.write_status(camera, online)

    def swap(self, target: Optional[Sink]) -> Optional[Sink]:
        """Point at ``target`` (None: drop); the previous target. Waits for a write in progress.
        A new target is told the cameras' latest statuses (``write_status``)."""
        with self._lock:
            previous, self._target = self._target, target
            if target is not None and target is not previous:
                for camera, online in self._statuses.items():
                    try:
                        target.write_status(camera, online)
                    except SinkError as exc:
                        log.error("%s: cannot pass on the status of camera %s: %s", self.name, camera, exc)
            return previous

    @contextmanager
    def held(self) -> Iterator[None]:
        """No write passes while inside (a swap that takes several steps)."""
        with self._lock:
            yield

    def close(self) -> None:
        """Nothing to release here (see the class docstring)."""

    def __repr__(self) -> str:
        return f"Relay({self.name!r} -> {type(self._target).__name__ if self._target else None})"


@dataclass
class PreparedOutputs:
    """What ``commit`` will apply, with what ``prepare`` opened for it (``abort`` releases it).

    Attributes:
        config: the configuration being applied.
        changes: what commit applies, one phrase each, for the log (field names, never values).
        dashboard: none (off, stays off), stop, retune (same address: token and settings into
            the running server), new (a new server, bound), rebind (a new address overlapping
            the old one on the same port: bound at commit, after the old one stops).
        token: the dashboard token read now.
        server: the new dashboard server (new, rebind).
        feed: the new feed sink (the dashboard turned on).
        mqtt: none, keep (the same publisher), stop, start, replace.
        publisher: the new, unstarted publisher (start, replace).
    """

    config: Config
    changes: List[str] = field(default_factory=list)
    dashboard: DashboardStep = "none"
    token: Optional[str] = None
    server: Optional[DashboardServer] = None
    feed: Optional[DashboardSink] = None
    mqtt: MqttStep = "none"
    publisher: Optional[MqttSink] = None
    state: Literal["prepared", "committed", "aborted"] = "prepared"


class PersistentOutputs:
    """Owns the dashboard and the MQTT publisher across reloads (see the module docstring).

    Args:
        controls, stats, metrics, switches, system: what the dashboard server shows and drives
            (``DashboardServer``'s arguments of the same names; the daemon's methods).
        mqtt_factory: builds an unstarted publisher for an ``mqtt`` section.
    """

    def __init__(
        self,
        controls: Controls,
        stats: StatsFn,
        metrics: Optional[MetricsFn] = None,
        switches: Optional[SwitchesFn] = None,
        system: Optional[SystemFn] = None,
        mqtt_factory: MqttFactory = unstarted_mqtt_sink,
        cameras: Optional[CamerasFn] = None,
    ):
        self._controls = controls
        self._stats = stats
        self._cameras = cameras
        self._metrics = metrics
        self._switches = switches
        self._system = system
        self._mqtt_factory = mqtt_factory
        self._mqtt_relay = Relay("mqtt")
        self._feed_relay = Relay("dashboard")
        self._config: Optional[Config] = None
        self._server: Optional[DashboardServer] = None
        self._feed: Optional[DashboardSink] = None
        self._mqtt: Optional[MqttSink] = None
        self._closed = False

    # -- what the daemon reads -----------------------------------------------------------------

    @property
    def sinks(self) -> List[Sink]:
        """The sinks every pipeline feeds: the same two relays for the owner's whole life."""
        return [self._mqtt_relay, self._feed_relay]

    @property
    def config(self) -> Optional[Config]:
        """The configuration last committed (None before ``open``)."""
        return self._config

    @property
    def dashboard(self) -> Optional[DashboardServer]:
        return self._server

    @property
    def feed(self) -> Optional[DashboardSink]:
        return self._feed

    @property
    def mqtt(self) -> Optional[MqttSink]:
        return self._mqtt

    def mqtt_status(self) -> Optional[typing.Dict[str, Any]]:
        """The publisher's counters for the daemon's stats (None while MQTT is off)."""
        return self._mqtt.status() if self._mqtt is not None else None

    def publish_stats(self, stats: Mapping[str, Any]) -> bool:
        """Publish the daemon's stats on the stats topic; False while MQTT is off or disconnected."""
        return self._mqtt.publish_stats(stats) if self._mqtt is not None else False

    # -- lifecycle -----------------------------------------------------------------------------

    def open(self, config: Config, class_names: typing.Sequence[str] = ()) -> None:
        """Start the outputs ``config`` asks for; one-line ``EdgesegError`` when one cannot start.
        ``class_names``: the model's, for the zone counts a zone without a class filter announces."""
        self.commit(self.prepare(config, class_names))

    def close(self) -> None:
        """Stop the dashboard and close the publisher (its queue drained up to drain_timeout_s,
        the rest kept on disk). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._feed_relay.swap(None)
        self._mqtt_relay.swap(None)
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._feed is not None:
            self._feed.close()
            self._feed = None
        if self._mqtt is not None:
            self._mqtt.close()
            self._mqtt = None

    # -- reload, phase one ---------------------------------------------------------------------

    def prepare(self, config: Config, class_names: typing.Sequence[str] = ()) -> PreparedOutputs:
        """Check and open everything ``config`` needs, touching nothing that runs.

        Raises ``EdgesegError`` (one line naming the field) with everything it opened released:
        ``ConfigError`` for a token file that cannot be read, ``DashboardError`` for an address
        that cannot be listened on (a port taken), ``SinkError`` for a password or TLS file that
        cannot be read or a queue file that cannot be opened.
        """
        if self._closed:
            raise EdgesegError("outputs: closed")
        prepared = PreparedOutputs(config)
        try:
            self._prepare_dashboard(config.dashboard, prepared)
            self._prepare_mqtt(config, class_names, prepared)
        except BaseException:
            self._release(prepared)
            raise
        return prepared

    def _prepare_dashboard(self, new: DashboardConfig, p: PreparedOutputs) -> None:
        running = self._server
        if not new.enabled:
            if running is not None:
                p.dashboard = "stop"
                p.changes.append(f"dashboard: off (was on {running.url})")
            return
        token = new.resolve_token()  # a token_file that cannot be read: ConfigError, one line
        if not new.loopback and not token:
            raise DashboardError(f"field 'dashboard.token': host {new.host!r} is reachable from other machines: "
                                 "set dashboard.token or dashboard.token_file")
        p.token = token
        if running is not None and (new.host, new.port) == (running.config.host, running.config.port):
            p.dashboard = "retune"
            fields = changed_fields(running.config, new, "dashboard.")
            if token != running.token and not any(f in fields for f in ("dashboard.token", "dashboard.token_file")):
                fields = (*fields, "the token in dashboard.token_file")
            if fields:
                p.changes.append(f"dashboard: applied {', '.join(fields)}"
                                 + ("; the previous token is refused from now on" if token != running.token else ""))
            return
        if self._feed is None:
            p.feed = DashboardSink.from_config(new)
        feed = p.feed or self._feed
        assert feed is not None
        server = DashboardServer(new, feed, self._controls, self._stats, metrics=self._metrics,
                                 switches=self._switches, system=self._system, token=token, cameras=self._cameras)
        try:
            server.bind()
            p.dashboard = "new"
        except DashboardError as exc:
            # 127.0.0.1:8080 -> 0.0.0.0:8080: the new address overlaps our own socket, which
            # must close first. The address itself is checked now; the port is ours.
            if running is None or exc.errno != errno.EADDRINUSE or new.port == 0 or new.port != running.port:
                raise
            _check_address(new.host)
            p.dashboard = "rebind"
        p.server = server
        where = "" if running is None else f" (was {running.url})"
        p.changes.append(f"dashboard: {'on' if running is None else 'moved to'} {server.url}{where}")

    def _prepare_mqtt(self, config: Config, class_names: typing.Sequence[str], p: PreparedOutputs) -> None:
        new = config.mqtt
        running = self._mqtt
        if not new.enabled:
            if running is not None:
                p.mqtt = "stop"
                p.changes.append(f"mqtt: off (was publishing to {running.broker})")
            return
        per_camera = config.uses_camera_topics()
        candidate = self._mqtt_factory(  # password and TLS files read and checked: SinkError
            new, zone_classes(config, class_names), camera_topics=per_camera,
            camera_zones=camera_zone_classes(config, class_names) if per_camera else None)
        try:
            if running is not None:
                fields = changed_fields(running.config, new, "mqtt.")
                # What discovery announces; a camera added or removed alone keeps the session
                # unless Home Assistant is told about cameras.
                same_zones = (dict(candidate.zones) == dict(running.zones)
                              and candidate.camera_topics == running.camera_topics
                              and (not new.homeassistant.enabled or candidate.camera_zones == running.camera_zones))
                if not fields and candidate.credentials_digest == running.credentials_digest and same_zones:
                    candidate.close()  # nothing to apply: the same publisher and session go on
                    p.mqtt = "keep"
                    return
            if running is None or new.queue_path() != running.config.queue_path():
                candidate.open_queue()  # taken by another process, or not writable: SinkError
        except BaseException:
            candidate.close()
            raise
        p.publisher = candidate
        broker = mask_credentials(str(new.broker))
        if running is None:
            p.mqtt = "start"
            p.changes.append(f"mqtt: publishing to {broker} as {new.device_id}")
        else:
            p.mqtt = "replace"
            why = ", ".join(fields) if fields else "the password or TLS files, the zones announced, or the cameras"
            p.changes.append(f"mqtt: reconnecting to {broker} as {new.device_id} (changed: {why})")

    # -- reload, phase two ---------------------------------------------------------------------

    def commit(self, prepared: PreparedOutputs) -> None:
        """Apply what ``prepare`` readied. Nothing checked there can fail here; something that
        still does (the system under us) is logged, and the outputs stay consistent."""
        if prepared.state != "prepared":
            raise ValueError(f"outputs: cannot commit a {prepared.state} preparation")
        prepared.state = "committed"
        self._commit_dashboard(prepared)
        self._commit_mqtt(prepared)
        self._config = prepared.config
        if self._feed is not None:  # the zones and lines drawn on the stream, as configured now
            try:
                self._feed.set_overlay(cameras=prepared.config.camera_specs())
            except ValueError as exc:  # validated with the config: a shape the drawing cannot take
                log.error("dashboard: %s; zones and lines are not drawn", exc)
        for change in prepared.changes:
            log.info("%s", change)

    def _commit_dashboard(self, p: PreparedOutputs) -> None:
        new = p.config.dashboard
        if p.dashboard == "stop":
            self._feed_relay.swap(None)
            if self._server is not None:
                self._server.stop()
            if self._feed is not None:
                self._feed.close()  # ends what viewers were left
            self._server = self._feed = None
        elif p.dashboard == "retune":
            assert self._server is not None and self._feed is not None
            self._feed.retune(new.jpeg_quality, new.stream_max_width)
            if self._server.reconfigure(new, p.token):
                log.info("dashboard: token replaced; requests and streams with the previous one are refused")
        elif p.dashboard in ("new", "rebind"):
            assert p.server is not None
            old = self._server
            if p.dashboard == "rebind" and old is not None:
                old.stop()
            try:
                p.server.start()  # bound in prepare for "new": serving cannot fail
            except DashboardError as exc:  # "rebind" only: the port was taken in the instant between
                log.error("dashboard: %s; serving the previous address again", exc)
                self._restore_dashboard(old)
                return
            if p.feed is not None:
                self._feed = p.feed
            assert self._feed is not None
            self._feed.retune(new.jpeg_quality, new.stream_max_width)
            self._server = p.server
            self._feed_relay.swap(self._feed)
            if p.dashboard == "new" and old is not None:
                old.stop()  # after the new one serves

    def _restore_dashboard(self, old: Optional[DashboardServer]) -> None:
        self._server = None
        if old is None or self._feed is None:
            return
        again = DashboardServer(old.config, self._feed, self._controls, self._stats, metrics=self._metrics,
                                switches=self._switches, system=self._system, token=old.token, cameras=self._cameras)
        try:
            again.start()
            self._server = again
        except DashboardError as exc:
            log.error("dashboard: %s; the dashboard is off until the next reload", exc)

    def _commit_mqtt(self, p: PreparedOutputs) -> None:
        old, new = self._mqtt, p.publisher
        if p.mqtt == "stop":
            self._mqtt_relay.swap(None)
            self._mqtt = None
            if old is not None:
                old.close()
        elif p.mqtt == "start":
            assert new is not None
            new.start()
            self._mqtt = new
            self._mqtt_relay.swap(new)
        elif p.mqtt == "replace":
            assert old is not None and new is not None
            self._replace_publisher(old, new)

    def _replace_publisher(self, old: MqttSink, new: MqttSink) -> None:
        """Hand the queue from ``old`` to ``new``; writes wait meanwhile (the relay is held)."""
        old.hold(old.config.drain_timeout_s)  # in-flight acks come back: fewer re-sends
        with self._mqtt_relay.held():
            moved = old.available_topic != new.available_topic
            # Each camera's retained status goes offline where the new publisher will not restate
            # it (other topics, or no camera topics); the relay tells the new one the statuses.
            queue = old.handover(offline=moved, statuses_offline=moved or not new.camera_topics)
            topics = {old.topic: new.topic} if old.topic != new.topic else {}
            try:
                if new.has_queue:  # another file: move everything over, then drop the empty file
                    try:
                        move_queued(queue, new.queue, topics)
                    except SinkError as exc:
                        log.error("mqtt: cannot move the queued messages to %s: %s", new.queue.path, exc)
                    left = queue.depth
                    queue.close()
                    if left:
                        log.error("mqtt: %d queued messages stay in %s (not sent until a publisher uses that file "
                                  "again)", left, queue.path)
                    else:
                        remove_queue_file(queue.path)
                    new.start()
                else:
                    if topics:
                        try:
                            move_queued(queue, queue, topics)
                        except SinkError as exc:
                            log.error("mqtt: cannot re-address the queued messages to %s: %s", new.topic, exc)
                    new.start(queue=queue)
            finally:
                self._mqtt = new
                self._mqtt_relay.swap(new)

    # -- reload, on failure --------------------------------------------------------------------

    def abort(self, prepared: PreparedOutputs) -> None:
        """Release what ``prepare`` opened; the running outputs stay as they are. Idempotent."""
        if prepared.state == "committed":
            raise ValueError("outputs: cannot abort a committed preparation")
        if prepared.state == "prepared":
            prepared.state = "aborted"
            self._release(prepared)

    def _release(self, p: PreparedOutputs) -> None:
        if p.server is not None and p.server is not self._server:
            p.server.stop()
        if p.feed is not None and p.feed is not self._feed:
            p.feed.close()
        if p.publisher is not None and p.publisher is not self._mqtt:
            p.publisher.close()


def _check_address(host: str) -> None:
    """``DashboardError`` (one line) when this machine cannot listen on ``host`` at all."""
    address = host.strip("[]")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((address, 0))
    except (OSError, OverflowError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise DashboardError(f"field 'dashboard.host': cannot listen on {host} ({reason})") from None


__all__ = ["MqttFactory", "PersistentOutputs", "PreparedOutputs", "Relay", "unstarted_mqtt_sink"]
