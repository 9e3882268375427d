"""What a reload changes, and how the running daemon applies each change.

A reload (SIGHUP) re-reads the whole configuration; every field that differs from the running
one is applied in one of these ways, decided per field in ``FIELDS``:

    pipeline   the pipeline is rebuilt from the new config (every reload rebuilds it anyway:
               ``engines activate`` relies on that to load a re-flashed bundle)
    dashboard  applied live by the outputs owner (``edgeseg.service.outputs``): a new token at
               once, a new address on a new socket opened before the old one is closed
    mqtt       the publisher reconnects with the new settings; its disk queue is handed over
    logging    ``configure_service_logging`` again (level and format are process-wide, live)
    nothing    nothing in the daemon holds it (read afresh by the ``engines`` commands)
    restart    it cannot change in a running process: the reload is refused, naming it

Only ``engines.pid_file`` needs a restart: the daemon holds the lock on that file for its whole
life (``engines activate`` tells a live daemon from a stale pid by it), and systemd's own unit
names the file, so moving it under a running process would leave the two disagreeing.

The table covers every leaf field of ``Config`` (a test walks the schema), so a field added to
the schema without a decision here fails the tests; should one slip through anyway, a change to
it refuses the reload (the safe side) rather than being silently ignored.
"""

from __future__ import annotations

import enum
import typing
from dataclasses import dataclass
from typing import Any, Final, Optional, Tuple

from pydantic import BaseModel

from edgeseg.config import Config
from edgeseg.errors import ConfigError

RESTART_HINT: Final = "systemctl restart edgeseg"


class Apply(str, enum.Enum):
    """How a changed field reaches the running daemon."""

    PIPELINE = "pipeline"
    DASHBOARD = "dashboard"
    MQTT = "mqtt"
    LOGGING = "logging"
    NOTHING = "nothing"
    RESTART = "restart"


def _each(section: str, names: str) -> Tuple[str, ...]:
    return tuple(f"{section}.{name}" if section else name for name in names.split())


_GROUPS: Final[Tuple[Tuple[Apply, Tuple[str, ...]], ...]] = (
    (Apply.NOTHING, _each("", "version")),  # always 1: a config of another version is refused when read
    (Apply.LOGGING, _each("", "log_level") + _each("service", "log_format")),
    (Apply.PIPELINE, _each("model", "path imgsz device threads precision")),
    (Apply.PIPELINE, _each("source", "uri loop reconnect_initial_s reconnect_max_s width height fps max_pixels")),
    (Apply.PIPELINE, _each("postprocess", "conf_threshold nms iou_threshold soft_sigma max_detections multi_label "
                                          "masks mask_threshold")),
    (Apply.PIPELINE, _each("postprocess.refine", "open_px close_px min_area")),
    (Apply.PIPELINE, _each("output", "sinks mask_format video_fps")),
    (Apply.PIPELINE, _each("pipeline", "inference_priority inference_workers max_frames")),
    # Read from the running pipeline's config at every tick: the rebuilt pipeline's config holds.
    (Apply.PIPELINE, _each("service", "stats_interval_s stall_s")),
    (Apply.PIPELINE, _each("adaptive", "enabled target_fps latency_budget_ms resolutions headroom hysteresis "
                                       "min_dwell_s min_dwell_frames warmup_frames ewma_alpha retry_backoff_s "
                                       "effort_levels preload history")),
    # build_on_start is decided again for the model of every reload.
    (Apply.PIPELINE, _each("engines", "build_on_start build_precisions build_workspace_mib")),
    (Apply.NOTHING, _each("engines", "root public_key")),
    (Apply.RESTART, _each("engines", "pid_file")),
    (Apply.MQTT, _each("mqtt", "uri device_id topic_prefix username password password_file protocol "
                               "poison_disconnects qos keepalive_s reconnect_min_s reconnect_max_s max_inflight "
                               "mask_format max_payload_bytes drain_timeout_s")),
    (Apply.MQTT, _each("mqtt.tls", "ca_file cert_file key_file insecure")),
    (Apply.MQTT, _each("mqtt.queue", "path max_messages policy synchronous dead_letter_max_bytes")),
    (Apply.DASHBOARD, _each("dashboard", "enabled host port token token_file stream_fps stream_max_width "
                                         "jpeg_quality events_hz max_viewers")),
)

