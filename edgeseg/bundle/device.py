"""What this device can run: the TensorRT version and GPU that a plan must match.

Probed lazily and defensively: on a machine without TensorRT or a GPU every field is None and
the bundle falls back to its ONNX Runtime engines. GPU facts come from pycuda (installed with
TensorRT on Jetson and desktops), else from NVML, and say which.
"""

from __future__ import annotations

import functools
import logging
import platform
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceInfo:
    """The facts engine compatibility is decided on."""

    tensorrt: str | None = None
    onnxruntime: str | None = None
    gpu: str | None = None
    compute_capability: tuple[int, int] | None = None
    gpu_source: str = ""

    def describe(self) -> str:
        gpu = f"{self.gpu} (sm {self.compute_capability[0]}{self.compute_capability[1]})" \
            if self.gpu and self.compute_capability else "no GPU"
        trt = f"TensorRT {self.tensorrt}" if self.tensorrt else "no TensorRT"
        return f"{platform.machine()}, {gpu}, {trt}, ONNX Runtime {self.onnxruntime or 'absent'}"


def _tensorrt_version() -> str | None:
    try:
        import tensorrt  # noqa: PLC0415 - optional, heavy
    except ImportError:
        return None
    version = getattr(tensorrt, "__version__", None)
    return str(version) if version else None


def _onnxruntime_version() -> str | None:
    try:
        import onnxruntime  # noqa: PLC0415
    except ImportError:
        return None
    return str(onnxruntime.__version__)


def _gpu_from_pycuda() -> tuple[str, tuple[int, int]] | None:
    try:
        import pycuda.driver as cuda  # noqa: PLC0415
    except ImportError:
        return None
    try:
        cuda.init()
        dev = cuda.Device(0)
        major, minor = dev.compute_capability()
        return str(dev.name()), (int(major), int(minor))
    except Exception as exc:  # pycuda raises its own LogicError/RuntimeError kinds
        log.debug("pycuda could not describe GPU 0: %s", exc)
        return None


def _gpu_from_nvml() -> tuple[str, tuple[int, int]] | None:
    try:
        import pynvml  # noqa: PLC0415 - from nvidia-ml-py
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = pynvml.nvmlDeviceGetName(handle)
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
        return (name.decode() if isinstance(name, bytes) else str(name)), (int(major), int(minor))
    except Exception as exc:  # NVMLError and its many subclasses
        log.debug("NVML could not describe GPU 0: %s", exc)
        return None


@functools.lru_cache(maxsize=1)
def probe_device() -> DeviceInfo:
    """This device's TensorRT, ONNX Runtime and GPU (cached: they do not change while running)."""
    gpu, source = _gpu_from_pycuda(), "pycuda"
    if gpu is None:
        gpu, source = _gpu_from_nvml(), "nvml"
    return DeviceInfo(
        tensorrt=_tensorrt_version(),
        onnxruntime=_onnxruntime_version(),
        gpu=gpu[0] if gpu else None,
        compute_capability=gpu[1] if gpu else None,
        gpu_source=source if gpu else "",
    )
