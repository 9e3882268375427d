"""Optional morphological clean-up of mask crops: opening, closing, small-component removal.

Prototype masks are smooth at prototype resolution (input / 4) but thresholding can leave
specks, pinholes and thin bridges, which inflate the polygons and RLE a sink publishes. Opening
removes specks and spurs narrower than its disc, closing fills holes and gaps narrower than its
disc, and dropping connected components below ``min_area`` removes what opening leaves. Each
runs on the crop only, never on a full frame. Outside a crop the mask is empty by construction;
OpenCV's default morphology border (neutral for erosion and dilation) means the crop edge is not
treated as background, so an object cut by its box is not eroded from the cut side.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
import numpy.typing as npt

from edgeseg.postprocess.settings import RefineSettings

#: Pixel connectivity of the components ``min_area`` counts (8: diagonal neighbours connect).
CONNECTIVITY = 8
#: Label of the background in ``cv2.connectedComponentsWithStats``.
BACKGROUND_LABEL = 0

BoolArray = npt.NDArray[np.bool_]


@lru_cache(maxsize=16)
def disc(radius: int) -> npt.NDArray[np.uint8]:
    """Elliptical structuring element of the given radius, (2r + 1) square; cached."""
    side = 2 * radius + 1
    return np.asarray(cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side)), np.uint8)


def refine_masks(crops: tuple[BoolArray, ...], settings: RefineSettings) -> tuple[BoolArray, ...]:
    """Refined crops of the same shapes; the same tuple when refinement is off."""
    if settings.open_px < 0 or settings.close_px < 0 or settings.min_area < 0:
        raise ValueError(f"refine settings must be >= 0, got {settings}")
    if not settings.enabled:
        return crops
    return tuple(refine_mask(crop, settings) for crop in crops)


def refine_mask(crop: BoolArray, settings: RefineSettings) -> BoolArray:
    """One crop: opening with ``open_px``, closing with ``close_px``, then ``min_area``."""
    if crop.size == 0:
        return crop
    mask = np.ascontiguousarray(crop).view(np.uint8)
    if settings.open_px:
        mask = np.asarray(cv2.morphologyEx(mask, cv2.MORPH_OPEN, disc(settings.open_px)), np.uint8)
    if settings.close_px:
        mask = np.asarray(cv2.morphologyEx(mask, cv2.MORPH_CLOSE, disc(settings.close_px)), np.uint8)
    if settings.min_area:
        _, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=CONNECTIVITY)
        large = stats[:, cv2.CC_STAT_AREA] >= settings.min_area
        large[BACKGROUND_LABEL] = False
        return large[labels]
    return mask.view(np.bool_)
