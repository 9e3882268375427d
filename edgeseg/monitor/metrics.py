"""Prometheus text exposition (format 0.0.4) of the pipeline, the picker and the telemetry.

``render_metrics(pipeline, ...)`` returns the page the dashboard serves at ``/metrics`` (with
``CONTENT_TYPE``). Families, all prefixed ``edgeseg_``:

* pipeline: frames captured/processed/dropped/skipped, instances and sink errors (counters),
  frames in flight and buffer depths, recent and average FPS, per-stage latency: cumulative
  histograms with fixed buckets (``stage_latency_seconds``, from ``StageHistograms``, which must
  see every result) and the recent median per stage (``stage_latency_median_seconds``);
* what runs: ``info`` (model, backend, engine file, precision; value 1) and the input size;
* per camera (when the pipeline has ``cameras()``, a list of ``CameraStats``): frames captured,
  processed, dropped and skipped, restarts (counters), online and recent FPS (gauges), each
  labelled ``camera``, beside the totals above (``camera_families``);
* the adaptive picker (when given): size, effort level, switches, the goal, the measured figure,
  and the resolution-performance table (``adaptive_table_latency_seconds``: seed, measured and
  predicted latency per size);
* telemetry (when given): every reading as a gauge ``edgeseg_<name>`` labelled with its
  ``source`` (jtop, psutil, nvml, thermal), plus ``telemetry_source_up`` per source;
* the engine self-test (with a running model, once anything was tested; counted by the process-wide
  ``edgeseg.bundle.selftest.LEDGER``, their one owner): ``selftest_runs_total{engine,result}``,
  ``selftest_failures_total{engine}``, ``selftest_fallbacks_total{refused,serving}`` and
  ``selftest_skipped_total{bundle}`` (loads of a bundle without a reference).

The format: ``# HELP`` and ``# TYPE`` once per family, then its samples; label values escape
backslash, double quote and newline; HELP text escapes backslash and newline; histogram buckets
are cumulative with ``le`` ending at ``+Inf``, then ``_sum`` and ``_count``.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from edgeseg.bundle.selftest import LEDGER, LedgerCounts
from edgeseg.monitor.telemetry import TelemetrySnapshot, readings_by_name
from edgeseg.structures import FrameResult

if TYPE_CHECKING:
    from edgeseg.adaptive.controller import AdaptiveController
    from edgeseg.model import Model
    from edgeseg.pipeline.runner import Pipeline

#: The Content-Type of the page.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "edgeseg_"
#: Stage latency bucket bounds, seconds: 1 ms to 2.5 s, finer where edge inference lives.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5,
)
#: Window of the recent frame rate, seconds.
RECENT_FPS_WINDOW_S = 5.0
MS_PER_S = 1000.0

MetricType = Literal["counter", "gauge", "histogram", "untyped"]
_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value: integers without a point, +Inf/-Inf/NaN spelt as the format wants."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


@dataclass
class Family:
    """One metric family: name, help, type and its samples (suffix, labels, value)."""

    name: str
    help: str
    type: MetricType
    samples: list[tuple[str, tuple[tuple[str, str], ...], float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"metric name {self.name!r} is not valid in the exposition format")

    def add(self, value: float, labels: Mapping[str, str] | Iterable[tuple[str, str]] = (), suffix: str = "") -> None:
        pairs = tuple(labels.items()) if isinstance(labels, Mapping) else tuple(labels)
        for k, _ in pairs:
            if not _LABEL.match(k) or k.startswith("__"):
                raise ValueError(f"label name {k!r} is not valid in the exposition format")
        self.samples.append((suffix, pairs, float(value)))

    def render(self) -> str:
        lines = [f"# HELP {self.name} {escape_help(self.help)}", f"# TYPE {self.name} {self.type}"]
        for suffix, labels, value in self.samples:
            text = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels)
            lines.append(f"{self.name}{suffix}{{{text}}} {format_value(value)}" if text else
                         f"{self.name}{suffix} {format_value(value)}")
        return "\n".join(lines) + "\n"


class Registry:
    """Families in the order they are first asked for; one family per name."""

    def __init__(self) -> None:
        self._families: dict[str, Family] = {}

    def family(self, name: str, help: str, type: MetricType) -> Family:
        full = PREFIX + name
        f = self._families.get(full)
        if f is None:
            f = self._families[full] = Family(full, help, type)
        elif f.type != type:
            raise ValueError(f"metric {full}: registered as {f.type}, asked for as {type}")
        return f

    def gauge(self, name: str, help: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        self.family(name, help, "gauge").add(value, labels or {})

    def counter(self, name: str, help: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        self.family(name, help, "counter").add(value, labels or {})

    def render(self) -> str:
        return "".join(f.render() for f in self._families.values() if f.samples)


class StageHistograms:
    """Cumulative per-stage latency histograms with fixed buckets, and the recent frame rate.

    Feed every frame result (``observe``, e.g. from ``Pipeline(on_result=...)``); thread-safe.
    Prometheus histograms count from the start, so this must see every frame, which the
    bounded windows of ``StageTimes`` do not keep.
    """

    def __init__(self, buckets_s: Sequence[float] = LATENCY_BUCKETS_S, fps_window_s: float = RECENT_FPS_WINDOW_S):
        bounds = sorted(float(b) for b in buckets_s)
        if not bounds or any(b <= 0 or math.isinf(b) for b in bounds):
            raise ValueError("buckets must be positive and finite (+Inf is added)")
        self.bounds = (*bounds, math.inf)
        self._counts: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}
        self._times: deque[float] = deque()
        self._first: float | None = None
        self._window = fps_window_s
        self._lock = threading.Lock()

    def observe(self, result: FrameResult) -> None:
        self.observe_latency(result.latency_ms)

    def observe_latency(self, latency_ms: Mapping[str, float], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            for stage, ms in latency_ms.items():
                s = ms / MS_PER_S
                counts = self._counts.get(stage)
                if counts is None:
                    counts = self._counts[stage] = [0] * len(self.bounds)
                    self._sums[stage] = 0.0
                for i, bound in enumerate(self.bounds):
                    if s <= bound:
                        counts[i] += 1
                        break
                self._sums[stage] += s
            self._times.append(now)
            if self._first is None:
                self._first = now
            while self._times and self._times[0] < now - self._window:
                self._times.popleft()

    @property
    def window_s(self) -> float:
        return self._window

    def recent_fps(self, now: float | None = None) -> float:
        """Frames per second over the last window (or since the first frame, if that is shorter)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            recent = sum(1 for t in self._times if t >= now - self._window)
            first = self._first
        if first is None:
            return 0.0
        span = min(self._window, now - first)
        return recent / span if span > 0 else 0.0

    def snapshot(self) -> dict[str, tuple[list[int], float, int]]:
        """Per stage: cumulative counts per bound (``bounds``), sum of seconds, count."""
        with self._lock:
            out = {}
            for stage, counts in self._counts.items():
                cumulative, total = [], 0
                for c in counts:
                    total += c
                    cumulative.append(total)
                out[stage] = (cumulative, self._sums[stage], total)
            return out


