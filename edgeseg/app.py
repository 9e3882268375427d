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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from edgeseg.config import Config
from edgeseg.config.cameras import CameraSpec
from edgeseg.errors import ConfigError
from edgeseg.model import LoadOptions, Model, OpenVinoOptions
from edgeseg.pipeline.cameras import CameraLane
from edgeseg.pipeline.processor import CameraSetup, FrameProcessor
from edgeseg.pipeline.runner import Pipeline, ResultCallback
from edgeseg.postprocess import Postprocessor
from edgeseg.preprocess import Preprocessor
from edgeseg.sinks import create_sink
from edgeseg.sinks.base import Sink
from edgeseg.sources import open_source
from edgeseg.sources.base import Source
from edgeseg.sources.fsnames import printable_name
from edgeseg.sources.uri import mask_credentials

if TYPE_CHECKING:
    from edgeseg.analytics.stage import AnalyticsStage

log = logging.getLogger(__name__)


@dataclass
class OpenedCamera:
    """One camera of a run, opened: what a pipeline needs to serve it (``camera_lane``)."""

    spec: CameraSpec
    setup: CameraSetup
    source: Source
    sinks: List[Sink]

    def reopen(self) -> Source:
        """The camera's source opened again (the watchdog restarts a stuck capture with it)."""
        return open_source(self.spec.uri, self.spec.source)

    def close(self) -> None:
        """Close what ``open_camera`` opened (a camera that never joined a runtime)."""
        self.source.close()
        for sink in self.sinks:
            sink.close()


@dataclass
class Runtime:
    """The opened parts of one run; ``close`` releases them in reverse order.

    ``sinks`` are the shared outputs (``output.sinks`` and the caller's extra ones); each camera
    has its own source and its own sinks.
    """

    model: Model
    processor: FrameProcessor
    cameras: List[OpenedCamera]
    sinks: list[Sink]
    _stack: ExitStack
    #: Models of cameras that pin their own size, per size (closed with the runtime).
    fixed: Dict[int, Model] = field(default_factory=dict)

    @property
    def source(self) -> Source:
        """The first camera's source (a single-source run's only one)."""
        return self.cameras[0].source

    def add_camera(self, camera: OpenedCamera) -> None:
        """Own a camera opened later (a reload that adds one): closed with the rest."""
        self.cameras.append(camera)
        self._stack.callback(camera.source.close)
        for sink in camera.sinks:
            self._stack.callback(sink.close)

    def drop_camera(self, name: str) -> None:
        """Forget a removed camera (the pipeline closed its source and sinks)."""
        self.cameras = [c for c in self.cameras if c.spec.name != name]

    def close(self) -> None:
        self._stack.close()


def build_analytics(config: Config, model: Model, spec: Optional[CameraSpec] = None) -> AnalyticsStage | None:
    """Tracker, zones, lines and events of one camera (default: the first, a single source's only
    one) when ``tracker.enabled``; None otherwise."""
    if not config.tracker.enabled:
        return None
    from edgeseg.analytics.stage import AnalyticsStage  # scipy and the trackers: only when asked for

    spec = spec or config.camera_specs()[0]
    return AnalyticsStage(config.tracker, list(spec.zones), list(spec.lines), config.events, spec.name,
                          model.spec.class_names)


def build_processor(config: Config, model: Model, analytics: bool = True) -> FrameProcessor:
    """The per-frame work for ``model`` with the configured postprocessing (and, for a
    single-source pipeline built from it directly, the analytics of ``source:``)."""
    return FrameProcessor(
        model,
        Postprocessor(config.postprocess.settings(), model.spec.class_names),
        inference_workers=config.pipeline.inference_workers,
        analytics=build_analytics(config, model) if analytics else None,
    )


def _close_models(models: Dict[int, Model], keep: Model) -> None:
    for m in models.values():
        if m is not keep:
            m.close()


def pipeline_options(config: Config) -> Dict[str, Any]:
    """The ``Pipeline`` arguments the ``pipeline:`` section sets."""
    p = config.pipeline
    return {"max_frames": p.max_frames, "inference_priority": p.inference_priority,
            "inference_workers": p.inference_workers, "batch": p.batch, "gather_ms": p.gather_ms}


def camera_lane(camera: OpenedCamera) -> CameraLane:
    """A pipeline's lane for an opened camera (new buffers and counters each time)."""
    return CameraLane(camera.setup, camera.source, uri=printable_name(mask_credentials(camera.spec.uri)),
                      reopen=camera.reopen, sinks=list(camera.sinks))


def build_pipeline(
    config: Config,
    runtime: Runtime,
    sinks: Optional[Sequence[Sink]] = None,
    on_result: ResultCallback | None = None,
) -> Pipeline:
    """The threaded pipeline over every camera of ``runtime``, with the configured frame limit,
    priorities, workers and batching; ``sinks``: the shared outputs (default the runtime's)."""
    return Pipeline(
        None, runtime.processor, runtime.sinks if sinks is None else sinks,
        on_result=on_result, cameras=[camera_lane(c) for c in runtime.cameras], **pipeline_options(config),
    )


