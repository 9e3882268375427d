"""``edgeseg bench``: what each stage costs, what the pipeline delivers, and what it saves.

Runs the threaded pipeline over N frames of a (looping) source, then a plain sequential loop
over the same N frames from the start of a freshly opened source, with the same components and
sinks. Reports per-stage latency (median, p90) measured inside the pipeline run, the busy time
per frame of each pipeline thread (its stages summed), end-to-end FPS of both, and memory
(resident set at the start, at frame 200, at the end, and the process peak).
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psutil

from edgeseg.app import Runtime, build_pipeline, build_runtime
from edgeseg.config import Config
from edgeseg.pipeline.runner import run_sequential
from edgeseg.pipeline.stats import STAGES, THREAD_OF_STAGE
from edgeseg.progress import progress_bar
from edgeseg.sources import open_source
from edgeseg.sources.uri import mask_credentials
from edgeseg.structures import FrameResult

#: Frame at which the resident set is sampled for the leak check (growth from here to the end).
RSS_CHECKPOINT_FRAME = 200
_MB = 1024 * 1024


def _rss_mb() -> float:
    return float(psutil.Process().memory_info().rss) / _MB


def _peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _distribution(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, np.float64)
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90))}


@dataclass
class _Recorder:
    """Collects each result's stage latencies and the RSS at the checkpoint frame."""

    records: list[dict[str, float]] = field(default_factory=list)
    rss_at_checkpoint: float | None = None

    def __call__(self, result: FrameResult) -> None:
        self.records.append(dict(result.latency_ms))
        if len(self.records) == RSS_CHECKPOINT_FRAME:
            self.rss_at_checkpoint = _rss_mb()

    def stages(self) -> dict[str, dict[str, float]]:
        names = [s for s in STAGES if any(s in r for r in self.records)]
        return {s: _distribution([r[s] for r in self.records if s in r]) for s in names}

    def threads(self) -> dict[str, dict[str, float]]:
        per_thread: dict[str, list[float]] = {}
        for r in self.records:
            sums: dict[str, float] = {}
            for stage, ms in r.items():
                thread = THREAD_OF_STAGE.get(stage)
                if thread:
                    sums[thread] = sums.get(thread, 0.0) + ms
            for thread, ms in sums.items():
                per_thread.setdefault(thread, []).append(ms)
        return {t: _distribution(v) for t, v in per_thread.items()}