FIELDS: Final[typing.Mapping[str, Apply]] = {path: how for how, paths in _GROUPS for path in paths}
"""Every leaf field of ``Config`` (dotted path) and how a change to it is applied."""


class RestartNeeded(ConfigError):
    """The new configuration changes a field a running daemon cannot take over."""


@dataclass(frozen=True)
class Change:
    """One changed leaf field and how it is applied (the values are never kept: some are secrets)."""

    field: str
    apply: Apply


@dataclass(frozen=True)
class ReloadPlan:
    """The fields a reload changes, in schema order, each with how it is applied."""

    changes: Tuple[Change, ...] = ()

    def fields(self, apply: Optional[Apply] = None) -> Tuple[str, ...]:
        """The changed fields (of one kind of application, when given)."""
        return tuple(c.field for c in self.changes if apply is None or c.apply is apply)

    def touches(self, apply: Apply) -> bool:
        return any(c.apply is apply for c in self.changes)

    @property
    def restart_fields(self) -> Tuple[str, ...]:
        return self.fields(Apply.RESTART)

    def refusal(self) -> Optional[str]:
        """Why this reload cannot be applied in this process, in one line; None when it can."""
        fields = self.restart_fields
        if not fields:
            return None
        named = ", ".join(f"'{f}'" for f in fields)
        if len(fields) == 1:
            return f"field {named} changed: needs a restart ({RESTART_HINT})"
        return f"fields {named} changed: need a restart ({RESTART_HINT})"

    def check(self) -> None:
        """Raise ``RestartNeeded`` (one line, naming each field) when a restart-only field changed."""
        reason = self.refusal()
        if reason is not None:
            raise RestartNeeded(reason)

    def describe(self) -> str:
        """The changes for a log line, grouped by how they are applied: field names, never values."""
        if not self.changes:
            return "no field changed"
        parts = []
        for apply in Apply:
            fields = self.fields(apply)
            if fields:
                parts.append(f"{apply.value}: {', '.join(fields)}")
        return "; ".join(parts)


def _submodel(annotation: Any) -> Optional[typing.Type[BaseModel]]:
    """The model class a field holds (also through Optional[...]), or None for a leaf."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    models = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
    return models[0] if len(models) == 1 else None


def leaf_fields(model: typing.Type[BaseModel] = Config, prefix: str = "") -> Tuple[str, ...]:
    """Every leaf field of ``model`` as a dotted path, in schema order (sub-models walked into)."""
    out: typing.List[str] = []
    for name, info in model.model_fields.items():
        sub = _submodel(info.annotation)
        if sub is None:
            out.append(prefix + name)
        else:
            out.extend(leaf_fields(sub, f"{prefix}{name}."))
    return tuple(out)


class _Absent:
    """The value of a field under an unset optional section (``mqtt.tls`` null): unlike any value."""

    def __repr__(self) -> str:
        return "<absent>"


_ABSENT: Final = _Absent()


def field_value(config: BaseModel, path: str) -> Any:
    """The value at a dotted path; ``_ABSENT`` below an optional section that is not set."""
    value: Any = config
    for name in path.split("."):
        if value is None or value is _ABSENT:
            return _ABSENT
        value = getattr(value, name)
    return value


def changed_fields(running: BaseModel, new: BaseModel, prefix: str = "") -> Tuple[str, ...]:
    """The leaf fields (dotted, after ``prefix``) whose values differ between two records of one
    model. Secrets compare by value (pydantic's SecretStr does); only names are returned."""
    if type(running) is not type(new):
        raise TypeError(f"cannot compare a {type(running).__name__} with a {type(new).__name__}")
    return tuple(prefix + path for path in leaf_fields(type(running))
                 if field_value(running, path) != field_value(new, path))


def plan_reload(running: Config, new: Config) -> ReloadPlan:
    """Compare the running configuration with the re-read one: what changed, and how it applies.

    A field missing from ``FIELDS`` is classed as needing a restart.
    """
    return ReloadPlan(tuple(Change(path, FIELDS.get(path, Apply.RESTART)) for path in changed_fields(running, new)))


__all__ = ["FIELDS", "RESTART_HINT", "Apply", "Change", "ReloadPlan", "RestartNeeded", "changed_fields",
           "field_value", "leaf_fields", "plan_reload"]
