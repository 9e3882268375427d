"""Draw instances on an image: tinted masks, boxes and "name score" labels.

One function, ``annotate(image, instances)``, in the manner of supervision's annotators; the
video and image sinks and the dashboard all draw through it so they look the same. Masks are
blended crop by crop inside their own regions: no full-image mask is ever built, so 100
instances on a 1080p frame cost what their crops cost.
"""

from __future__ import annotations

import cv2
import numpy as np

from edgeseg.structures import ImageArray, Instances

PALETTE_HEX = (
    "#A351FB", "#FF4040", "#FFA1A0", "#FF7633", "#FFB633", "#D1D435", "#4CFB12",
    "#94CF1A", "#40DE8A", "#1B9640", "#00D6C1", "#2E9CAA", "#00C4FF", "#364797",
    "#6675FF", "#0019EF", "#863AFF", "#530087", "#CD3AFF", "#FF97CA", "#FF39C9",
)  # fmt: skip
"""Fixed class palette (supervision's default): a class keeps its colour across frames."""

DEFAULT_ALPHA = 0.5
BOX_THICKNESS = 2
FONT = cv2.FONT_HERSHEY_SIMPLEX
FONT_SCALE = 0.5
FONT_THICKNESS = 1
LABEL_PADDING = 3
"""Pixels of label background around the text."""
LIGHT_BACKGROUND_LUMA = 150
"""Above this luma (0..255) a label background gets black text, below it white text."""
BLACK = (0, 0, 0)
WHITE = (255, 255, 255)


def hex_to_bgr(code: str) -> tuple[int, int, int]:
    """``#RRGGBB`` as OpenCV's (blue, green, red)."""
    value = int(code.lstrip("#"), 16)
    return value & 0xFF, (value >> 8) & 0xFF, (value >> 16) & 0xFF


PALETTE_BGR: tuple[tuple[int, int, int], ...] = tuple(hex_to_bgr(c) for c in PALETTE_HEX)


def class_color(class_id: int) -> tuple[int, int, int]:
    """The BGR colour of a class, fixed by its id."""
    return PALETTE_BGR[int(class_id) % len(PALETTE_BGR)]


def _text_color(background: tuple[int, int, int]) -> tuple[int, int, int]:
    blue, green, red = background
    luma = 0.299 * red + 0.587 * green + 0.114 * blue
    return BLACK if luma > LIGHT_BACKGROUND_LUMA else WHITE


def _blend_mask(
    canvas: ImageArray, crop: np.ndarray, region: np.ndarray, color: tuple[int, int, int], alpha: float
) -> None:
    """Tint the pixels of one mask crop in place, clipped to the canvas.

    OpenCV does the arithmetic on the region (blend, then masked copy); numpy fancy indexing of
    the same pixels measured about four times slower at 100 crops per 1080p frame.
    """
    height, width = canvas.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in region)
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if cx0 >= cx1 or cy0 >= cy1:
        return
    inside = np.ascontiguousarray(crop[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0], dtype=np.bool_)
    roi = canvas[cy0:cy1, cx0:cx1]
    overlay = np.empty_like(roi)
    overlay[...] = np.asarray(color, np.uint8)
    tinted = cv2.addWeighted(roi, 1.0 - alpha, overlay, alpha, 0.0)
    cv2.copyTo(tinted, inside.view(np.uint8), roi)


def draw_label(canvas: ImageArray, text: str, x0: int, y0: int, color: tuple[int, int, int]) -> None:
    """A filled label above the box's top-left corner, or just inside it at the image top."""
    (text_w, text_h), baseline = cv2.getTextSize(text, FONT, FONT_SCALE, FONT_THICKNESS)
    label_h = text_h + baseline + 2 * LABEL_PADDING
    top = y0 - label_h if y0 - label_h >= 0 else y0
    left = min(max(x0, 0), max(canvas.shape[1] - text_w - 2 * LABEL_PADDING, 0))
    cv2.rectangle(canvas, (left, top), (left + text_w + 2 * LABEL_PADDING, top + label_h), color, cv2.FILLED)
    origin = (left + LABEL_PADDING, top + LABEL_PADDING + text_h)
    cv2.putText(canvas, text, origin, FONT, FONT_SCALE, _text_color(color), FONT_THICKNESS, cv2.LINE_AA)


def annotate(image: ImageArray, instances: Instances, *, alpha: float = DEFAULT_ALPHA) -> ImageArray:
    """A copy of a BGR uint8 ``image`` with ``instances`` drawn on it.

    Masks are tinted with their class colour at opacity ``alpha`` (0..1) first, so that boxes
    and labels stay readable on top. The input image is not modified.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in 0..1, got {alpha}")
    canvas: ImageArray = np.ascontiguousarray(image, dtype=np.uint8).copy()
    colors = [class_color(c) for c in instances.class_ids]
    if instances.has_masks:
        for crop, region, color in zip(instances.masks, instances.mask_boxes, colors):
            _blend_mask(canvas, crop, region, color, alpha)
    names = instances.names
    for i, color in enumerate(colors):
        x0, y0, x1, y1 = (int(round(float(v))) for v in instances.boxes[i])
        cv2.rectangle(canvas, (x0, y0), (x1, y1), color, BOX_THICKNESS)
        draw_label(canvas, f"{names[i]} {float(instances.scores[i]):.2f}", x0, y0, color)
    return canvas
