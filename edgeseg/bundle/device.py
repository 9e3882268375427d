"""What this device can run: the TensorRT version and GPU that a plan must match.

A TensorRT plan is specific to the TensorRT version and the GPU model that built it. The GPU's
*name* cannot tell models apart (the CUDA driver calls every Orin module "Orin", NVML "Orin
(nvgpu)"), so identity is what decides: the compute capability, the SM count and, on a Jetson,
the board in ``/proc/device-tree/model`` (an AGX Orin has 16 SMs, an Orin NX and an Orin Nano
8 GB 8, an Orin Nano 4 GB 4; docs/jetson.md). The name is kept for people to read.

Probed lazily and defensively: on a machine without TensorRT or a GPU every field is None and
the bundle falls back to its ONNX Runtime engines. GPU facts come from pycuda (installed on
Jetsons by ``make install``), else from NVML, and ``gpu_source`` says which; only pycuda gives
the SM count (``MULTIPROCESSOR_COUNT``), NVML has no such query. All probing goes through a
``Host`` (edgeseg.platform.host) so that ``edgeseg doctor`` can describe a recorded device.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import platform
from dataclasses import dataclass
from typing import Any

from edgeseg.bundle.manifest import BuilderRecord
from edgeseg.platform.host import Host
from edgeseg.platform.jetson import read_board, read_platform

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceInfo:
    """The facts engine compatibility is decided on."""

    tensorrt: str | None = None
    onnxruntime: str | None = None
    gpu: str | None = None
    compute_capability: tuple[int, int] | None = None
    gpu_source: str = ""
    #: Streaming multiprocessors of GPU 0 (pycuda's MULTIPROCESSOR_COUNT; None from NVML).
    sm_count: int | None = None
    #: The Jetson board (``/proc/device-tree/model``); None off-Jetson.
    board: str | None = None
    #: The installed OpenVINO's version (found without importing it); None when absent.
    openvino: str | None = None
    #: An x86 CPU (Intel, AMD): where a bundle's OpenVINO engines are preferred to ONNX Runtime's.
    x86: bool = False

    def describe(self) -> str:
        gpu = "no GPU"
        if self.gpu and self.compute_capability:
            sms = f", {self.sm_count} SMs" if self.sm_count else ""
            gpu = f"{self.gpu} (sm {self.compute_capability[0]}{self.compute_capability[1]}{sms})"
        if self.board:
            gpu = f"{self.board}, {gpu}"
        trt = f"TensorRT {self.tensorrt}" if self.tensorrt else "no TensorRT"
        ov = f", OpenVINO {self.openvino}" if self.openvino else ""
        return f"{platform.machine()}, {gpu}, {trt}, ONNX Runtime {self.onnxruntime or 'absent'}{ov}"


def _version(host: Host, module: str) -> str | None:
    mod = host.try_import(module)
    version = getattr(mod, "__version__", None) if mod is not None else None
    return str(version) if version else None


#: ``platform.machine()`` of x86 CPUs (Linux, macOS, Windows spellings).
X86_MACHINES = ("x86_64", "amd64", "i386", "i686")


def _openvino_version(host: Host) -> str | None:
    """OpenVINO's version, from its package metadata: importing openvino costs a second of start-up
    and hundreds of MB of plugins, paid only when an OpenVINO engine is loaded
    (``edgeseg.backends.openvino``). None when it is not installed (or on a recorded host)."""
    if host.recorded:
        return None
    try:
        if importlib.util.find_spec("openvino") is None:
            return None
    except (ImportError, ValueError):
        return None
    try:
        from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415 - 3.8 has it

        return version("openvino")
    except PackageNotFoundError:
        return "unknown"


def _gpu_from_pycuda(host: Host) -> tuple[str, tuple[int, int], int | None] | None:
    cuda: Any = host.try_import("pycuda.driver")
    if cuda is None:
        return None
    try:
        cuda.init()
        dev = cuda.Device(0)
        major, minor = dev.compute_capability()
        sms = dev.get_attribute(cuda.device_attribute.MULTIPROCESSOR_COUNT)
        return str(dev.name()), (int(major), int(minor)), int(sms)
    except Exception as exc:  # pycuda raises its own LogicError/RuntimeError kinds
        log.debug("pycuda could not describe GPU 0: %s", exc)
        return None


def _gpu_from_nvml(host: Host) -> tuple[str, tuple[int, int], int | None] | None:
    pynvml: Any = host.try_import("pynvml")  # from nvidia-ml-py
    if pynvml is None:
        return None
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = pynvml.nvmlDeviceGetName(handle)
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
        return (name.decode() if isinstance(name, bytes) else str(name)), (int(major), int(minor)), None
    except Exception as exc:  # NVMLError and its many subclasses
        log.debug("NVML could not describe GPU 0: %s", exc)
        return None


def describe_device(host: Host) -> DeviceInfo:
    """``host``'s TensorRT, ONNX Runtime, GPU identity and (on a Jetson) board."""
    gpu, source = _gpu_from_pycuda(host), "pycuda"
    if gpu is None:
        gpu, source = _gpu_from_nvml(host), "nvml"
    board = read_board(host) if read_platform(host).is_jetson else None
    return DeviceInfo(
        tensorrt=_version(host, "tensorrt"),
        onnxruntime=_version(host, "onnxruntime"),
        gpu=gpu[0] if gpu else None,
        compute_capability=gpu[1] if gpu else None,
        gpu_source=source if gpu else "",
        sm_count=gpu[2] if gpu else None,
        board=board,
        openvino=_openvino_version(host),
        x86=host.machine.lower() in X86_MACHINES,
    )


@functools.lru_cache(maxsize=1)
def probe_device() -> DeviceInfo:
    """This device's TensorRT, ONNX Runtime and GPU (cached: they do not change while running)."""
    return describe_device(Host())


def builder_record(device: DeviceInfo, tensorrt_version: str) -> BuilderRecord:
    """What a TensorRT plan built on ``device`` records: everything ``incompatibility`` compares."""
    return BuilderRecord(
        runtime="tensorrt", version=tensorrt_version, gpu=device.gpu,
        compute_capability=device.compute_capability, sm_count=device.sm_count, board=device.board,
    )
