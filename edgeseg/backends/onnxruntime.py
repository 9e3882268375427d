"""ONNX Runtime backend: the CPU default everywhere, the CUDA provider where it is installed.

onnxruntime is imported here and only here, and this module is imported only when an ONNX
model is loaded, so ``edgeseg --help`` and the TensorRT path never pay for it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from edgeseg.backends.base import Backend, Dim, NetworkInfo, TensorInfo
from edgeseg.errors import ModelError

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]

_CPU = "CPUExecutionProvider"
_CUDA = "CUDAExecutionProvider"


def _providers(device: Device) -> list[str]:
    available = ort.get_available_providers()
    if device == "cuda" and _CUDA not in available:
        raise ModelError(f"device 'cuda' requested but this onnxruntime has only {available}")
    if device in ("auto", "cuda") and _CUDA in available:
        return [_CUDA, _CPU]
    return [_CPU]


def _dims(shape: Sequence[object]) -> tuple[Dim, ...]:
    return tuple(d if isinstance(d, (int, str)) else None for d in shape)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class OnnxRuntimeBackend(Backend):
    """An ``onnxruntime.InferenceSession`` behind the Backend interface.

    Args:
        path: the .onnx file.
        threads: intra-op threads; 0 lets ONNX Runtime use every physical core.
        device: "auto" (CUDA provider if present, else CPU), "cpu" or "cuda".
        spin: let idle pool threads spin-wait. Spinning shaves latency from a lone inference
            loop but burns the cores that the capture and output threads of the pipeline need,
            so the pipeline turns it off.

    Batches (``Backend.infer_batch``): a network whose batch dimension is symbolic runs a whole
    batch in one ``session.run`` (``max_batch`` None: no limit known); a static batch-1 network
    is run once per frame, a static batch-N one with N frames (padded).
    """

    def __init__(self, path: str | Path, threads: int = 0, device: Device = "auto", spin: bool = False):
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(path), options, providers=_providers(device))
        except Exception as exc:  # onnxruntime raises its own untyped exceptions for bad files
            raise ModelError(f"cannot load model {path}: {_first_line(exc)}") from exc
        meta = self._session.get_modelmeta()
        self.info = NetworkInfo(
            path=str(path),
            inputs=tuple(TensorInfo(i.name, _dims(i.shape), i.type) for i in self._session.get_inputs()),
            outputs=tuple(TensorInfo(o.name, _dims(o.shape), o.type) for o in self._session.get_outputs()),
            metadata=dict(meta.custom_metadata_map),
            provider=self._session.get_providers()[0],
        )
        if len(self.info.inputs) != 1:
            raise ModelError(f"model {path}: expected one image input, found {len(self.info.inputs)}")
        self._input = self.info.inputs[0].name
        self._outputs = [o.name for o in self.info.outputs]
        log.debug("loaded %s on %s", path, self.info.provider)

    def infer(self, inputs: npt.NDArray[np.float32]) -> Sequence[npt.NDArray[np.float32]]:
        result: list[npt.NDArray[np.float32]] = self._session.run(self._outputs, {self._input: inputs})
        return result

    def close(self) -> None:
        self.__dict__.pop("_session", None)
