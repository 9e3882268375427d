"""Zone rasters and the per-frame geometry: how much of each mask is in a zone, box anchors,
which side of a line a centroid is on.

A zone becomes a boolean image of the frame's size once (``cv2.fillPoly``, cached per polygon
and frame size); a mask's fraction inside it is then ``count(crop & zone[window]) / count(crop)``
on the crop's window only, never on a full-frame mask. Each zone is tested against all instances
at once: the zone pixels in every crop's window come from the zone's integral image in a few
whole-array operations, so a window entirely inside or outside the zone costs no pixel work at
all, and only crops straddling the zone's outline are intersected, on the part of their window
inside the zone's bounding box. ``Observations`` holds what every zone's test shares in a frame.

Pixel convention: OpenCV's, pixel (x, y) is the point (x, y). The raster counts a pixel as
inside when the polygon's outline passes through it, so it is at most about a pixel more generous
than ``cv2.pointPolygonTest`` along the outline.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
import numpy.typing as npt

from edgeseg.structures import Instances

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Sub-pixel bits given to ``cv2.fillPoly`` (1/16 pixel): normalised corners are rarely integers.
_SHIFT = 4
#: Rasters kept (zones x frame sizes), shared by ``check_against`` at start, the tracker and a
#: tracker rebuilt on reload; bounded because a 4K raster is 8 MB.
_CACHE_SIZE = 16


def rasterize(points: Sequence[Tuple[float, float]], frame_size: Tuple[int, int]) -> BoolArray:
    """The polygon ``points`` (pixels) as a (height, width) boolean image, clipped to the frame.

    Cached: the returned array is shared and read-only.
    """
    return _raster(tuple((float(x), float(y)) for x, y in points), (int(frame_size[0]), int(frame_size[1])))


@lru_cache(maxsize=_CACHE_SIZE)
def _raster(points: Tuple[Tuple[float, float], ...], frame_size: Tuple[int, int]) -> BoolArray:
    image = np.zeros(frame_size, np.uint8)
    pts = np.round(np.asarray(points, np.float64) * (1 << _SHIFT)).astype(np.int32)
    cv2.fillPoly(image, [pts], 1, lineType=cv2.LINE_8, shift=_SHIFT)
    out = image.view(np.bool_)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class ZoneRaster:
    """One zone at one frame size.

    Attributes:
        mask: (height, width) bool, the zone's pixels (read-only, shared).
        integral: summed-area table of ``mask`` over ``bbox`` (int32, one row and column more than
            the box): the count of zone pixels in any window in four reads, in memory that grows
            with the zone rather than the frame.
        bbox: x0, y0, x1, y1 (exclusive) of the zone's pixels; all zeros when it covers none.
    """

    mask: BoolArray
    integral: npt.NDArray[np.int32]
    bbox: Tuple[int, int, int, int]

    @classmethod
    def build(cls, points: Sequence[Tuple[float, float]], frame_size: Tuple[int, int]) -> ZoneRaster:
        mask = rasterize(points, frame_size)
        ys = np.flatnonzero(mask.any(axis=1))
        xs = np.flatnonzero(mask.any(axis=0))
        bbox = (int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1) if len(xs) else (0, 0, 0, 0)
        x0, y0, x1, y1 = bbox
        if x1 == 0:
            return cls(mask, np.zeros((1, 1), np.int32), bbox)
        window = np.ascontiguousarray(mask[y0:y1, x0:x1]).view(np.uint8)
        integral = np.asarray(cv2.integral(window, sdepth=cv2.CV_32S), np.int32)
        return cls(mask, integral, bbox)

    @property
    def empty(self) -> bool:
        return self.bbox[2] == 0

    def window_counts(self, windows: npt.NDArray[np.integer]) -> IntArray:
        """Zone pixels in each window x0, y0, x1, y1 (exclusive, x1 >= x0, y1 >= y0); (n,).

        A handful of whole-array operations: at 50 windows their per-call overhead is the cost.
        """
        bx0, by0, bx1, by1 = self.bbox
        # corners relative to the zone's box, clipped to it: outside it there is no zone
        r = np.minimum(np.maximum(windows - np.array([bx0, by0, bx0, by0]), 0), [bx1 - bx0, by1 - by0] * 2)
        # flat indices of the table's corners (y1, x1), (y0, x1), (y1, x0), (y0, x0), then their sum
        reads = self.integral.ravel().take(r @ _corner_gather(self.integral.shape[1]))
        return np.asarray(reads @ _CORNER_SIGNS, np.int64)


#: Signs of the summed-area table's four corner reads.
_CORNER_SIGNS = np.array([1, -1, -1, 1], np.int64)


@lru_cache(maxsize=_CACHE_SIZE)
def _corner_gather(stride: int) -> IntArray:
    """(4, 4): x0, y0, x1, y1 (rows) @ this = flat indices of the four corners (columns)."""
    return np.array([[0, 0, 1, 1], [0, stride, 0, stride], [1, 1, 0, 0], [stride, 0, stride, 0]], np.int64)


def mask_fractions(
    zone: ZoneRaster, masks: Sequence[BoolArray], mask_boxes: npt.NDArray[np.integer], areas: IntArray,
    select: Optional[BoolArray] = None,
) -> FloatArray:
    """Fraction of each mask's area inside ``zone``: (n,) in 0..1, for crops ``masks[i]`` covering
    ``mask_boxes[i]`` with ``areas[i]`` pixels set (0 gives 0). ``select`` limits the pixel work
    to some of them (the others may come out 0 or 1 from the shortcuts only).

    A crop whose window holds no zone pixel is 0 and one whose window is all zone is 1, both
    from the integral image; only crops straddling the zone's outline are intersected, on the
    part of the window inside the zone's bounding box.
    """
    n = len(masks)
    out = np.zeros(n, np.float64)
    if n == 0 or zone.empty:
        return out
    boxes = np.asarray(mask_boxes, np.int64)
    counts = zone.window_counts(boxes)
    window_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    full = (counts == window_area) & (window_area > 0)
    out[full] = 1.0
    straddling = (counts > 0) & ~full & (areas > 0)
    if select is not None:
        straddling &= select
    zx0, zy0, zx1, zy1 = zone.bbox
    for i in np.flatnonzero(straddling).tolist():
        mx0, my0, mx1, my1 = boxes[i].tolist()
        x0, y0, x1, y1 = max(mx0, zx0), max(my0, zy0), min(mx1, zx1), min(my1, zy1)
        crop = masks[i][y0 - my0 : y1 - my0, x0 - mx0 : x1 - mx0]
        out[i] = np.count_nonzero(crop & zone.mask[y0:y1, x0:x1]) / float(areas[i])
    out[areas <= 0] = 0.0
    return out


def box_windows(boxes: npt.NDArray[np.floating], frame_size: Tuple[int, int]) -> IntArray:
    """The integer pixel windows x0, y0, x1, y1 (exclusive) that float xyxy boxes cover, clipped."""
    h, w = frame_size
    windows = np.concatenate([np.floor(boxes[:, :2]), np.ceil(boxes[:, 2:])], axis=1)
    windows[:, 2:] = np.maximum(windows[:, 2:], windows[:, :2])  # a malformed box covers nothing
    return np.fmin(np.fmax(windows, 0), [w, h, w, h]).astype(np.int64)  # fmax: a NaN becomes 0


def box_anchors(boxes: npt.NDArray[np.floating], frame_size: Tuple[int, int]) -> IntArray:
    """The pixel (x, y) of each box's bottom centre: column floor((x0 + x1) / 2), the box's last
    row ceil(y1) - 1, clipped to the frame; (n, 2)."""
    h, w = frame_size
    xy = np.stack([np.floor((boxes[:, 0] + boxes[:, 2]) / 2.0), np.ceil(boxes[:, 3]) - 1], axis=1)
    return np.fmin(np.fmax(xy, 0), [w - 1, h - 1]).astype(np.int64)  # fmax: a NaN becomes 0


@dataclass(frozen=True)
class LineGeometry:
    """One line at one frame size, in pixels: from ``a`` to ``b``."""

    a: Tuple[float, float]
    b: Tuple[float, float]

    @property
    def length(self) -> float:
        return float(np.hypot(self.b[0] - self.a[0], self.b[1] - self.a[1]))

    def signed_distances(self, points: npt.NDArray[np.floating]) -> FloatArray:
        """Signed distance of each (x, y) from the infinite line, in pixels: negative on its left,
        positive on its right, seen from ``a`` towards ``b`` (image y grows downwards)."""
        (ax, ay), (bx, by) = self.a, self.b
        dx, dy = bx - ax, by - ay
        pts = np.asarray(points, np.float64).reshape(-1, 2)
        return (dx * (pts[:, 1] - ay) - dy * (pts[:, 0] - ax)) / self.length

    @property
    def normal(self) -> Tuple[float, float, float]:
        """(nx, ny, c) with ``signed distance = nx * x + ny * y + c``, to test many lines at once."""
        (ax, ay), (bx, by) = self.a, self.b
        dx, dy, length = bx - ax, by - ay, self.length
        return -dy / length, dx / length, (dy * ax - dx * ay) / length

    def crosses_segment(self, p: Tuple[float, float], q: Tuple[float, float], dp: float, dq: float) -> bool:
        """Whether the move p -> q, with p and q strictly on opposite sides (signed distances
        ``dp``, ``dq``), passes through the segment a-b rather than the line beyond its ends."""
        t = dp / (dp - dq)
        x = p[0] + t * (q[0] - p[0])
        y = p[1] + t * (q[1] - p[1])
        (ax, ay), (bx, by) = self.a, self.b
        dx, dy = bx - ax, by - ay
        u = ((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy)
        return 0.0 <= u <= 1.0


class Observations:
    """What the zone tests need of some instances of one frame, computed once and shared by
    every zone: boxes, their pixel windows and bottom-centre anchors, mask crops and areas.

    Args:
        instances: the frame's instances.
        indices: which of them (for a tracker: the instances its tracks matched).
    """

    def __init__(self, instances: Instances, indices: npt.NDArray[np.integer]) -> None:
        self.index = np.asarray(indices, np.int64)
        self.frame_size = instances.image_size
        self.boxes = instances.boxes[self.index]
        self.has_masks = instances.has_masks
        self.masks: List[BoolArray] = [instances.masks[i] for i in self.index.tolist()] if self.has_masks else []
        self.mask_boxes = instances.mask_boxes[self.index] if self.has_masks else np.zeros((0, 4), np.int32)
        self._areas: Optional[IntArray] = None
        self._windows: Optional[IntArray] = None
        self._anchors: Optional[IntArray] = None

    def __len__(self) -> int:
        return len(self.index)

    @property
    def areas(self) -> IntArray:
        """Mask pixel counts (zeros without masks)."""
        if self._areas is None:
            self._areas = (
                np.fromiter((np.count_nonzero(m) for m in self.masks), np.int64, len(self.masks))
                if self.has_masks else np.zeros(len(self.index), np.int64)
            )
        return self._areas

    @property
    def windows(self) -> IntArray:
        if self._windows is None:
            self._windows = box_windows(self.boxes, self.frame_size)
        return self._windows

    @property
    def anchors(self) -> IntArray:
        if self._anchors is None:
            self._anchors = box_anchors(self.boxes, self.frame_size)
        return self._anchors

    def box_fractions(self, zone: ZoneRaster) -> FloatArray:
        """Fraction of each box's pixel window inside ``zone`` (O(1) per box)."""
        w = self.windows
        area = (w[:, 2] - w[:, 0]) * (w[:, 3] - w[:, 1])
        if zone.empty:
            return np.zeros(len(w), np.float64)
        return zone.window_counts(w) / np.maximum(area, 1)

    def fractions(self, zone: ZoneRaster, select: Optional[BoolArray] = None) -> FloatArray:
        """Fraction of each instance inside ``zone`` by the mask rule: its mask's area, or its
        box's where it has no mask (a boxes-only frame, an empty mask)."""
        if not self.has_masks:
            return self.box_fractions(zone)
        out = mask_fractions(zone, self.masks, self.mask_boxes, self.areas, select)
        empty = self.areas <= 0
        if empty.any():
            out[empty] = self.box_fractions(zone)[empty]
        return out

    def inside(
        self, zone: ZoneRaster, method: str, min_fraction: float, select: Optional[BoolArray] = None
    ) -> BoolArray:
        """One observation, before inertia: whether each instance is inside ``zone``.

        ``method`` "mask": at least ``min_fraction`` of the mask's area is in the zone (the box's
        area for an instance without a mask); "box_anchor": the box's bottom centre is in it.
        ``select`` limits the pixel work to some instances; the others' answers are then
        meaningless.
        """
        if method == "box_anchor":
            xy = self.anchors
            return np.asarray(zone.mask[xy[:, 1], xy[:, 0]], np.bool_)
        return self.fractions(zone, select) >= min_fraction


def inside_zone(
    zone: ZoneRaster, instances: Instances, indices: npt.NDArray[np.integer], method: str, min_fraction: float,
) -> BoolArray:
    """Whether each instance ``indices[k]`` of a frame is inside ``zone`` (one observation, before
    inertia): (len(indices),) bool. See ``Observations.inside``; build one ``Observations`` per
    frame instead when testing several zones."""
    return Observations(instances, indices).inside(zone, method, min_fraction)
