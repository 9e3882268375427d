"""What a reload changes, and how the running daemon applies each change.

A reload (SIGHUP) re-reads the whole configuration; every field that differs from the running
one is applied in one of these ways, decided per top-level section in ``SECTIONS`` and per
field in ``EXCEPTIONS`` (``FIELDS`` is the resulting table over every leaf field):

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

A field added to an existing section applies as its section does (the publisher, the dashboard
and the pipeline are each rebuilt from their whole section); a new top-level section needs a
decision in ``SECTIONS`` (a test walks the schema and fails otherwise); should one slip through
anyway, a change to it refuses the reload (the safe side) rather than being silently ignored.
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


#: How a change to each top-level section applies, unless a field says otherwise below. A whole
#: section is the right unit for most: the pipeline is rebuilt from all of model/source/...,
#: the MQTT publisher from the whole ``mqtt:`` section, the dashboard from ``dashboard:``.
SECTIONS: Final[typing.Mapping[str, Apply]] = {
    "version": Apply.NOTHING,  # always 1: a config of another version is refused when read
    "log_level": Apply.LOGGING,
    # backend and openvino (device, precision, cache_dir) included: the new pipeline loads the
    # model again with them (a backend switch, or an OpenVINO recompile from its cache).
    "model": Apply.PIPELINE,
    "source": Apply.PIPELINE,
    # Every camera's source, options, zones, lines and sinks (a list, compared whole): the
    # pipeline is rebuilt with the new set. Adding or removing one camera without touching the
    # others (their captures, the MQTT session) is the pipeline's own to do on that rebuild.
    "cameras": Apply.PIPELINE,
    "postprocess": Apply.PIPELINE,
    "output": Apply.PIPELINE,
    # batch and gather_ms included: the inference stage is built with them.
    "pipeline": Apply.PIPELINE,
    # stats_interval_s and stall_s are read from the running generation's config at every tick.
    "service": Apply.PIPELINE,
    "mqtt": Apply.MQTT,
    "dashboard": Apply.DASHBOARD,
    "adaptive": Apply.PIPELINE,
    # build_on_start is decided again for the model of every reload.
    "engines": Apply.PIPELINE,
    # The tracker, zones, lines and events live in the generation's analytics stage: rebuilt
    # (open events end with reason "stopped", and the new generation starts its own).
    "tracker": Apply.PIPELINE,
    "zones": Apply.PIPELINE,
    "lines": Apply.PIPELINE,
    "events": Apply.PIPELINE,
}

#: Fields that apply otherwise than their section.
EXCEPTIONS: Final[typing.Mapping[str, Apply]] = {
    "service.log_format": Apply.LOGGING,
    "engines.root": Apply.NOTHING,
    "engines.public_key": Apply.NOTHING,
    "engines.pid_file": Apply.RESTART,
}


def _classify(path: str) -> Optional[Apply]:
    return EXCEPTIONS.get(path) or SECTIONS.get(path.split(".", 1)[0])





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
    """The model class a field holds (also through Optional[...]), or None for a leaf (a list of
    models, such as ``zones``, is one leaf: it is compared whole)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) is not typing.Union:
        return None
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


FIELDS: Final[typing.Mapping[str, Apply]] = {
    path: how for path in leaf_fields() if (how := _classify(path)) is not None
}
"""Every leaf field of ``Config`` (dotted path) and how a change to it is applied. A field of a
top-level section missing from ``SECTIONS`` is left out, and a change to it refuses the reload."""


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