def _stage_order(stages: Iterable[str]) -> list[str]:
    from edgeseg.pipeline.stats import STAGES

    names = list(stages)
    return [s for s in STAGES if s in names] + sorted(s for s in names if s not in STAGES)


def _pipeline_families(reg: Registry, pipeline: Pipeline, histograms: StageHistograms | None) -> None:
    c = pipeline.counters
    reg.counter("frames_captured_total", "frames read from the source", c.captured)
    reg.counter("frames_processed_total", "frames through every stage", c.processed)
    reg.counter("frames_dropped_total", "live frames dropped because inference was busy (newest kept)",
                pipeline.drops)
    reg.counter("frames_skipped_total", "unreadable source items skipped", pipeline.source.skipped)
    reg.counter("instances_total", "instances found", c.instances)
    reg.counter("sink_errors_total", "failed sink writes", c.sink_errors)
    reg.gauge("frames_in_flight", "frames captured and neither finished nor dropped",
              max(0, c.captured - c.processed - pipeline.drops))
    depths = getattr(pipeline, "queue_depths", None)
    if callable(depths):
        for queue, depth in depths().items():
            reg.gauge("queue_depth", "frames waiting in a stage hand-off buffer", depth, {"queue": queue})
    reg.gauge("fps_average", "frames per second since the pipeline started", c.fps)
    if histograms is not None:
        reg.gauge("fps", f"frames per second over the last {histograms.window_s:g} s", histograms.recent_fps())
        snap = histograms.snapshot()
        fam = reg.family("stage_latency_seconds", "time per frame in each pipeline stage", "histogram")
        for stage in _stage_order(snap):
            counts, total_s, n = snap[stage]
            for bound, cum in zip(histograms.bounds, counts):
                fam.add(cum, (("stage", stage), ("le", _le(bound))), "_bucket")
            fam.add(total_s, (("stage", stage),), "_sum")
            fam.add(n, (("stage", stage),), "_count")
    summaries = pipeline.times.summaries()
    for stage in _stage_order(summaries):
        reg.gauge("stage_latency_median_seconds", "median time per frame in each stage, recent frames",
                  summaries[stage].median / MS_PER_S, {"stage": stage})


