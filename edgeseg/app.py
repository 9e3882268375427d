"""Builds a runnable pipeline from a validated Config: the one place components are wired.

The commands (run, eval, bench, serve) differ only in which sinks they attach and what they do
with the counters, so they all start from ``build_runtime`` (serve with the model it has already
loaded and checked, and its files appended to). Everything that can be refused (model, source
URI, sink specs) is opened here, before the first frame is read. Every model of a run is loaded
with the one ``LoadOptions`` value of ``load_options(config)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgeseg.config import Config
from edgeseg.errors import ConfigError
from edgeseg.model import LoadOptions, Model
from edgeseg.pipeline.processor import FrameProcessor
from edgeseg.pipeline.runner import Pipeline, ResultCallback
from edgeseg.postprocess import Postprocessor
from edgeseg.sinks import create_sink
from edgeseg.sinks.base import Sink
from edgeseg.sources import open_source
from edgeseg.sources.base import Source
from edgeseg.sources.uri import mask_credentials

if TYPE_CHECKING:
    from edgeseg.analytics.stage import AnalyticsStage

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """The opened parts of one run; ``close`` releases them in reverse order."""

    model: Model
    processor: FrameProcessor
    source: Source
    sinks: list[Sink]
    _stack: ExitStack

    def close(self) -> None:
        self._stack.close()


def build_analytics(config: Config, model: Model) -> AnalyticsStage | None:
    """Tracker, zones, lines and events when ``tracker.enabled``; None otherwise."""
    if not config.tracker.enabled:
        return None
    from edgeseg.analytics.stage import AnalyticsStage  # scipy and the trackers: only when asked for

    return AnalyticsStage(config.tracker, config.zones, config.lines, config.events, config.camera_name(),
                          model.spec.class_names)


def build_processor(config: Config, model: Model) -> FrameProcessor:
    """The per-frame work for ``model`` with the configured postprocessing (and analytics)."""
    return FrameProcessor(
        model,
        Postprocessor(config.postprocess.settings(), model.spec.class_names),
        inference_workers=config.pipeline.inference_workers,
        analytics=build_analytics(config, model),
    )


def build_pipeline(
    config: Config,
    source: Source,
    processor: FrameProcessor,
    sinks: Sequence[Sink],
    on_result: ResultCallback | None = None,
) -> Pipeline:
    """The threaded pipeline with the configured frame limit, priorities and workers."""
    p = config.pipeline
    return Pipeline(
        source, processor, sinks,
        max_frames=p.max_frames,
        inference_priority=p.inference_priority,
        on_result=on_result,
        inference_workers=p.inference_workers,
    )


def load_options(config: Config, spin: bool = False) -> LoadOptions:
    """How every model of this configuration is loaded (``model`` and ``pipeline.inference_workers``)."""
    m = config.model
    return LoadOptions(threads=m.threads, device=m.device, precision=m.precision,
                       workers=config.pipeline.inference_workers, spin=spin)


def open_model(config: Config, spin: bool = False) -> Model:
    """The configured model at the configured size."""
    m = config.model
    if not m.path:
        raise ConfigError("field 'model.path': required (give --model or set it in the config)")
    return load_options(config, spin).load(m.path, imgsz=m.imgsz)


def build_runtime(
    config: Config,
    extra_sinks: Sequence[Sink] = (),
    spin: bool = False,
    model: Model | None = None,
    append: bool = False,
) -> Runtime:
    """Open model, source and sinks of ``config``; on any refusal, close what was opened.

    ``model``: one already loaded from ``config`` (the daemon loads and checks it before it stops
    the running pipeline); the runtime owns it from here, failure or not. ``append``: file sinks
    append instead of replacing (a service's restart or reload must not erase what it wrote).
    """
    with ExitStack() as stack:
        if model is not None:
            stack.callback(model.close)
        if not config.source.uri:
            raise ConfigError("field 'source.uri': required (give --source or set it in the config)")
        if model is None:
            model = open_model(config, spin=spin)
            stack.callback(model.close)
        source = open_source(config.source.uri, config.source_options())
        stack.callback(source.close)
        sinks: list[Sink] = []
        for spec in config.output.sinks:
            sink = create_sink(spec, config.sink_options(append=append))
            stack.callback(sink.close)
            sinks.append(sink)
        for sink in extra_sinks:
            stack.callback(sink.close)
            sinks.append(sink)
        processor = build_processor(config, model)
        log.info(
            "model %s (%s, %dx%d, %d classes) on %s; source %s",
            model.spec.name, model.spec.family, model.spec.input_size[1], model.spec.input_size[0],
            model.spec.num_classes, model.backend.info.provider, mask_credentials(config.source.uri),
        )
        return Runtime(model, processor, source, sinks, stack.pop_all())
    raise AssertionError("unreachable")  # pragma: no cover
