"""Letterbox geometry and the pooled, normalised input tensor."""

from __future__ import annotations

import numpy as np
import pytest

from edgeseg.geometry import Letterbox
from edgeseg.model import Normalization
from edgeseg.preprocess import Preprocessor


@pytest.mark.parametrize(
    "image_size, input_size, gain, pad_x, pad_y, resized",
    [
        ((480, 640), (640, 640), 1.0, 0, 80, (480, 640)),
        ((426, 640), (640, 640), 1.0, 0, 107, (426, 640)),
        ((1080, 1920), (640, 640), 1 / 3, 0, 140, (360, 640)),
        ((640, 320), (320, 320), 0.5, 80, 0, (320, 160)),
        ((100, 100), (320, 320), 3.2, 0, 0, (320, 320)),
    ],
)
def test_letterbox_fit(image_size, input_size, gain, pad_x, pad_y, resized) -> None:
    lb = Letterbox.fit(image_size, input_size)
    assert lb.gain == pytest.approx(gain)
    assert (lb.pad_x, lb.pad_y, lb.resized) == (pad_x, pad_y, resized)


def test_boxes_round_trip_and_clip() -> None:
    lb = Letterbox.fit((1080, 1920), (640, 640))
    image_boxes = np.array([[100, 200, 500, 900]], np.float32)
    input_boxes = image_boxes * lb.gain + np.array([lb.pad_x, lb.pad_y, lb.pad_x, lb.pad_y], np.float32)
    np.testing.assert_allclose(lb.boxes_to_image(input_boxes), image_boxes, atol=1e-3)
    outside = np.array([[-50, 0, 700, 700]], np.float32)
    np.testing.assert_allclose(lb.boxes_to_image(outside), [[0, 0, 1920, 1080]])


def test_tensor_is_rgb_scaled_and_padded() -> None:
    pre = Preprocessor(Normalization())
    image = np.zeros((240, 320, 3), np.uint8)
    image[..., 0] = 255  # pure blue in BGR
    out = pre(image, (320, 320))
    assert out is not None
    tensor, lb = out
    assert tensor.shape == (1, 3, 320, 320) and tensor.dtype == np.float32
    assert (lb.pad_x, lb.pad_y) == (0, 40)
    inside = tensor[0, :, 40:280, :]
    np.testing.assert_allclose(inside[2], 1.0)  # blue is the third channel in RGB
    np.testing.assert_allclose(inside[:2], 0.0)
    np.testing.assert_allclose(tensor[0, :, :40, :], 114 / 255, rtol=1e-6)


def test_mean_std_normalisation() -> None:
    norm = Normalization(scale=1.0, mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 5.0), rgb=False)
    out = Preprocessor(norm)(np.full((32, 32, 3), 50, np.uint8), (32, 32))
    assert out is not None
    np.testing.assert_allclose(out[0][0, :, 0, 0], [20.0, 7.5, 4.0])


def test_tensors_come_from_a_fixed_pool() -> None:
    pre = Preprocessor(Normalization(), pool_size=2)
    image = np.zeros((64, 64, 3), np.uint8)
    a, b = pre(image, (64, 64)), pre(image, (64, 64))
    assert a is not None and b is not None
    assert pre(image, (64, 64), timeout=0.01) is None  # both in use
    pre.release(a[0])
    c = pre(image, (64, 64))
    assert c is not None and c[0] is a[0]  # the same memory, reused
