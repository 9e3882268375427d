"""Outputs of the pipeline, picked by a ``KIND:PATH`` spec (``jsonl:out/results.jsonl``).

A small registry maps each kind to a factory and a usage line; the usage lines feed the CLI
help, and other packages (MQTT, the dashboard) add their kinds with :func:`register_sink`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from edgeseg.errors import SinkError
from edgeseg.sinks.base import MaskFormat, Sink, SinkOptions
from edgeseg.sinks.coco import CocoResultsSink
from edgeseg.sinks.images import ImageDirSink
from edgeseg.sinks.jsonl import JsonlSink
from edgeseg.sinks.video import VideoSink, is_video_path

SinkFactory = Callable[[str, SinkOptions], Sink]
"""Builds a sink from the PATH part of a spec and the shared options."""

SPEC_SEPARATOR = ":"
DEFAULT_OPTIONS = SinkOptions()


@dataclass(frozen=True)
class SinkKind:
    """One registered kind: how to build it and a usage line for help texts."""

    factory: SinkFactory
    usage: str


def _video_or_images(path: str, options: SinkOptions) -> Sink:
    """``video:`` writes a video for a video extension, otherwise a directory of JPEGs."""
    return VideoSink(path, fps=options.fps) if is_video_path(path) else ImageDirSink(path)


_KINDS: dict[str, SinkKind] = {
    "jsonl": SinkKind(
        lambda path, options: JsonlSink(path, mask_format=options.mask_format, append=options.append),
        "jsonl:FILE      one frame result (schema edgeseg/frame-result v1) per line",
    ),
    "coco": SinkKind(
        lambda path, options: CocoResultsSink(path),
        "coco:FILE       COCO results JSON (bbox + RLE segmentation), written at the end",
    ),
    "video": SinkKind(
        _video_or_images,
        "video:FILE|DIR  annotated video (.mp4/.avi/.mkv), or a directory of annotated JPEGs",
    ),
    "images": SinkKind(
        lambda path, options: ImageDirSink(path),
        "images:DIR      a directory of annotated JPEGs, named after the input files",
    ),
}


def register_sink(kind: str, factory: SinkFactory, usage: str) -> None:
    """Add a sink kind (or replace one) so that ``create_sink("KIND:...")`` builds it."""
    if not kind or SPEC_SEPARATOR in kind:
        raise ValueError(f"sink kind must be a non-empty name without {SPEC_SEPARATOR!r}, got {kind!r}")
    _KINDS[kind] = SinkKind(factory, usage)


def _mqtt_sink(uri: str, options: SinkOptions) -> Sink:
    from edgeseg.sinks.mqtt import mqtt_sink_from_spec  # imported on use: paho loads only for MQTT

    return mqtt_sink_from_spec(uri, options)


register_sink("mqtt", _mqtt_sink, "mqtt:URI        frame results to broker mqtt[s]://HOST[:PORT], queued on disk")


def sink_kinds() -> list[str]:
    """The registered kinds, sorted."""
    return sorted(_KINDS)


def sink_usage() -> list[str]:
    """One usage line per registered kind, for CLI help."""
    return [_KINDS[kind].usage for kind in sink_kinds()]


def create_sink(spec: str, options: SinkOptions = DEFAULT_OPTIONS) -> Sink:
    """Build the sink that ``spec`` (``KIND:PATH``) names.

    Raises ``SinkError`` for an unknown kind, a missing path, or a path that cannot be written.
    """
    kind, separator, path = spec.partition(SPEC_SEPARATOR)
    valid = ", ".join(sink_kinds())
    if not separator or not path.strip():
        raise SinkError(f"sink spec {spec!r} must be KIND:PATH with KIND one of {valid}")
    if kind not in _KINDS:
        raise SinkError(f"sink spec {spec!r} has unknown kind {kind!r}; valid kinds: {valid}")
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
    "is_video_path",
    "register_sink",
    "sink_kinds",
    "sink_usage",
]
