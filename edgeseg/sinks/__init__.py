"""Outputs of the pipeline, picked by a ``KIND:PATH`` spec (``jsonl:out/results.jsonl``), or by
a URI whose scheme a kind claims (``mqtt://broker:1883`` is ``mqtt:mqtt://broker:1883``).

A small registry maps each kind to a factory, a usage line and its URI schemes; it is the one
list of sink kinds: the usage lines feed the CLI help (:func:`describe_sinks`), and other
packages (MQTT, the dashboard) add their kinds with :func:`register_sink`. Errors quote the
spec with any password masked (``edgeseg.sources.uri.mask_credentials``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Tuple

from edgeseg.errors import SinkError
from edgeseg.sinks.base import MaskFormat, Sink, SinkOptions
from edgeseg.sinks.coco import CocoResultsSink
from edgeseg.sinks.images import ImageDirSink
from edgeseg.sinks.jsonl import JsonlSink
from edgeseg.sinks.paths import unused_path
from edgeseg.sinks.video import VideoSink, is_video_path
from edgeseg.sources.uri import mask_credentials

SinkFactory = Callable[[str, SinkOptions], Sink]
"""Builds a sink from the PATH part of a spec and the shared options."""

SPEC_SEPARATOR = ":"
DEFAULT_OPTIONS = SinkOptions()
_URI_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


@dataclass(frozen=True)
class SinkKind:
    """One registered kind: how to build it, a usage line for help texts, and the URI schemes
    whose URIs are sink specs of this kind as they stand (the factory gets the whole URI)."""

    factory: SinkFactory
    usage: str
    schemes: Tuple[str, ...] = ()


def _video_or_images(path: str, options: SinkOptions) -> Sink:
    """``video:`` writes a video for a video extension, otherwise a directory of JPEGs.

    A video cannot be appended to, so where the service asks for appending (reloads, restarts)
    a new file is started beside an existing one rather than overwriting it (``unused_path``),
    for each camera's file alike.
    """
    if not is_video_path(path):
        return ImageDirSink(path)
    return VideoSink(unused_path(path) if options.append else path, fps=options.fps, append=options.append)


_KINDS: dict[str, SinkKind] = {
    "jsonl": SinkKind(
        lambda path, options: JsonlSink(path, mask_format=options.mask_format, append=options.append),
        "jsonl:FILE      one frame result (schema edgeseg/frame-result v3) per line, every camera's",
    ),
    "coco": SinkKind(
        lambda path, options: CocoResultsSink(path),
        "coco:FILE       COCO results JSON (bbox + RLE segmentation), written at the end",
    ),
    "video": SinkKind(
        _video_or_images,
        "video:FILE|DIR  annotated video (.mp4/.avi/.mkv), or a directory of annotated JPEGs; one per camera",
    ),
    "images": SinkKind(
        lambda path, options: ImageDirSink(path),
        "images:DIR      a directory of annotated JPEGs, named after the input files; one per camera",
    ),
}


def register_sink(kind: str, factory: SinkFactory, usage: str, schemes: Tuple[str, ...] = ()) -> None:
    """Add a sink kind (or replace one) so that ``create_sink("KIND:...")`` builds it, and
    ``create_sink("SCHEME://...")`` for each of ``schemes``."""
    if not kind or SPEC_SEPARATOR in kind:
        raise ValueError(f"sink kind must be a non-empty name without {SPEC_SEPARATOR!r}, got {kind!r}")
    _KINDS[kind] = SinkKind(factory, usage, tuple(s.lower() for s in schemes))


def _mqtt_sink(uri: str, options: SinkOptions) -> Sink:
    from edgeseg.sinks.mqtt import mqtt_sink_from_spec  # imported on use: paho loads only for MQTT

    return mqtt_sink_from_spec(uri, options)


register_sink(
    "mqtt", _mqtt_sink,
    "mqtt[s]://HOST[:PORT] (or mqtt:URI)  frame results to an MQTT broker, queued on disk",
    schemes=("mqtt", "mqtts"),
)


def _events_sink(path: str, options: SinkOptions) -> Sink:
    from edgeseg.events.sink import EventsSink  # imported on use: edgeseg.events imports this package

    return EventsSink(path, append=options.append)


register_sink(
    "events", _events_sink, "events:FILE     one event (schema edgeseg/event v1) per line, when tracking is on"
)


def sink_kinds() -> list[str]:
    """The registered kinds, sorted."""
    return sorted(_KINDS)


def sink_usage() -> list[str]:
    """One usage line per registered kind, for CLI help."""
    return [_KINDS[kind].usage for kind in sink_kinds()]


def describe_sinks(indent: str = "  ") -> str:
    """The ``--sink`` help: every registered kind's usage line, one per line."""
    return "\n".join(indent + line for line in sink_usage())


def _kind_of_uri(spec: str) -> str | None:
    """The kind claiming ``spec``'s URI scheme, when ``spec`` is such a URI."""
    match = _URI_SCHEME.match(spec.strip())
    if match is None:
        return None
    scheme = match.group(1).lower()
    return next((kind for kind in sink_kinds() if scheme in _KINDS[kind].schemes), None)


def sink_kind(spec: str) -> str | None:
    """The registered kind ``spec`` names (by URI scheme or ``KIND:``), None when it names none."""
    by_uri = _kind_of_uri(spec)
    if by_uri is not None:
        return by_uri
    kind, separator, _path = spec.partition(SPEC_SEPARATOR)
    return kind if separator and kind in _KINDS else None


def create_sink(spec: str, options: SinkOptions = DEFAULT_OPTIONS) -> Sink:
    """Build the sink that ``spec`` (``KIND:PATH``, or a URI of a registered scheme) names.

    Raises ``SinkError`` (one line, credentials masked) for an unknown kind, a missing path, or
    a path that cannot be written.
    """
    by_uri = _kind_of_uri(spec)
    if by_uri is not None:
        return _KINDS[by_uri].factory(spec.strip(), options)
    kind, separator, path = spec.partition(SPEC_SEPARATOR)
    valid = ", ".join(sink_kinds())
    shown = mask_credentials(spec)
    if not separator or not path.strip():
        raise SinkError(f"sink spec {shown!r} must be KIND:PATH with KIND one of {valid}, or a URI "
                        f"({', '.join(s + '://' for k in sink_kinds() for s in _KINDS[k].schemes)})")
    if kind not in _KINDS:
        raise SinkError(f"sink spec {shown!r} has unknown kind {mask_credentials(kind)!r}; valid kinds: {valid}")
    return _KINDS[kind].factory(path, options)


__all__ = [
    "CocoResultsSink",
    "ImageDirSink",
    "JsonlSink",
    "MaskFormat",
    "Sink",
    "SinkFactory",
    "SinkKind",
    "SinkOptions",
    "VideoSink",
    "create_sink",
    "describe_sinks",
    "is_video_path",
    "register_sink",
    "sink_kind",
    "sink_kinds",
    "sink_usage",
]
