"""What an engine costs and how well it does, measured on this machine at export time.

Latency is the backend's own ``infer`` on a fixed input (no capture, no postprocessing), so it
is the figure the adaptive picker starts from; accuracy goes through the same pipeline and
COCOeval as ``edgeseg eval``.
"""

from __future__ import annotations

import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeseg.backends.base import Backend
from edgeseg.bundle.manifest import AccuracyRecord, LatencyRecord
from edgeseg.config import parse_config
from edgeseg.evaluation.coco import EVAL_POSTPROCESS, evaluate
from edgeseg.model import Model

#: Untimed runs first (allocations, kernel selection), then timed runs.
WARMUP_RUNS = 3
TIMED_RUNS = 20


def measure_latency(backend: Backend, size: int, threads: int, runs: int = TIMED_RUNS) -> LatencyRecord:
    """Median and p90 of ``backend.infer`` on one (1, 3, size, size) input."""
    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    for _ in range(WARMUP_RUNS):
        backend.infer(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        backend.infer(x)
        times.append((time.perf_counter() - t0) * 1e3)
    where = backend.info.provider
    if where == "CPUExecutionProvider":
        where = f"CPU {platform.machine()}, {threads or 'all'} threads (ONNX Runtime)"
    return LatencyRecord(median_ms=float(np.median(times)), p90_ms=float(np.percentile(times, 90)), device=where)


def measure_accuracy(model: Model, images: Path, annotations: Path) -> AccuracyRecord:
    """COCO box and mask mAP of ``model`` on an annotated folder (as ``edgeseg eval``)."""
    config = parse_config({"model": {"path": str(model.backend.info.path)}, "postprocess": EVAL_POSTPROCESS})
    with tempfile.TemporaryDirectory() as tmp:
        report = evaluate(config, images, annotations, Path(tmp) / "results.json", model=model, progress=False)
    return AccuracyRecord(
        box_map=report.box_map, box_map50=report.box_map50, mask_map=report.mask_map,
        mask_map50=report.mask_map50, dataset=str(annotations), images=report.images,
    )