CAMERA_COUNTERS: Final = (
    ("captured", "camera_frames_captured_total", "frames read from each camera"),
    ("processed", "camera_frames_processed_total", "frames of each camera through every stage"),
    ("dropped", "camera_frames_dropped_total",
     "live frames of each camera dropped because inference was busy (newest kept)"),
    ("skipped", "camera_frames_skipped_total", "unreadable items of each camera's source skipped"),
    ("restarts", "camera_restarts_total", "times each camera's capture was restarted (reconnects, watchdog)"),
)
"""(CameraStats field, family name, help) of the per-camera counters."""


def camera_families(reg: Registry, cameras: Iterable[Any]) -> None:
    """Per-camera families from ``CameraStats``-like objects (``name``, the counters,
    ``online``, ``fps``; read by attribute so that any object of that shape will do)."""
    shown = list(cameras)
    if not shown:
        return
    for field_name, family, help_text in CAMERA_COUNTERS:
        fam = reg.family(family, help_text, "counter")
        for cam in shown:
            fam.add(float(getattr(cam, field_name)), (("camera", str(cam.name)),))
    online = reg.family("camera_online", "1 while a camera's stream is up, 0 while it is down or retrying", "gauge")
    for cam in shown:
        online.add(1 if cam.online else 0, (("camera", str(cam.name)),))
    fps = reg.family("camera_fps", "frames per second of each camera, over the last few seconds", "gauge")
    for cam in shown:
        fps.add(float(cam.fps), (("camera", str(cam.name)),))


def _model_families(reg: Registry, model: Model, input_size: tuple[int, int]) -> None:
    engine = model.engine
    reg.gauge("info", "what runs: model, backend, engine file and precision (value 1)", 1, {
        "model": model.spec.name,
        "backend": model.backend.info.provider,
        "engine": "" if engine is None else engine.file,
        "precision": "" if engine is None else engine.precision,
        "runtime": "onnxruntime" if engine is None else engine.runtime,
    })
    reg.gauge("input_height_pixels", "network input height in use", input_size[0])
    reg.gauge("input_width_pixels", "network input width in use", input_size[1])


def _adaptive_families(reg: Registry, adaptive: AdaptiveController) -> None:
    state = adaptive.state()
    goal = adaptive.goal
    reg.gauge("adaptive_size_pixels", "input size the picker chose (larger side)", state.size)
    reg.gauge("adaptive_effort_level", "post-processing effort level (0 = full, higher = cheaper)", state.effort)
    reg.counter("adaptive_switches_total", "resolution or effort switches", state.switches)
    if goal.mode == "fps":
        reg.gauge("adaptive_target_fps", "the picker's frame rate goal", MS_PER_S / goal.limit_ms)
        if state.measured_ms:
            reg.gauge("adaptive_measured_fps", "frame rate the picker measures at the current size",
                      MS_PER_S / state.measured_ms)
    else:
        reg.gauge("adaptive_latency_budget_seconds", "the picker's latency goal", goal.limit_ms / MS_PER_S)
        if state.measured_ms is not None:
            reg.gauge("adaptive_measured_latency_seconds", "processing latency the picker measures",
                      state.measured_ms / MS_PER_S)
    fam = reg.family("adaptive_table_latency_seconds",
                     "resolution-performance table: inference latency per size (seed = manifest)", "gauge")
    for row in adaptive.table.rows():
        for kind, ms in (("seed", row.seed_ms), ("measured", row.measured_ms), ("predicted", row.predicted_ms)):
            if ms is not None:
                fam.add(ms / MS_PER_S, (("size", str(row.size)), ("kind", kind)))


