"""Instance masks as crops in original-image pixels, sampled straight from the prototypes.

A prototype-mask model gives each instance the mask ``sigmoid(coefficients . protos)`` at
prototype resolution (input / 4), cropped to its box. The usual recipe upsamples every mask to
the input size, crops it, strips the letterbox padding and resizes again to the original image:
100 masks at 640 x 640 are 160 MB of float work per frame. Here each instance is computed only
where it can be non-empty, and only once:

1. its region is the original pixels whose centre lies inside its box (``pixel_regions``);
2. its logits are ``coefficients @ protos`` on the small prototype window that covers the
   region plus the bilinear neighbours;
3. that window is sampled bilinearly at each region pixel's centre through the exact chain
   original (u + 0.5) -> input (u + 0.5) * gain + pad -> prototype input / stride - 0.5 (cell
   centres at (i + 0.5) * stride, as ``cv2.resize`` places them), so that the result is what
   resizing the full mask to the input and then to the original would give, without either;
4. the logits are compared with ``log(t / (1 - t))``: the sigmoid is monotonic, so
   ``sigmoid(x) > t`` exactly when ``x > logit(t)``, and no sigmoid is computed.

Sampling (step 3) has two exact implementations. ``cv2.resize`` with ``fx = stride / gain``
samples window cell coordinate ``(j + 0.5) / fx - 0.5`` at output column ``j``, which is the
chain above shifted by ``(pad - stride * window_start) / gain`` pixels; where that shift is a
whole number the crop is a plain slice of the resized window. That holds for every window start
when 1 / gain is an integer (640x480, 1280x720, 1920x1080 into 640) and for every few starts in
many other cases (``ProtoGrid.phase``). It is about 6x faster per pixel than ``cv2.warpAffine``
on a 2-core CPU (0.2 against 1.4 ns), which matters: with Soft-NMS keeping 100 overlapping
instances the crops of one 640 frame add up to 1 to 4 million pixels. Where no aligned start
exists (e.g. 500x333 images, gain 1.28, odd padding) ``cv2.warpAffine`` with ``WARP_INVERSE_MAP``
samples the window at arbitrary offsets instead (its coordinates are fixed-point, 1/32 cell).

At the prototype grid's edges both reproduce the clamping of ``cv2.resize``: windows are padded
by edge replication (``copyMakeBorder`` / ``BORDER_REPLICATE``), so instances touching the image
border agree with the full-resolution reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
import numpy.typing as npt

from edgeseg.geometry import Letterbox

#: Prototype cells added on each side of a ``warpAffine`` window beyond the bilinear
#: neighbours, so that OpenCV's fixed-point coordinate rounding never reaches past the window.
WINDOW_MARGIN = 1
#: Bilinear sampling reads the cell at floor(p) and the next one: a window ends 2 past floor(p).
BILINEAR_REACH = 2
#: Extra cell at the end of a ``resize`` window. With it, the resized window (rounded to whole
#: pixels) always reaches the region's last pixel when ``fx = stride / gain >= MIN_RESIZE_FX``:
#: the last sample lies before window cell ``Sw - 2``, so its output column is below
#: ``(Sw - 1.5) * fx - 0.5``, and the output has at least ``Sw * fx - 0.5`` columns.
RESIZE_SLACK = 1
#: Smallest ``fx`` for which the above holds; images enlarged more than 6x (``fx < 2/3``, under
#: about 107 pixels into 640) use ``warpAffine``.
MIN_RESIZE_FX = 2.0 / 3.0
#: Longest period, in prototype cells, of aligned window starts worth using; beyond it the
#: windows grow too much and ``warpAffine`` is used.
MAX_ALIGN_PERIOD = 8
#: Tolerance when deciding that a shift in pixels is a whole number.
ALIGN_TOLERANCE = 1e-6
#: Sampling flags for the general path: the matrix maps region pixels to window coordinates.
WARP_FLAGS = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float32]
RegionArray = npt.NDArray[np.int32]


def logit(probability: float) -> float:
    """The logit whose sigmoid is ``probability``; +-inf at 1 and 0."""
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"mask threshold must be a probability in [0, 1], got {probability}")
    if probability == 0.0:
        return -math.inf
    if probability == 1.0:
        return math.inf
    return math.log(probability / (1.0 - probability))


def pixel_regions(boxes: FloatArray, image_size: tuple[int, int]) -> RegionArray:
    """(n, 4) int32 x0, y0, x1, y1 (exclusive): the pixels whose centre lies in each box.

    Pixel ``u`` has its centre at ``u + 0.5``; it belongs to [bx0, bx1) when
    ``ceil(bx0 - 0.5) <= u < ceil(bx1 - 0.5)``. Clipped to the image; a box narrower than a
    pixel may own no pixel (an empty region, x1 == x0).
    """
    h, w = image_size
    regions = np.ceil(np.asarray(boxes, np.float64) - 0.5)
    np.clip(regions[:, 0::2], 0, w, out=regions[:, 0::2])
    np.clip(regions[:, 1::2], 0, h, out=regions[:, 1::2])
    regions[:, 2:] = np.maximum(regions[:, 2:], regions[:, :2])
    return regions.astype(np.int32)


@dataclass(frozen=True)
class ProtoGrid:
    """How one frame's original pixels land on its prototype grid, per axis (x, y).

    Attributes:
        size: (pw, ph) prototype cells.
        scale, shift: original pixel ``u`` samples prototype coordinate ``scale * u + shift``.
        stride: input pixels per prototype cell.
        pad: letterbox padding (pad_x, pad_y) in input pixels.
        gain: letterbox gain.
        phase: per axis, an aligned window start (see module docstring), or None where
            ``resize`` cannot be used (no aligned start, or ``fx < MIN_RESIZE_FX``).
        period: cells between aligned window starts.
    """

    size: tuple[int, int]
    scale: tuple[float, float]
    shift: tuple[float, float]
    stride: tuple[float, float]
    pad: tuple[int, int]
    gain: float
    phase: tuple[int, int] | None
    period: tuple[int, int]

    @classmethod
    def of(cls, letterbox: Letterbox, proto_size: tuple[int, int]) -> ProtoGrid:
        """The grid of a (ph, pw) prototype tensor for a frame letterboxed by ``letterbox``."""
        ph, pw = proto_size
        input_h, input_w = letterbox.input_size
        stride = (input_w / pw, input_h / ph)
        pad = (letterbox.pad_x, letterbox.pad_y)
        gain = letterbox.gain
        scale = (gain / stride[0], gain / stride[1])
        shift = ((0.5 * gain + pad[0]) / stride[0] - 0.5, (0.5 * gain + pad[1]) / stride[1] - 0.5)
        enlarged = min(stride) / gain < MIN_RESIZE_FX
        aligned = [None if enlarged else _aligned_start(p, s, gain) for p, s in zip(pad, stride)]
        ax, ay = aligned
        phase = (ax[0], ay[0]) if ax is not None and ay is not None else None
        period = (ax[1], ay[1]) if ax is not None and ay is not None else (1, 1)
        return cls((pw, ph), scale, shift, stride, pad, gain, phase, period)


@lru_cache(maxsize=64)
def _aligned_start(pad: int, stride: float, gain: float) -> tuple[int, int] | None:
    """(phase, period): window starts ``phase + period * m`` whose shift is whole; or None.

    The shift of a window starting at cell ``k`` is ``(pad - stride * k) / gain`` pixels.
    """

    def whole(value: float) -> bool:
        return abs(value - round(value)) < ALIGN_TOLERANCE

    period = next((p for p in range(1, MAX_ALIGN_PERIOD + 1) if whole(stride * p / gain)), None)
    if period is None:
        return None
    phase = next((k for k in range(period) if whole((pad - stride * k) / gain)), None)
    return None if phase is None else (phase, period)


def crop_masks(
    coefficients: FloatArray,
    protos: FloatArray,
    regions: RegionArray,
    letterbox: Letterbox,
    threshold: float,
    resize: bool = True,
    workspace: FloatArray | None = None,
) -> tuple[BoolArray, ...]:
    """One boolean crop per instance, ``crops[i]`` covering ``regions[i]`` of the original image.

    Args:
        coefficients: (n, k) mask coefficients of the kept instances.
        protos: (k, ph, pw) prototype logits of the frame.
        regions: (n, 4) int32 from ``pixel_regions``.
        letterbox: the mapping the frame was preprocessed with.
        threshold: mask probability threshold t; a pixel is set where sigmoid(logit) > t.
        resize: use the ``cv2.resize`` path where the geometry allows (False: always
            ``warpAffine``; both are exact, this exists to compare them).
        workspace: a (ph * pw, k) float32 array reused across frames for the cells-last copy
            of ``protos`` (``Postprocessor`` keeps one per prototype shape); None allocates.
    """
    k, ph, pw = protos.shape
    n = len(regions)
    if coefficients.shape != (n, k):
        raise ValueError(f"coefficients {coefficients.shape} must be ({n}, {k})")
    if n == 0:
        return ()
    grid = ProtoGrid.of(letterbox, (ph, pw))
    cut = logit(threshold)
    # Cells-last layout once per frame (one cv2.transpose, ~0.2 ms at 640): a window is then a
    # strided view whose logits are one small matrix-vector product per window row, with no
    # gather copy. One large product per window instead (k x window cells) wakes OpenBLAS's
    # threads, which on a busy 2-core CPU was measured 20x slower, not faster.
    flat = np.ascontiguousarray(protos).reshape(k, ph * pw)
    if workspace is not None and workspace.shape == (ph * pw, k) and workspace.dtype == np.float32:
        cells = cv2.transpose(flat, workspace).reshape(ph, pw, k)
    else:
        cells = cv2.transpose(flat).reshape(ph, pw, k)
    coefficients = np.ascontiguousarray(coefficients, np.float32)

    scale = np.array(grid.scale)
    shift = np.array(grid.shift)
    first = regions[:, :2].astype(np.float64) * scale + shift
    last = (regions[:, 2:].astype(np.float64) - 1.0) * scale + shift
    need_lo = np.floor(first).astype(np.int64)
    need_hi = np.floor(last).astype(np.int64) + BILINEAR_REACH
    size = np.array(grid.size)
    aligned = resize and grid.phase is not None
    if aligned:
        phase, period = np.array(grid.phase), np.array(grid.period)
        lo = phase + period * np.floor_divide(need_lo - phase, period)
        hi = need_hi + RESIZE_SLACK
        offsets = regions[:, :2] + np.rint((np.array(grid.pad) - np.array(grid.stride) * lo) / grid.gain)
    else:
        lo, hi = need_lo - WINDOW_MARGIN, need_hi + WINDOW_MARGIN
        offsets = np.zeros_like(lo)
    clip_lo, clip_hi = np.clip(lo, 0, size - 1), np.clip(hi, 1, size)
    # Region pixel 0 samples this coordinate of the (clipped) window; for warpAffine.
    origin = (first - clip_lo).tolist()
    rows = np.concatenate([regions, clip_lo, clip_hi, clip_lo - lo, hi - clip_hi, offsets], axis=1)

    crops: list[BoolArray] = []
    inv_x, inv_y = 1.0 / grid.scale[0], 1.0 / grid.scale[1]
    for i, row in enumerate(rows.astype(np.int64).tolist()):
        x0, y0, x1, y1, wx0, wy0, wx1, wy1, left, top, right, bottom, ox, oy = row
        width, height = x1 - x0, y1 - y0
        if width <= 0 or height <= 0:
            crops.append(np.zeros((max(height, 0), max(width, 0)), np.bool_))
            continue
        logits = cells[wy0:wy1, wx0:wx1] @ coefficients[i]
        if aligned:
            if left or top or right or bottom:
                logits = cv2.copyMakeBorder(logits, top, bottom, left, right, cv2.BORDER_REPLICATE)
            sampled = cv2.resize(logits, None, fx=inv_x, fy=inv_y, interpolation=cv2.INTER_LINEAR)
            sampled = sampled[oy : oy + height, ox : ox + width]
        else:
            matrix = np.array([[grid.scale[0], 0.0, origin[i][0]], [0.0, grid.scale[1], origin[i][1]]])
            sampled = cv2.warpAffine(
                logits, matrix, (width, height), flags=WARP_FLAGS, borderMode=cv2.BORDER_REPLICATE
            )
        crops.append(sampled > cut)
    return tuple(crops)
