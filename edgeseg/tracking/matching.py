"""How well tracks and detections overlap, and the assignment that pairs them.

Two overlaps: box IoU, vectorised over every pair, and mask IoU, computed on the mask crops
(``Instances.masks[i]`` over ``Instances.mask_boxes[i]``) for the pairs whose crop regions
overlap at all. A crop is a boolean array over an integer region, so the intersection of two
masks is the logical and of the two crops over the overlap window of their regions: no
full-frame array is ever made, and a pair whose regions do not touch costs nothing.

Why mask IoU: two people side by side, or one passing behind another, have boxes that overlap
heavily while their masks do not; the box IoU of the wrong pairing can then beat the right one
and the identities swap, whereas the masks keep them apart. The tracker uses mask IoU for a pair
where both the track and the detection have a mask and box IoU otherwise (see ``fuse``).

The assignment is scipy's ``linear_sum_assignment`` with a cost limit, solved as lapjv's
``cost_limit`` extension would be (see ``assign``).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
BoolArray = npt.NDArray[np.bool_]

#: Costs above the limit are clipped to the limit plus this, so that "unmatched" is one value.
_CLIP_MARGIN = 1e-6


def box_iou(a: npt.ArrayLike, b: npt.ArrayLike) -> FloatArray:
    """(n, m) IoU of every pair of xyxy boxes ``a`` (n, 4) and ``b`` (m, 4); 0 for empty unions."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    # one contiguous row per coordinate: broadcasting over a (n, m, 2) layout is several times slower
    ax0, ay0, ax1, ay1 = np.ascontiguousarray(a.T)
    bx0, by0, bx1, by1 = np.ascontiguousarray(b.T)
    iw = np.minimum(ax1[:, None], bx1[None, :])
    iw -= np.maximum(ax0[:, None], bx0[None, :])
    ih = np.minimum(ay1[:, None], by1[None, :])
    ih -= np.maximum(ay0[:, None], by0[None, :])
    np.maximum(iw, 0.0, out=iw)
    np.maximum(ih, 0.0, out=ih)
    inter = iw * ih
    area_a = np.maximum(ax1 - ax0, 0.0) * np.maximum(ay1 - ay0, 0.0)
    area_b = np.maximum(bx1 - bx0, 0.0) * np.maximum(by1 - by0, 0.0)
    union = area_a[:, None] + area_b[None, :]
    union -= inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def mask_iou(
    masks_a: Sequence[Optional[BoolArray]],
    regions_a: npt.ArrayLike,
    areas_a: npt.ArrayLike,
    masks_b: Sequence[Optional[BoolArray]],
    regions_b: npt.ArrayLike,
    areas_b: npt.ArrayLike,
    candidates: Optional[BoolArray] = None,
) -> Tuple[FloatArray, BoolArray]:
    """Mask IoU of every pair of crops, and where it is defined.

    Args:
        masks_a: n boolean crops (None where that one has no mask).
        regions_a: (n, 4) integer x0, y0, x1, y1 (exclusive) each crop covers, possibly outside
            the frame (a track's crop moved by its predicted motion).
        areas_a: (n,) true pixels of each crop (passed in: the tracker counts them once).
        masks_b, regions_b, areas_b: the same for the other side.
        candidates: (n, m) pairs worth computing (same class); all when None.

    Returns:
        (iou, defined): (n, m) mask IoU, and (n, m) True where both sides have a mask (and the
        pair is a candidate). Only pairs whose regions overlap are intersected; the others are 0.
    """
    n, m = len(masks_a), len(masks_b)
    iou = np.zeros((n, m))
    ra = np.asarray(regions_a, np.int64).reshape(-1, 4)
    rb = np.asarray(regions_b, np.int64).reshape(-1, 4)
    aa = np.asarray(areas_a, np.int64).reshape(-1)
    ab = np.asarray(areas_b, np.int64).reshape(-1)
    has_a = np.array([x is not None for x in masks_a], np.bool_).reshape(n)
    has_b = np.array([x is not None for x in masks_b], np.bool_).reshape(m)
    defined = has_a[:, None] & has_b[None, :]
    if candidates is not None:
        defined &= candidates
    if not defined.any():
        return iou, defined
    x0 = np.maximum(ra[:, None, 0], rb[None, :, 0])
    y0 = np.maximum(ra[:, None, 1], rb[None, :, 1])
    x1 = np.minimum(ra[:, None, 2], rb[None, :, 2])
    y1 = np.minimum(ra[:, None, 3], rb[None, :, 3])
    rows, cols = np.nonzero(defined & (x1 > x0) & (y1 > y0))
    for i, j, wx0, wy0, wx1, wy1 in zip(
        rows.tolist(), cols.tolist(), x0[rows, cols].tolist(), y0[rows, cols].tolist(),
        x1[rows, cols].tolist(), y1[rows, cols].tolist(),
    ):
        crop_a = masks_a[i]
        crop_b = masks_b[j]
        if crop_a is None or crop_b is None:  # not so: ``defined`` says both are there
            continue
        ax, ay = int(ra[i, 0]), int(ra[i, 1])
        bx, by = int(rb[j, 0]), int(rb[j, 1])
        inter = np.count_nonzero(
            crop_a[wy0 - ay:wy1 - ay, wx0 - ax:wx1 - ax] & crop_b[wy0 - by:wy1 - by, wx0 - bx:wx1 - bx]
        )
        union = int(aa[i]) + int(ab[j]) - inter
        if union > 0:
            iou[i, j] = inter / union
    return iou, defined