def _telemetry_families(reg: Registry, telemetry: TelemetrySnapshot) -> None:
    up = reg.family("telemetry_source_up", "1 when a telemetry source reads, 0 when absent or failing", "gauge")
    for source, state in sorted(telemetry.sources.items()):
        up.add(1 if state == "ok" else 0, (("source", source), ("state", state)))
    for name, readings in readings_by_name(telemetry.readings).items():
        fam = reg.family(name, readings[0].help or name.replace("_", " "), "gauge")
        for r in readings:
            fam.add(r.value, (*r.labels, ("source", r.source)))


def _selftest_families(reg: Registry, counts: LedgerCounts) -> None:
    runs = reg.family("selftest_runs_total", "engine self-tests run, by engine file and verdict", "counter")
    for (engine, result), n in sorted(counts.runs.items()):
        runs.add(n, (("engine", engine), ("result", result)))
    failures = reg.family("selftest_failures_total", "engines refused by their self-test, by engine file", "counter")
    for engine, n in sorted(counts.failures.items()):
        failures.add(n, (("engine", engine),))
    fallbacks = reg.family("selftest_fallbacks_total",
                           "loads that fell back from an engine refused by its self-test to another", "counter")
    for (refused, serving), n in sorted(counts.fallbacks.items()):
        fallbacks.add(n, (("refused", refused), ("serving", serving)))
    skipped = reg.family("selftest_skipped_total", "loads of a bundle without a self-test reference", "counter")
    for bundle, n in sorted(counts.skipped.items()):
        skipped.add(n, (("bundle", bundle),))


def render_metrics(
    pipeline: Pipeline | None = None,
    *,
    model: Model | None = None,
    histograms: StageHistograms | None = None,
    adaptive: AdaptiveController | None = None,
    telemetry: TelemetrySnapshot | None = None,
    extra: Mapping[str, float] | None = None,
    selftest: LedgerCounts | None = None,
) -> str:
    """The ``/metrics`` page.

    Args:
        pipeline: counters, drops and stage windows (and the processor's model and input size);
            its ``cameras()``, when it has one, gives the per-camera families.
        model: the model to describe (default: the pipeline processor's current one).
        histograms: per-stage histograms and the recent FPS, fed with every result.
        adaptive: the adaptive controller, when the picker runs.
        telemetry: a ``Telemetry.snapshot()``.
        extra: further gauges, name (without prefix) -> value (e.g. uptime_seconds).
        selftest: self-test counts; by default the process's ``LEDGER`` on the page of a running
            model (a pipeline or ``model`` given), nothing otherwise.
    """
    reg = Registry()
    if pipeline is not None:
        _pipeline_families(reg, pipeline, histograms)
        cameras = getattr(pipeline, "cameras", None)  # a multi-camera pipeline: per-camera families
        if callable(cameras):
            camera_families(reg, cameras())
    elif histograms is not None:
        reg.gauge("fps", "frames per second over the recent window", histograms.recent_fps())
    processor: Any = getattr(pipeline, "processor", None)
    shown = model if model is not None else getattr(processor, "model", None)
    if shown is not None:
        size = processor.input_size if processor is not None and model is None else shown.spec.input_size
        _model_families(reg, shown, size)
    if adaptive is not None:
        _adaptive_families(reg, adaptive)
    if telemetry is not None:
        _telemetry_families(reg, telemetry)
    if selftest is not None or shown is not None:
        _selftest_families(reg, LEDGER.counts() if selftest is None else selftest)
    for name, value in (extra or {}).items():
        reg.gauge(name, name.replace("_", " "), value)
    return reg.render()
