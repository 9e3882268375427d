"""Batch gain on a GPU: the same networks as ``bench_batch.py``, at batch 1, 2, 4 and 8.

Run on a GPU machine that has PyTorch with CUDA but no ONNX Runtime CUDA provider (the
``onnxruntime-gpu`` wheel is too large to carry to the lent device machine): each ONNX file is
converted to a PyTorch module with ``onnx2torch`` and run on CUDA in fp32. Before timing, the
converted network's outputs are compared with ONNX Runtime CPU on the same input (trust no
backend until it matches the reference), and every frame of a batch with its batch-1 result.

    python benchmarks/device_batch_gpu.py MODEL.onnx:SIZE [MODEL.onnx:SIZE ...]

Prints a markdown table: model, size, batch, ms per batch (median), ms per frame, frames/s, gain.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np


def _time(module, x, runs: int) -> float:  # type: ignore[no-untyped-def]
    import torch

    times = []
    with torch.inference_mode():
        for _ in range(5):
            module(x)
        torch.cuda.synchronize()
        for _ in range(runs):
            t0 = time.perf_counter()
            module(x)
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main(argv: list) -> None:  # type: ignore[type-arg]
    import onnxruntime as ort
    import torch
    from onnx2torch import convert

    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    print("| model | size | batch | ms per batch | ms per frame | frames/s | gain vs batch 1 | max diff vs ORT CPU |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    rng = np.random.default_rng(0)
    for arg in argv:
        path, size = arg.rsplit(":", 1)
        s = int(size)
        module = convert(path).eval().cuda()
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        frames = rng.random((8, 3, s, s), dtype=np.float32)
        reference = session.run(None, {name: frames[:1]})
        with torch.inference_mode():
            single = [o.float().cpu().numpy() for o in module(torch.from_numpy(frames[:1]).cuda())]
        diff = max(float(np.abs(a - b).max()) for a, b in zip(single, reference))
        base = None
        for batch in (1, 2, 4, 8):
            x = torch.from_numpy(frames[:batch]).cuda()
            with torch.inference_mode():
                outs = [o.float().cpu().numpy() for o in module(x)]
            mix = max(float(np.abs(o[:1] - r).max()) for o, r in zip(outs, single))
            ms = _time(module, x, 50)
            per = ms / batch
            base = base or per
            print(f"| {Path(path).stem} | {s} | {batch} | {ms:.2f} | {per:.2f} | {1e3 / per:.0f} | "
                  f"{base / per:.2f}x | {diff:.1e} (frame 0 in batch: {mix:.1e}) |")


if __name__ == "__main__":
    main(sys.argv[1:])
