"""The TensorRT backend's pycuda half, run for real on an NVIDIA GPU around a named fake engine.

TensorRT itself cannot be installed where edgeseg is tested, but pycuda and a GPU sometimes can
(a GPU machine, a Jetson without TensorRT's Python package). This check runs
``edgeseg.backends.tensorrt.TensorRTBackend`` unchanged, with real pycuda (the primary context
retained and pushed/popped on every call from any thread, page-locked host buffers, device
buffers, one stream per execution context, async copies), and puts in TensorRT's place
``FakeTensorRT``: a stand-in ``tensorrt`` module whose "engine" is a CuPy kernel launched on the
stream handle that the backend passes to ``execute_async_v3`` and writing to the device addresses
the backend bound with ``set_tensor_address``. CuPy uses the CUDA runtime API on the primary
context, exactly as TensorRT does, so this also checks that pycuda's memory and a runtime-API
library agree on one context. Every output is checked against the kernel's formula on the host.

What it does not check: TensorRT's own calls (mypy against NVIDIA's stubs does that, and on a
device with TensorRT the engine self-test against the ONNX twin is the final check).

    python benchmarks/device_pycuda_check.py [--size 640] [--threads 4] [--frames 200]

Needs pycuda, CuPy and an NVIDIA GPU; prints figures and exits non-zero on any mismatch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import types
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

#: output = input[i % n_in] * scale + offset, per output tensor: values the host can recompute.
FORMULA: Dict[str, Tuple[float, float]] = {"output0": (2.0, 1.0), "output1": (0.5, -3.0)}
KERNEL_SOURCE = r"""
extern "C" __global__ void fake_engine(const float* x, float* y, long long n_in, long long n_out,
                                       float scale, float offset) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n_out) y[i] = x[i % n_in] * scale + offset;
}
"""


def yolov8_seg_shapes(size: int, classes: int = 80, masks: int = 32) -> Dict[str, Tuple[int, ...]]:
    """The I/O shapes of a yolov8-seg engine at ``size`` (what the runtime's buffers are planned for)."""
    anchors = sum((size // s) ** 2 for s in (8, 16, 32))
    return {"images": (1, 3, size, size), "output0": (1, 4 + classes + masks, anchors),
            "output1": (1, masks, size // 4, size // 4)}


def fake_tensorrt(shapes: Dict[str, Tuple[int, ...]], version: str = "10.3.0") -> types.ModuleType:
    """FakeTensorRT: the subset of ``tensorrt`` the backend calls, executing a CuPy kernel."""
    import cupy as cp

    kernel = cp.RawKernel(KERNEL_SOURCE, "fake_engine")
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version  # type: ignore[attr-defined]

    class Logger:
        WARNING = 2

        def __init__(self, level: int = 2) -> None:
            self.level = level

    class TensorIOMode:
        INPUT = "INPUT"
        OUTPUT = "OUTPUT"

    class DataType:
        name = "FLOAT"

    class Context:
        launches = 0

        def __init__(self) -> None:
            self.addresses: Dict[str, int] = {}

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            self.addresses[name] = int(ptr)
            return True

        def set_input_shape(self, name: str, shape: Tuple[int, ...]) -> bool:
            return tuple(shape) == shapes[name]

        def get_tensor_shape(self, name: str) -> Tuple[int, ...]:
            return shapes[name]

        def set_optimization_profile_async(self, index: int, stream: int) -> bool:
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            stream = cp.cuda.ExternalStream(stream_handle)
            n_in = int(np.prod(shapes["images"]))
            x = _device_view(cp, self.addresses["images"], n_in)
            with stream:
                for name, (scale, offset) in FORMULA.items():
                    n_out = int(np.prod(shapes[name]))
                    y = _device_view(cp, self.addresses[name], n_out)
                    kernel(((n_out + 255) // 256,), (256,),
                           (x, y, np.int64(n_in), np.int64(n_out), np.float32(scale), np.float32(offset)))
            Context.launches += 1
            return True

    class Engine:
        num_optimization_profiles = 1
        names = list(shapes)

        @property
        def num_io_tensors(self) -> int:
            return len(self.names)

        def get_tensor_name(self, i: int) -> str:
            return self.names[i]

        def get_tensor_mode(self, name: str) -> str:
            return TensorIOMode.INPUT if name == "images" else TensorIOMode.OUTPUT

        def get_tensor_shape(self, name: str) -> Tuple[int, ...]:
            return shapes[name]

        def get_tensor_dtype(self, name: str) -> DataType:
            return DataType()

        def create_execution_context(self) -> Context:
            return Context()

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, plan: bytes) -> Engine | None:
            return Engine() if plan.startswith(b"FakeTensorRT") else None

    trt.Logger, trt.TensorIOMode, trt.Runtime, trt.Context = Logger, TensorIOMode, Runtime, Context  # type: ignore[attr-defined]
    return trt


def _device_view(cp: Any, ptr: int, n: int) -> Any:
    """A CuPy float32 array over device memory the backend allocated with pycuda (not owned)."""
    memory = cp.cuda.UnownedMemory(ptr, n * 4, owner=None)
    return cp.ndarray((n,), dtype=cp.float32, memptr=cp.cuda.MemoryPointer(memory, 0))


def expected(x: np.ndarray, shape: Tuple[int, ...], scale: float, offset: float) -> np.ndarray:
    flat = x.reshape(-1)
    n = int(np.prod(shape))
    return (flat[np.arange(n) % flat.size] * np.float32(scale) + np.float32(offset)).reshape(shape)


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--threads", type=int, default=4, help="pipeline worker threads calling infer")
    parser.add_argument("--frames", type=int, default=200, help="frames per thread")
    parser.add_argument("--contexts", type=int, default=2, help="execution contexts (slots) of the backend")
    args = parser.parse_args(argv)

    import pycuda.driver as cuda

    shapes = yolov8_seg_shapes(args.size)
    trt = fake_tensorrt(shapes)
    sys.modules["tensorrt"] = trt  # the backend imports tensorrt lazily, inside its methods

    from edgeseg.backends.tensorrt import TensorRTBackend
    from edgeseg.bundle.device import probe_device
    from edgeseg.errors import ModelError

    device = probe_device()
    print(f"device: {device.describe()} (GPU facts from {device.gpu_source or 'nothing'}); "
          f"pycuda {'.'.join(map(str, cuda.get_version()))} driver API, FakeTensorRT {trt.__version__}")
    for field in ("gpu", "compute_capability", "sm_count", "board"):
        print(f"  identity {field}: {getattr(device, field, 'n/a (field absent)')}")

    plan = Path(tempfile.mkdtemp()) / "fake-640.engine"
    plan.write_bytes(b"FakeTensorRT plan")
    backend = TensorRTBackend(plan, resolution=(args.size, args.size), contexts=args.contexts)
    print(f"loaded: {backend.info.provider}, inputs {[t.shape for t in backend.info.inputs]}, "
          f"outputs {[t.shape for t in backend.info.outputs]}")

    failures: List[str] = []
    latencies: List[float] = []
    leaked_contexts: List[str] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        rng = np.random.default_rng(index)
        for frame in range(args.frames):
            x = rng.standard_normal(shapes["images"], dtype=np.float32)
            t0 = time.perf_counter()
            out = backend.infer(x)
            dt = (time.perf_counter() - t0) * 1000
            ok = all(np.allclose(o, expected(x, shapes[n], *FORMULA[n]), rtol=1e-6, atol=1e-6)
                     for o, n in zip(out, ("output0", "output1")))
            current = cuda.Context.get_current()  # must be None: every call pops what it pushed
            with lock:
                latencies.append(dt)
                if not ok:
                    failures.append(f"thread {index} frame {frame}: outputs differ from the kernel's formula")
                if current is not None:
                    leaked_contexts.append(f"thread {index} frame {frame}")

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    frames = args.threads * args.frames

    # Latency on one thread, without verification on the host in between (the threaded run above
    # shares the GIL with numpy's checks, so its per-call times are not the backend's).
    x = np.random.default_rng(99).standard_normal(shapes["images"], dtype=np.float32)
    alone: List[float] = []
    for _ in range(args.frames):
        t1 = time.perf_counter()
        backend.infer(x)
        alone.append((time.perf_counter() - t1) * 1000)

    try:
        backend.infer(np.zeros((1, 3, 32, 32), np.float32))
        failures.append("a wrongly shaped input was accepted")
    except ModelError as exc:
        print(f"wrong input shape refused in one line: {exc}")

    slots = len(backend._slots)  # noqa: SLF001 - the check reports the backend's own bookkeeping
    closer = threading.Thread(target=backend.close)  # close from a thread that never ran infer
    closer.start()
    closer.join()
    print(f"{frames} frames from {args.threads} threads on {slots} slot(s) (limit {args.contexts}), "
          f"{trt.Context.launches} kernel launches, {wall:.2f} s wall ({frames / wall:.0f} FPS)")
    print(f"infer latency at {args.size}, one thread: median {statistics.median(alone):.2f} ms, "
          f"p90 {np.percentile(alone, 90):.2f} ms; under {args.threads} verifying threads: median "
          f"{statistics.median(latencies):.2f} ms (H2D {np.prod(shapes['images']) * 4 / 1e6:.1f} MB, "
          f"D2H {(np.prod(shapes['output0']) + np.prod(shapes['output1'])) * 4 / 1e6:.1f} MB, host copy of outputs)")
    if slots > args.contexts:
        failures.append(f"{slots} slots opened, limit {args.contexts}")
    if trt.Context.launches != frames + args.frames:
        failures.append(f"{trt.Context.launches} launches for {frames} frames")
    failures += [f"CUDA context left current after infer: {w}" for w in leaked_contexts[:3]]
    for f in failures[:10]:
        print(f"FAIL {f}")
    print("pycuda check:", "FAILED" if failures else "passed", f"({len(failures)} problems)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