@dataclass
class BenchReport:
    model: str
    provider: str
    input_size: tuple[int, int]
    source: str
    frames: int
    stages: dict[str, dict[str, float]]
    threads: dict[str, dict[str, float]]
    pipeline_fps: float
    drops: int
    sequential_fps: float | None
    sequential_stages: dict[str, dict[str, float]]
    rss_mb: dict[str, float | None]
    inference_workers: int = 1
    threads_per_inference: int = 0

    def _interval_ms(self, thread: str, median_ms: float) -> float:
        """Time between two frames leaving a stage: latency over the workers serving it."""
        return median_ms / self.inference_workers if thread == "inference" else median_ms

    @property
    def slowest_stage(self) -> tuple[str, float]:
        """The stage that limits throughput, and its median interval between frames."""
        name = max(self.stages, key=lambda s: self._interval_ms(THREAD_OF_STAGE[s], self.stages[s]["median_ms"]))
        return name, self._interval_ms(THREAD_OF_STAGE[name], self.stages[name]["median_ms"])

    @property
    def slowest_thread(self) -> tuple[str, float]:
        name = max(self.threads, key=lambda t: self._interval_ms(t, self.threads[t]["median_ms"]))
        return name, self._interval_ms(name, self.threads[name]["median_ms"])

    def as_dict(self) -> dict[str, Any]:
        stage, stage_ms = self.slowest_stage
        thread, thread_ms = self.slowest_thread
        return {
            "model": self.model, "provider": self.provider, "input_size": list(self.input_size),
            "source": self.source, "frames": self.frames,
            "inference_workers": self.inference_workers, "threads_per_inference": self.threads_per_inference,
            "stages": self.stages, "threads": self.threads,
            "pipeline_fps": self.pipeline_fps, "drops": self.drops,
            "sequential_fps": self.sequential_fps, "sequential_stages": self.sequential_stages,
            "slowest_stage": {"name": stage, "median_ms": stage_ms,
                              "fps_ratio": self.pipeline_fps * stage_ms / 1e3},
            "slowest_thread": {"name": thread, "median_ms": thread_ms,
                               "fps_ratio": self.pipeline_fps * thread_ms / 1e3},
            "speedup_vs_sequential": (self.pipeline_fps / self.sequential_fps) if self.sequential_fps else None,
            "rss_mb": self.rss_mb,
        }

    def as_text(self) -> str:
        d = self.as_dict()
        lines = [
            f"model {self.model} on {self.provider}, input {self.input_size[1]}x{self.input_size[0]}, "
            f"{self.frames} frames of {self.source}; {self.inference_workers} inference worker(s) x "
            f"{self.threads_per_inference or 'all'} thread(s)",
            f"{'stage':<12}{'median ms':>10}{'p90 ms':>10}   (inside the pipeline run)",
        ]
        for name, s in self.stages.items():
            lines.append(f"{name:<12}{s['median_ms']:>10.2f}{s['p90_ms']:>10.2f}")
        lines.append(f"{'thread':<12}{'median ms':>10}{'p90 ms':>10}   (busy time per frame)")
        for name, s in self.threads.items():
            lines.append(f"{name:<12}{s['median_ms']:>10.2f}{s['p90_ms']:>10.2f}")
        ss, st = d["slowest_stage"], d["slowest_thread"]
        lines.append(
            f"pipeline {self.pipeline_fps:.2f} FPS ({self.drops} dropped) = {ss['fps_ratio']:.2f} x "
            f"1/slowest stage ({ss['name']}, {ss['median_ms']:.1f} ms per frame out), "
            f"{st['fps_ratio']:.2f} x 1/slowest thread ({st['name']})"
        )
        if self.sequential_fps:
            lines.append(f"sequential {self.sequential_fps:.2f} FPS; pipeline speed-up "
                         f"{d['speedup_vs_sequential']:.2f}x")
        r = self.rss_mb
        lines.append(
            "RSS MB: start {}, frame {} {}, end {}, peak {}".format(
                _fmt(r["start"]), RSS_CHECKPOINT_FRAME, _fmt(r["checkpoint"]), _fmt(r["end"]), _fmt(r["peak"]))
        )
        return "\n".join(lines)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def _warm_up(runtime: Runtime, frames: int) -> None:
    if frames > 0:
        run_sequential(runtime.source, runtime.processor, max_frames=frames, camera=runtime.cameras[0].setup)


def run_bench(config: Config, frames: int, warmup: int = 5, sequential: bool = True) -> BenchReport:
    """Benchmark the configured model and source; see the module docstring."""
    rss_start = _rss_mb()
    runtime = build_runtime(config)
    try:
        _warm_up(runtime, warmup)
        recorder = _Recorder()
        with progress_bar(frames, "pipeline") as bar:
            def on_result(result: FrameResult) -> None:
                recorder(result)
                bar.update(1)

            limited = config.model_copy(update={"pipeline": config.pipeline.model_copy(update={"max_frames": frames})})
            pipeline = build_pipeline(limited, runtime, on_result=on_result)
            counters = pipeline.run()
        rss_end = _rss_mb()
        seq_fps: float | None = None
        seq_stages: dict[str, dict[str, float]] = {}
        if sequential:
            seq_recorder = _Recorder()
            with open_source(config.source.uri or "", config.source_options()) as fresh, \
                    progress_bar(frames, "sequential") as bar:
                def on_seq(result: FrameResult) -> None:
                    seq_recorder(result)
                    bar.update(1)

                t0 = time.perf_counter()
                seq, _ = run_sequential(fresh, runtime.processor, runtime.sinks, frames, on_seq,
                                        camera=runtime.cameras[0].setup)
                seq_fps = seq.processed / (time.perf_counter() - t0)
            seq_stages = seq_recorder.stages()
        spec = runtime.model.spec
        return BenchReport(
            model=spec.name,
            provider=runtime.model.backend.info.provider,
            input_size=runtime.processor.input_size,
            source=mask_credentials(config.source.uri or ""),
            frames=counters.processed,
            stages=recorder.stages(),
            threads=recorder.threads(),
            pipeline_fps=counters.fps,
            drops=pipeline.drops,
            sequential_fps=seq_fps,
            sequential_stages=seq_stages,
            rss_mb={"start": rss_start, "checkpoint": recorder.rss_at_checkpoint, "end": rss_end,
                    "peak": _peak_rss_mb()},
            inference_workers=config.pipeline.inference_workers,
            threads_per_inference=config.model.threads,
        )
    finally:
        runtime.close()
