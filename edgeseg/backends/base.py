"""The inference backend interface: arrays in, arrays out, nothing else.

A backend knows nothing about boxes or masks: it loads a network, reports its tensors and runs
it. Decoding and postprocessing are the same for every backend, which is what lets the ONNX
Runtime path serve as the twin against which the TensorRT path is checked.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import List, Optional, Union

import numpy as np
import numpy.typing as npt

from edgeseg.errors import ModelError
from edgeseg.resources import Closeable

#: A tensor dimension: an int, or a name/None where the model leaves it dynamic.
Dim = Union[int, str, None]


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape and element type of one network input or output."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) and d > 0 for d in self.shape)


@dataclass(frozen=True)
class NetworkInfo:
    """What a loaded network looks like from outside.

    Attributes:
        path: the file it was loaded from.
        inputs, outputs: tensors in the network's order.
        metadata: the model's key/value metadata (ONNX ``metadata_props``).
        provider: what actually executes it (e.g. "CPUExecutionProvider", "TensorRT 10.3").
    """

    path: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    metadata: dict[str, str] = field(default_factory=dict)
    provider: str = ""


#: One frame's outputs, in ``NetworkInfo.outputs`` order, each with a leading dimension of 1.
FrameOutputs = List[npt.NDArray[np.float32]]


def leading_dim(info: NetworkInfo) -> Optional[int]:
    """The static batch dimension of the network's image input, or None where it is symbolic."""
    shape = info.inputs[0].shape if info.inputs else ()
    dim = shape[0] if shape else None
    return dim if isinstance(dim, int) and dim > 0 else None


def split_frames(outputs: Sequence[npt.NDArray[np.float32]], n: int, path: str) -> List[FrameOutputs]:
    """One batched call's outputs as ``n`` frames' outputs, each sliced to a leading dim of 1.

    The slices are views of the call's own result arrays, which no later call writes (ONNX
    Runtime returns new arrays, the TensorRT backend copies its buffers out), so each frame's
    outputs stay valid as long as it is held, whatever runs next.
    """
    for i, out in enumerate(outputs):
        if out.ndim == 0 or out.shape[0] < n:
            raise ModelError(f"model {path}: output {i} has shape {tuple(out.shape)}, which does not lead with "
                             f"the batch of {n} frames")
    return [[out[k : k + 1] for out in outputs] for k in range(n)]


class Backend(Closeable, abc.ABC):
    """A loaded network that maps input arrays to output arrays."""

    info: NetworkInfo

    @abc.abstractmethod
    def infer(self, inputs: npt.NDArray[np.float32]) -> Sequence[npt.NDArray[np.float32]]:
        """Run the network on one NCHW input; outputs in ``info.outputs`` order.

        The input holds one frame, or up to ``max_batch`` frames where the network is batch-capable
        (``infer_batch`` is the way to run several: it splits the outputs per frame).
        """

    @property
    def max_batch(self) -> Optional[int]:
        """The most frames one call takes: the static batch of the network's input (1 for the usual
        batch-1 export), or None where the batch dimension is symbolic and no limit is known.
        A TensorRT engine reports its optimisation profile's maximum instead."""
        return leading_dim(self.info)

    def _static_batch(self) -> Optional[int]:
        """The batch the network must be called with (a static batch-N input: fewer frames are
        padded), or None where any batch up to ``max_batch`` runs as it is."""
        return leading_dim(self.info)

    def infer_batch(self, inputs: npt.NDArray[np.float32]) -> List[FrameOutputs]:
        """Run ``n`` frames (an (n, 3, H, W) array) and give each frame's outputs apart.

        Each frame's list is exactly what ``infer`` returns for that frame alone as a (1, 3, H, W)
        input (leading dimension 1), so the decoder and postprocessing run per frame unchanged.
        A batch-capable network gets one call; a batch-1 network is called once per frame; a
        static batch-N network is padded up to N with blank frames whose outputs are dropped.

        Raises ModelError (one line) when ``n`` is more than ``max_batch`` (above 1): the
        engine's profile cannot run it, and the caller's batch size must not exceed it.
        """
        if inputs.ndim != 4 or inputs.shape[0] < 1:
            raise ModelError(f"model {self.info.path}: infer_batch needs an (n, 3, H, W) array of at least one "
                             f"frame, got shape {tuple(inputs.shape)}")
        n = int(inputs.shape[0])
        limit = self.max_batch
        if limit == 1:
            return [list(self.infer(inputs[k : k + 1])) for k in range(n)]
        if limit is not None and n > limit:
            raise ModelError(f"model {self.info.path}: a batch of {n} frames is more than its maximum "
                             f"batch of {limit}; gather at most {limit} frames per call")
        fixed = self._static_batch()
        if fixed is not None and fixed > n:
            padded = np.zeros((fixed, *inputs.shape[1:]), dtype=inputs.dtype)
            padded[:n] = inputs
            inputs = padded
        return split_frames(self.infer(inputs), n, self.info.path)

    def close(self) -> None:
        """Release the network and its buffers. Idempotent."""
