"""OpenVINO backend: Intel and AMD x86 CPUs at their best precision, Intel GPUs and NPUs.

On an x86 box the fp32 ONNX runs about twice as fast through OpenVINO as through ONNX Runtime
where the CPU has bf16 (AVX-512 BF16, AMX), at the fp32 model's accuracy (docs/openvino.md has
the figures). The same network file serves: an .onnx read by OpenVINO's ONNX frontend, or an
OpenVINO IR (.xml beside its .bin).

openvino is imported here and only here, lazily, when this backend is constructed: ``edgeseg
--help`` and the other backends never pay for it, and a machine without it gets one line
naming the extra to install rather than an ImportError.

Precision is OpenVINO's ``INFERENCE_PRECISION_HINT``: what the device computes activations in
(weights stay as the file has them). The precision actually in force is read back from the
compiled model and reported in ``info.provider``, so a log line or ``bench`` report says what ran.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, Final, List, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

from edgeseg.backends.base import Backend, Dim, NetworkInfo, TensorInfo
from edgeseg.errors import ModelError

log = logging.getLogger(__name__)

PRECISIONS: Final = ("auto", "f32", "bf16", "f16")
#: The OPTIMIZATION_CAPABILITIES entry a device lists for each explicit precision.
_CAPABILITY: Final = {"f32": "FP32", "bf16": "BF16", "f16": "FP16"}
#: OpenVINO element type names (``ov.Type.get_type_name()``) as the precisions edgeseg reports.
_TYPE_NAMES: Final = {"f32": "f32", "bf16": "bf16", "f16": "f16"}
#: Devices made of others: their presence is that of the devices they list.
_VIRTUAL: Final = ("AUTO", "MULTI", "HETERO", "BATCH")
INSTALL_HINT: Final = "pip install 'edgeseg[openvino]'"


def import_openvino() -> ModuleType:
    """The ``openvino`` module, or ModelError (one line) where it is not installed."""
    try:
        import openvino  # noqa: PLC0415 - lazy: only a run with the openvino backend pays for it
    except ImportError:
        raise ModelError(f"model.backend 'openvino': OpenVINO is not installed ({INSTALL_HINT})") from None
    return openvino


def ov_error_line(exc: BaseException) -> str:
    """One informative line of an OpenVINO exception.

    OpenVINO's messages open with the C++ source location ("Exception from src/...") and often
    hold the cause several lines down; the ONNX frontend ends with a summary of the operators it
    could not convert, which is the line a user can act on.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if line.startswith("-- Conversion is failed for:"):
            return line.lstrip("- ")
    for line in lines:
        if not line.startswith(("Exception from", "Check '", "[ GENERAL_ERROR ]")):
            return line
    return lines[0] if lines else type(exc).__name__


def _dims(partial_shape: Any) -> Tuple[Dim, ...]:
    return tuple(d.get_length() if d.is_static else None for d in partial_shape)


def _tensor(port: Any) -> TensorInfo:
    return TensorInfo(port.get_any_name(), _dims(port.get_partial_shape()), port.get_element_type().get_type_name())


def _metadata(model: Any) -> Dict[str, str]:
    """The network's key/value metadata: ONNX ``metadata_props``, which OpenVINO's ONNX frontend
    keeps under ``rt_info['framework']`` (and ``save_model`` carries into an IR)."""
    info = model.get_rt_info()
    if "framework" not in info:
        return {}
    out: Dict[str, str] = {}
    try:
        section = info["framework"]
        keys = list(section.keys()) if hasattr(section, "keys") else list(section.value.keys())
        for key in keys:
            out[str(key)] = model.get_rt_info(["framework", key]).astype(str)
    except (RuntimeError, AttributeError, TypeError) as exc:  # an IR written without metadata
        log.debug("no readable metadata in the network's rt_info: %s", exc)
    return out


def _precision_name(value: Any) -> str:
    """An ``INFERENCE_PRECISION_HINT`` value (an ``ov.Type``) as "f32", "bf16" or "f16"."""
    name = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
    return _TYPE_NAMES.get(name, name)


