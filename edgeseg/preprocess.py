"""Letterbox an image into the network's input tensor, reusing preallocated buffers.

One pass per frame: resize (aspect kept) into a cached uint8 buffer, copy into a padded canvas
whose border was painted once, then convert channel order, layout and scale in a single numpy
ufunc call that writes straight into a pooled float32 NCHW tensor. Buffers are keyed by
resolution, so an adaptive switch of input size allocates once per size, not per frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from edgeseg.geometry import Letterbox
from edgeseg.model import Normalization
from edgeseg.pipeline.pool import DEFAULT_POOL_SIZE, BufferPool
from edgeseg.structures import ImageArray

Tensor = npt.NDArray[np.float32]


@dataclass
class _Canvas:
    """The padded uint8 image for one (image size, input size) pair."""

    letterbox: Letterbox
    canvas: ImageArray
    resized: ImageArray


class Preprocessor:
    """Turns BGR frames into normalised NCHW tensors for one model's normalisation.

    Not thread-safe: one capture thread owns it; the tensors it returns come from a pool and go
    back with ``release`` once inference is done with them.
    """

    def __init__(self, normalization: Normalization, pool_size: int = DEFAULT_POOL_SIZE):
        self.norm = normalization
        self._pool_size = pool_size
        self._pools: dict[tuple[int, int], BufferPool] = {}
        self._canvases: dict[tuple[tuple[int, int], tuple[int, int]], _Canvas] = {}
        n = normalization
        self._mul = (np.float32(n.scale) / np.asarray(n.std, np.float32)).reshape(3, 1, 1)
        self._sub = (np.asarray(n.mean, np.float32) / np.asarray(n.std, np.float32)).reshape(3, 1, 1)
        self._uniform = bool(np.all(self._mul == self._mul[0])) and not np.any(self._sub)

    def pool(self, input_size: tuple[int, int]) -> BufferPool:
        """The tensor pool of one input resolution, created on first use."""
        pool = self._pools.get(input_size)
        if pool is None:
            pool = BufferPool((1, 3, *input_size), np.float32, self._pool_size)
            self._pools[input_size] = pool
        return pool

    def _canvas(self, image_size: tuple[int, int], input_size: tuple[int, int]) -> _Canvas:
        key = (image_size, input_size)
        c = self._canvases.get(key)
        if c is None:
            lb = Letterbox.fit(image_size, input_size)
            canvas = np.full((*input_size, 3), self.norm.pad_value, np.uint8)
            c = _Canvas(lb, canvas, np.empty((*lb.resized, 3), np.uint8))
            if len(self._canvases) > 8:  # sources rarely change size; keep the cache small
                self._canvases.clear()
            self._canvases[key] = c
        return c

    def __call__(
        self, image: ImageArray, input_size: tuple[int, int], timeout: float | None = None
    ) -> tuple[Tensor, Letterbox] | None:
        """A pooled (1, 3, H, W) tensor holding ``image`` letterboxed, and its geometry.

        Returns None when every pooled tensor is in use for longer than ``timeout``.
        """
        tensor = self.acquire(input_size, timeout)
        if tensor is None:
            return None
        return tensor, self.fill(image, tensor)

    def acquire(self, input_size: tuple[int, int], timeout: float | None = None) -> Tensor | None:
        """A free pooled tensor of ``input_size``; waiting here is back-pressure, not work."""
        return self.pool(input_size).acquire(timeout)  # type: ignore[return-value]

    def fill(self, image: ImageArray, tensor: Tensor) -> Letterbox:
        """Letterbox ``image`` into ``tensor`` (from ``acquire``) and return the geometry."""
        input_size = (tensor.shape[2], tensor.shape[3])
        c = self._canvas((image.shape[0], image.shape[1]), input_size)
        lb = c.letterbox
        rh, rw = lb.resized
        if (rh, rw) == (image.shape[0], image.shape[1]):
            c.resized[...] = image
        else:
            cv2.resize(image, (rw, rh), dst=c.resized, interpolation=cv2.INTER_LINEAR)
        c.canvas[lb.pad_y : lb.pad_y + rh, lb.pad_x : lb.pad_x + rw] = c.resized
        hwc = c.canvas[:, :, ::-1] if self.norm.rgb else c.canvas
        chw = hwc.transpose(2, 0, 1)
        out = tensor[0]
        if self._uniform:
            np.multiply(chw, self._mul[0, 0, 0], out=out, casting="unsafe")
        else:
            np.multiply(chw, self._mul, out=out, casting="unsafe")
            np.subtract(out, self._sub, out=out)
        return lb

    def release(self, tensor: Tensor) -> None:
        """Give a tensor from ``__call__`` back to its pool."""
        self.pool((tensor.shape[2], tensor.shape[3])).release(tensor)
