"""Letterbox geometry: how an original image maps into the network input and back.

Preprocessing scales the image by ``gain`` (aspect preserved) and pads it to the input size;
postprocessing applies the inverse to boxes and samples masks through the same mapping. Keeping
both directions in one object means the two halves cannot disagree about the convention.

Convention: a point (x, y) in original-image pixels maps to (x * gain + pad_x, y * gain + pad_y)
in network-input pixels. Pixel centres sit at integer + 0.5 in both spaces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Letterbox:
    """The mapping from one original image size to one network input size.

    Attributes:
        image_size: (height, width) of the original image.
        input_size: (height, width) of the network input.
        gain: scale applied to the original image.
        pad_x, pad_y: left and top padding in input pixels.
        resized: (height, width) of the scaled image inside the padded input.
    """

    image_size: tuple[int, int]
    input_size: tuple[int, int]
    gain: float
    pad_x: int
    pad_y: int
    resized: tuple[int, int]

    @classmethod
    def fit(cls, image_size: tuple[int, int], input_size: tuple[int, int]) -> Letterbox:
        """Largest aspect-preserving fit of ``image_size`` into ``input_size``, centred."""
        ih, iw = image_size
        nh, nw = input_size
        if ih <= 0 or iw <= 0:
            raise ValueError(f"image size must be positive, got {image_size}")
        gain = min(nh / ih, nw / iw)
        rh, rw = int(round(ih * gain)), int(round(iw * gain))
        rh, rw = min(rh, nh), min(rw, nw)
        return cls(image_size, input_size, gain, (nw - rw) // 2, (nh - rh) // 2, (rh, rw))

    def boxes_to_image(self, boxes: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Map xyxy boxes from input pixels to original pixels, clipped to the image."""
        out = boxes.astype(np.float32, copy=True)
        out[:, [0, 2]] = (out[:, [0, 2]] - self.pad_x) / self.gain
        out[:, [1, 3]] = (out[:, [1, 3]] - self.pad_y) / self.gain
        h, w = self.image_size
        out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, w)
        out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, h)
        return out