def fuse(box: FloatArray, mask: FloatArray, mask_defined: BoolArray) -> FloatArray:
    """The overlap the tracker matches on: mask IoU where both sides have a mask, box IoU elsewhere.

    Mask IoU replaces box IoU for a pair rather than being averaged with it: averaging would give
    back the box's share of exactly the error masks are there to remove (two boxes that overlap
    while their masks do not). The two are on the same 0..1 scale and the same thresholds apply;
    a mask IoU runs a little lower than the box IoU of the same motion (a mask's border shifts
    as the object deforms), which the low default first-stage threshold (0.2) absorbs.
    """
    return np.where(mask_defined, mask, box)


def assign(cost: FloatArray, max_cost: float) -> Tuple[IntArray, IntArray, IntArray]:
    """The least-cost pairing of rows and columns, leaving unpaired any pair costing more than ``max_cost``.

    Solved as lapjv's ``cost_limit``: leaving a row and a column unpaired costs ``max_cost``
    between them, so a pair is made only when it is cheaper than leaving both alone. With costs
    clipped at the limit, ``linear_sum_assignment`` on the rectangular matrix minimises the same
    objective (each pair made at the limit is a pair left unmade), which is not the case when
    the solver is run on raw costs and the dear pairs are dropped afterwards (it would then trade
    a good pair for two poor ones). Non-finite costs (another class) are never paired.

    Returns:
        (pairs (k, 2) of row, column; unpaired rows; unpaired columns), each sorted.
    """
    n, m = cost.shape
    limit = max_cost + _CLIP_MARGIN
    valid = cost <= max_cost  # False for inf and nan
    rows_in = np.flatnonzero(valid.any(axis=1))
    cols_in = np.flatnonzero(valid.any(axis=0))
    pairs = np.zeros((0, 2), np.intp)
    if len(rows_in) and len(cols_in):
        sub_valid = valid[rows_in][:, cols_in]
        clipped = np.where(sub_valid, cost[rows_in][:, cols_in], limit)
        r, c = linear_sum_assignment(clipped)  # r comes sorted
        keep = sub_valid[r, c]
        pairs = np.stack([rows_in[r[keep]], cols_in[c[keep]]], axis=1).astype(np.intp)
    free_rows = np.ones(n, np.bool_)
    free_rows[pairs[:, 0]] = False
    free_cols = np.ones(m, np.bool_)
    free_cols[pairs[:, 1]] = False
    return pairs, np.flatnonzero(free_rows), np.flatnonzero(free_cols)
