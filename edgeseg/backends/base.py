"""The inference backend interface: arrays in, arrays out, nothing else.

A backend knows nothing about boxes or masks: it loads a network, reports its tensors and runs
it. Decoding and postprocessing are the same for every backend, which is what lets the ONNX
Runtime path serve as the twin against which the TensorRT path is checked.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Union

import numpy as np
import numpy.typing as npt

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


class Backend(Closeable, abc.ABC):
    """A loaded network that maps input arrays to output arrays."""

    info: NetworkInfo

    @abc.abstractmethod
    def infer(self, inputs: npt.NDArray[np.float32]) -> Sequence[npt.NDArray[np.float32]]:
        """Run the network on one NCHW input; outputs in ``info.outputs`` order."""

    def close(self) -> None:
        """Release the network and its buffers. Idempotent."""