def present(device: str, available: Sequence[str]) -> bool:
    """Whether ``device`` names a device OpenVINO has here: exactly, or as the plugin of an indexed
    one ("GPU" where "GPU.0" is listed). A virtual device: AUTO when one device it lists is (it
    picks among them), MULTI and HETERO when each is (they run on all of them)."""
    head, _, listed = device.partition(":")
    if head in _VIRTUAL:
        if not listed:
            return True
        found = [present(d, available) for d in listed.split(",")]
        return any(found) if head == "AUTO" else all(found)
    return device in available or any(a.split(".")[0] == device for a in available)


class OpenVinoBackend(Backend):
    """An OpenVINO compiled model behind the Backend interface.

    Args:
        path: an .onnx file or an OpenVINO IR .xml (its .bin beside it).
        device: an OpenVINO device (CPU, GPU, GPU.1, NPU, AUTO, AUTO:GPU,CPU ...).
        precision: "auto" (the device's default: bf16 on a CPU with bf16), "f32", "bf16", "f16".
        threads: CPU inference threads per request; 0 = OpenVINO's default (the physical cores).
        cache_dir: OpenVINO's compiled-model cache (CACHE_DIR); None or "" = no cache.
        workers: inference workers of the pipeline; above 1, as many CPU streams, so that
            concurrent calls run side by side instead of queueing on one stream.

    Raises ModelError (one line) for OpenVINO missing, a device not present here, a precision
    the device does not list, a file OpenVINO cannot read or compile.

    ``infer`` is thread-safe: each calling thread gets its own infer request (an infer request
    holds its buffers and runs one inference at a time); the compiled model is shared.
    """

    def __init__(
        self,
        path: Union[str, Path],
        device: str = "CPU",
        precision: str = "auto",
        threads: int = 0,
        cache_dir: Optional[str] = None,
        workers: int = 1,
    ):
        path = Path(path)
        if precision not in PRECISIONS:
            raise ModelError(f"model.openvino.precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        ov = import_openvino()
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        if path.suffix.lower() not in (".onnx", ".xml"):
            raise ModelError(f"model {path}: OpenVINO reads an .onnx file or an IR .xml")
        core = ov.Core()
        available = list(core.available_devices)
        if not present(device, available):
            raise ModelError(f"OpenVINO device {device!r} is not present here "
                             f"(available: {', '.join(available) or 'none'})")
        self._check_precision(core, device, precision)
        try:
            model = core.read_model(str(path))
        except Exception as exc:  # OpenVINO raises RuntimeError and its own types for bad files
            raise ModelError(f"cannot load model {path} with OpenVINO: {ov_error_line(exc)}") from None
        if len(model.inputs) != 1:
            raise ModelError(f"model {path}: expected one image input, found {len(model.inputs)}")
        if path.suffix.lower() == ".onnx" and any(op.get_type_name() == "FakeQuantize" for op in model.get_ops()):
            log.warning("model %s holds ONNX Q/DQ quantisation: OpenVINO runs it with its own int8 kernels, which "
                        "have given wrong outputs on such files (docs/openvino.md); check it with edgeseg eval, "
                        "or run the fp32 ONNX", path)
        config = self._compile_config(core, device, precision, threads, workers)
        cache = self._usable_cache(cache_dir)
        if cache is not None:
            config["CACHE_DIR"] = cache
        try:
            self._compiled = core.compile_model(model, device, config)
        except Exception as exc:
            raise ModelError(f"model {path}: OpenVINO cannot compile it for {device}: {ov_error_line(exc)}") from None
        self.inference_precision = self._read_precision(core, precision)
        version = str(ov.__version__).split("-")[0]
        devices = self._execution_devices(device)
        self.info = NetworkInfo(
            path=str(path),
            inputs=tuple(_tensor(p) for p in model.inputs),
            outputs=tuple(_tensor(p) for p in model.outputs),
            metadata=_metadata(model),
            provider=f"OpenVINO {version} {devices} {self.inference_precision}",
        )
        self.device = device
        self.cache_dir = cache
        self._local = threading.local()
        self._requests: List[Any] = []
        self._lock = threading.Lock()
        log.debug("loaded %s on %s", path, self.info.provider)

    # -- loading -------------------------------------------------------------------------------

    @staticmethod
    def _check_precision(core: Any, device: str, precision: str) -> None:
        """Refuse an explicit precision the device does not list among its capabilities.

        A virtual device (AUTO ...) has no capabilities of its own: the hint is passed on to the
        device it picks, which applies what it can."""
        if precision == "auto" or device.partition(":")[0] in _VIRTUAL:
            return
        try:
            capabilities = [str(c) for c in core.get_property(device, "OPTIMIZATION_CAPABILITIES")]
        except Exception:  # noqa: BLE001 - a plugin without the property: OpenVINO decides
            return
        listed = sorted(p for p, cap in _CAPABILITY.items() if cap in capabilities)
        if _CAPABILITY[precision] not in capabilities:
            raise ModelError(f"OpenVINO precision {precision!r} is not supported by {device} "
                             f"(supports: {', '.join(listed) or 'none of f32, bf16, f16'})")

    @staticmethod
    def _compile_config(core: Any, device: str, precision: str, threads: int, workers: int) -> Dict[str, Any]:
        """The compile properties: the precision hint, and on a CPU its threads and streams.

        One worker: the LATENCY hint (one stream, every thread on each inference, as ONNX Runtime
        runs). Several: as many streams, so each worker's request runs on its own; ``threads``
        is per inference, as for ONNX Runtime, so the total is threads x workers."""
        config: Dict[str, Any] = {}
        if precision != "auto":
            config["INFERENCE_PRECISION_HINT"] = precision
        try:
            supported = set(core.get_property(device, "SUPPORTED_PROPERTIES"))
        except Exception:  # noqa: BLE001 - virtual devices: pass the hints on as they are
            supported = set()
        if "PERFORMANCE_HINT" in supported:
            config["PERFORMANCE_HINT"] = "LATENCY" if workers <= 1 else "THROUGHPUT"
        if workers > 1 and "NUM_STREAMS" in supported:
            config["NUM_STREAMS"] = workers
        if threads > 0 and "INFERENCE_NUM_THREADS" in supported:
            config["INFERENCE_NUM_THREADS"] = threads * max(1, workers)
        return config

    @staticmethod
    def _usable_cache(cache_dir: Optional[str]) -> Optional[str]:
        """The cache directory, created; None (no cache, one warning) where it cannot be, so that
        a read-only home never stops a model from loading: it only costs a compile per start."""
        if not cache_dir:
            return None
        try:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("OpenVINO cache %s cannot be created (%s): compiling without a cache", cache_dir,
                        exc.strerror or exc)
            return None
        return cache_dir

    def _read_precision(self, core: Any, requested: str) -> str:
        """The precision in force: the compiled model's own, else (a virtual device, which does
        not report it) the requested one or the default of the device it runs on."""
        try:
            return _precision_name(self._compiled.get_property("INFERENCE_PRECISION_HINT"))
        except Exception:  # noqa: BLE001 - AUTO and MULTI do not expose it
            pass
        if requested != "auto":
            return requested
        try:
            device = str(self._compiled.get_property("EXECUTION_DEVICES")[0])
            return _precision_name(core.get_property(device, "INFERENCE_PRECISION_HINT"))
        except Exception:  # noqa: BLE001
            return "auto"

    def _execution_devices(self, requested: str) -> str:
        try:
            return ",".join(str(d) for d in self._compiled.get_property("EXECUTION_DEVICES")) or requested
        except Exception:  # noqa: BLE001
            return requested

    # -- running -------------------------------------------------------------------------------

    def _request(self) -> Any:
        request = getattr(self._local, "request", None)
        if request is None:
            compiled = self.__dict__.get("_compiled")
            if compiled is None:
                raise ModelError(f"model {self.info.path}: the OpenVINO backend is closed")
            request = compiled.create_infer_request()
            self._local.request = request
            with self._lock:
                self._requests.append(request)
        return request

    def infer(self, inputs: npt.NDArray[np.float32]) -> Sequence[npt.NDArray[np.float32]]:
        """Run one call; the outputs are copies (``share_outputs`` off), so they stay valid after
        the request's next inference overwrites its buffers (``split_frames`` relies on it)."""
        result = self._request().infer({0: np.ascontiguousarray(inputs, dtype=np.float32)}, share_inputs=True)
        return [result[i] for i in range(len(self.info.outputs))]

    def close(self) -> None:
        """Drop the compiled model and every thread's infer request (a new thread-local: the
        old one, and the requests it holds per thread, go with it). Idempotent."""
        lock = self.__dict__.get("_lock")
        if lock is None:
            return
        with lock:
            self._requests.clear()
            self._local = threading.local()
            self.__dict__.pop("_compiled", None)
