"""Re-time every engine of a bundle on this machine (backend inference only), as a table.

The export report times each engine once, at export; this re-runs the same measurement later,
e.g. on a quiet machine or on the device after flashing:

    python benchmarks/bench_bundle.py engines/NAME [--threads 2] [--runs 30]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgeseg.backends.base import Backend
from edgeseg.backends.onnxruntime import OnnxRuntimeBackend
from edgeseg.bundle import integrity_problems, load_manifest, probe_device
from edgeseg.bundle.verify import incompatibility
from export.measure import measure_latency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    manifest = load_manifest(args.bundle)
    device = probe_device()
    print(f"{manifest.name} on {device.describe()}")
    print(f"{'resolution':>10} {'precision':<24} {'median ms':>10} {'p90 ms':>8} {'vs fp32':>8}")
    fp32: dict[int, float] = {}
    problems = integrity_problems(args.bundle, manifest)
    if problems:
        raise SystemExit(f"bundle {args.bundle}: " + "; ".join(problems))
    for e in sorted(manifest.engines, key=lambda e: (max(e.resolution), e.precision != "fp32")):
        if incompatibility(e, device):
            continue
        size = max(e.resolution)
        backend: Backend
        if e.runtime == "tensorrt":
            from edgeseg.backends.tensorrt import TensorRTBackend

            backend = TensorRTBackend(args.bundle / e.file, resolution=e.resolution)
        else:
            backend = OnnxRuntimeBackend(args.bundle / e.file, threads=args.threads)
        lat = measure_latency(backend, size, args.threads, args.runs)
        backend.close()
        if e.precision == "fp32":
            fp32[size] = lat.median_ms
        ratio = f"{fp32[size] / lat.median_ms:.2f}x" if size in fp32 else "-"
        label = e.precision + (f" {e.quantization}" if e.quantization else "")
        print(f"{size:>10} {label:<24} {lat.median_ms:>10.1f} {lat.p90_ms:>8.1f} {ratio:>8}")


if __name__ == "__main__":
    main()