def check_batch(config: Config, model: Model) -> None:
    """``pipeline.batch`` must fit the engine's batch profile (a batch-1 engine takes any: it
    serves the cameras one frame at a time)."""
    cap = model.spec.max_batch
    if cap is not None and 1 < cap < config.pipeline.batch:
        raise ConfigError(f"field 'pipeline.batch': {config.pipeline.batch} is larger than the batch profile "
                          f"of model {model.spec.name} (at most {cap} frames per call); lower it or export "
                          f"the model with --batch {config.pipeline.batch}")
    if cap == 1 and config.pipeline.batch > 1:
        log.info("model %s takes one frame per call: pipeline.batch %d runs as frames one by one",
                 model.spec.name, config.pipeline.batch)


def camera_pool_size(live: bool, config: Config) -> int:
    """Input tensors a camera's pool holds. Live: one being filled, two in its newest-only buffer
    and one per inference worker, so that capture keeps reading (and dropping the oldest) while
    inference runs. A file waits anyway (lossless): one being filled or waiting and one per worker
    keep inference fed, and every further tensor would only hold memory (5 MB each at 640)."""
    return (3 if live else 1) + config.pipeline.inference_workers


def open_camera(config: Config, spec: CameraSpec, model: Model, append: bool = False,
                fixed: Optional[Dict[int, Model]] = None) -> OpenedCamera:
    """Open one camera of ``config``: its source, its own sinks, its analytics and tensor pool.

    ``fixed``: models already loaded per pinned size (``imgsz``), shared between cameras and
    filled here as needed; the caller closes them.
    """
    with ExitStack() as stack:
        pinned: Optional[Model] = None
        if spec.imgsz is not None:
            pool = fixed if fixed is not None else {}
            if spec.imgsz not in pool:
                if max(model.spec.input_size) == spec.imgsz:
                    pool[spec.imgsz] = model
                else:
                    pool[spec.imgsz] = load_options(config).load(config.model.path or "", imgsz=spec.imgsz)
            pinned = pool[spec.imgsz]
        source = open_source(spec.uri, spec.source)
        stack.callback(source.close)
        sinks: list[Sink] = []
        for text in spec.sinks:
            sink = create_sink(text, config.sink_options(append=append))
            stack.callback(sink.close)
            sinks.append(sink)
        setup = CameraSetup(
            spec.name,
            Preprocessor(model.spec.normalization, pool_size=camera_pool_size(source.live, config)),
            model=pinned,
            overrides=dict(spec.postprocess),
            analytics=build_analytics(config, model, spec),
        )
        stack.pop_all()
        return OpenedCamera(spec, setup, source, sinks)
    raise AssertionError("unreachable")  # pragma: no cover


def load_options(config: Config, spin: bool = False) -> LoadOptions:
    """How every model of this configuration is loaded (``model`` and ``pipeline.inference_workers``).

    ``model.openvino.cache_dir`` is resolved here (null: the user's cache directory), so that the
    loaders below see a path or None and never read the environment themselves."""
    m = config.model
    ov = m.openvino
    return LoadOptions(threads=m.threads, device=m.device, precision=m.precision,
                       workers=config.pipeline.inference_workers, spin=spin, backend=m.backend,
                       openvino=OpenVinoOptions(ov.device, ov.precision, ov.resolved_cache_dir()))


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
        specs = config.camera_specs()
        if not any(spec.uri for spec in specs):
            raise ConfigError("field 'source.uri': required (give --source or set it in the config)")
        if model is None:
            model = open_model(config, spin=spin)
            stack.callback(model.close)
        check_batch(config, model)
        fixed: Dict[int, Model] = {}
        stack.callback(_close_models, fixed, model)
        cameras: List[OpenedCamera] = []
        for spec in specs:
            camera = open_camera(config, spec, model, append=append, fixed=fixed)
            stack.callback(camera.source.close)
            for sink in camera.sinks:
                stack.callback(sink.close)
            cameras.append(camera)
        sinks: list[Sink] = []
        for text in config.output.sinks:
            sink = create_sink(text, config.sink_options(append=append))
            stack.callback(sink.close)
            sinks.append(sink)
        for sink in extra_sinks:
            stack.callback(sink.close)
            sinks.append(sink)
        processor = build_processor(config, model, analytics=False)
        log.info(
            "model %s (%s, %dx%d, %d classes) on %s; %s",
            model.spec.name, model.spec.family, model.spec.input_size[1], model.spec.input_size[0],
            model.spec.num_classes, model.backend.info.provider,
            "; ".join(f"camera {c.spec.name}: {printable_name(mask_credentials(c.spec.uri))}" for c in cameras),
        )
        return Runtime(model, processor, cameras, sinks, stack.pop_all(), fixed)
    raise AssertionError("unreachable")  # pragma: no cover
