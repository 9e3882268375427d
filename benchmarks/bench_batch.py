"""Per-frame inference cost at batch 1, 2, 4, 8: what batching several cameras into one call gains.

Models: the repository's demo model (engines/demo, 320) made batch-capable with
``export.rebatch``, and the real yolov8n-seg dynamic model at 320 and 640 (skipped with a line
where ../shared/realdata is absent). Each batch runs through ``Backend.infer_batch``, the call the
pipeline makes, so the figure includes splitting the outputs per frame. Prints one Markdown table:
model, size, batch, median ms per call, ms per frame, frames per second and the per-frame gain
against batch 1.

    .venv/bin/python benchmarks/bench_batch.py [--device cpu|cuda] [--threads 2] [--runs 15]

The batch sizes take turns call by call (one round times every batch once), so load from other
processes hits them alike; still, on a shared 2-core machine the figures are indicative.
``--device cuda`` uses ONNX Runtime's CUDA provider (onnxruntime-gpu) for the same table on a GPU
machine; TensorRT's figures come from the device itself (``edgeseg bench`` on a batch bundle).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeseg.backends.onnxruntime import OnnxRuntimeBackend
from edgeseg.errors import EdgesegError
from export.rebatch import rebatch_file

ROOT = Path(__file__).resolve().parents[1]
DEMO_ONNX = ROOT / "engines" / "demo" / "demo-320-fp32.onnx"
REALDATA = ROOT.parent / "shared" / "realdata"
YOLO_DYNAMIC = REALDATA / "models" / "yolov8n-seg-dynamic-fp32-reconstructed.onnx"
DEFAULT_BATCHES = (1, 2, 4, 8)
#: ONNX Runtime threads, as on the 2-core reference machine.
DEFAULT_THREADS = 2
DEFAULT_RUNS = 15
#: Untimed rounds first (allocations, ONNX Runtime's kernel choices per shape).
WARMUP_ROUNDS = 2


@dataclass(frozen=True)
class Row:
    model: str
    size: int
    batch: int
    call_ms: float

    @property
    def frame_ms(self) -> float:
        return self.call_ms / self.batch

    @property
    def fps(self) -> float:
        return 1000.0 / self.frame_ms


def measure(path: Path, size: int, batches: tuple[int, ...], threads: int, device: str, runs: int) -> list[float]:
    """Median ms of one ``infer_batch`` call at each batch, the batches taking turns."""
    backend = OnnxRuntimeBackend(path, threads=threads, device=device)  # type: ignore[arg-type]
    try:
        rng = np.random.default_rng(0)
        inputs = {b: rng.random((b, 3, size, size), dtype=np.float32) for b in batches}
        times: dict[int, list[float]] = {b: [] for b in batches}
        for round_ in range(WARMUP_ROUNDS + runs):
            for b in batches:
                t0 = time.perf_counter()
                out = backend.infer_batch(inputs[b])
                elapsed = (time.perf_counter() - t0) * 1e3
                assert len(out) == b
                if round_ >= WARMUP_ROUNDS:
                    times[b].append(elapsed)
        return [statistics.median(times[b]) for b in batches]
    finally:
        backend.close()


def table(rows: list[Row]) -> str:
    lines = ["| model | size | batch | ms per batch (median) | ms per frame | frames/s | gain vs batch 1 |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    base: dict[tuple[str, int], float] = {}
    for r in rows:
        one = base.setdefault((r.model, r.size), r.frame_ms)
        lines.append(f"| {r.model} | {r.size} | {r.batch} | {r.call_ms:.1f} | {r.frame_ms:.1f} | {r.fps:.1f} | "
                     f"{one / r.frame_ms:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="ONNX Runtime provider")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="intra-op threads (CPU)")
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS, help="timed calls per batch size")
    parser.add_argument("--batches", default=",".join(map(str, DEFAULT_BATCHES)), help="comma-separated")
    args = parser.parse_args(argv)
    batches = tuple(int(b) for b in args.batches.split(","))
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        demo = rebatch_file(DEMO_ONNX, Path(tmp) / DEMO_ONNX.name).target
        models = [("demo (rebatched)", demo, 320)]
        if YOLO_DYNAMIC.is_file():
            models += [("yolov8n-seg", YOLO_DYNAMIC, 320), ("yolov8n-seg", YOLO_DYNAMIC, 640)]
        else:
            print(f"skipped yolov8n-seg: {YOLO_DYNAMIC} not found (../shared/realdata absent)")
        for name, path, size in models:
            try:
                medians = measure(path, size, batches, args.threads, args.device, args.runs)
            except EdgesegError as exc:
                print(f"bench_batch: {exc}", file=sys.stderr)
                return 2
            rows += [Row(name, size, b, ms) for b, ms in zip(batches, medians)]
            print(f"measured {name} at {size}", file=sys.stderr)
    where = "CUDA provider" if args.device == "cuda" else f"CPU, {args.threads} threads"
    print(f"ONNX Runtime {where}; median of {args.runs} calls per batch, batches interleaved\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
