"""A synthetic instance-segmentation dataset in COCO format, and a demo video, deterministic by seed.

What an image holds (square, ``size`` pixels, JPEG):

- five shape classes (:data:`CLASSES`): ``circle``, ``square``, ``triangle``, ``star`` and
  ``ring``. The ring has a hole through which the background shows; circle and ring differ
  only by it, so a model has to get mask interiors right, not just outlines.
- a background that is not made of instances: a two-colour gradient, low-frequency blotches,
  sometimes a texture (stripes, checks or grain), and clutter of distractors (lines, arcs,
  dots, thin bars, outlined rectangles) that are never annotated. Sometimes one or two thin
  distractors are drawn over the instances as non-instance occluders.
- 1 to 8 instances, class drawn uniformly, random size, rotation, colour (picked for contrast
  with the background under it) and texture (solid, gradient, stripes, grain). Shapes may run
  over the image border (truncation).
- occlusion: shapes are painted in order, a later one covers an earlier one. The stored mask of
  an instance is its VISIBLE part: its pixels inside the image minus everything painted later.
  An instance whose visible part is under :data:`MIN_VISIBLE_FRACTION` of its in-image area or
  under :data:`MIN_VISIBLE_PIXELS` pixels is dropped from the annotations (its pixels stay in
  the image) and counted (``dropped`` in :class:`Scene`, ``info.dropped_occluded`` in the json).
- camera effects, which never change the masks: an illumination gradient or vignette, a global
  gain and gamma, sometimes a slight blur, Gaussian noise, and JPEG artefacts (quality 40-95).

Masks are stored as COCO compressed RLE (``pycocotools``) for every instance, ``iscrowd`` 0.
COCO polygons cannot express holes (a ring) nor the several pieces an occluded shape may fall
into without loss; RLE is exact. ``bbox`` ([x, y, w, h]) and ``area`` are computed from that
RLE (``pycocotools.mask.toBbox`` / ``area``), so they agree with ``annToMask`` to the pixel.

Layout written by :func:`write_dataset` under ``out``::

    train/000001.jpg ...   instances_train.json
    val/000001.jpg ...     instances_val.json

Image ids start at 1 per split and the file name is the id (``000001.jpg``): the runtime's
COCO sink takes a numeric file stem as the image id, so its results line up with the json.
Annotation ids start at 1 (pycocotools treats id 0 as "no match").

Determinism: every image has its own ``numpy.random.Generator`` seeded from
``(seed, stream, index)`` (:func:`image_rng`; streams 0 train, 1 val, 2 and 3 video), so the same seed
gives byte-identical images and json with the same numpy and OpenCV, whatever the number of
images asked for (image 7 of 10 is image 7 of 2000), and train and val never share an image.
The json holds no timestamps.

The demo video (:func:`write_video`): 640x360, 15 fps, 150 frames (10 s) by default, mp4v. Four
to seven shapes (every class when there are five or more) move, rotate and bounce over a panning
background that crossfades into another one, under drifting illumination (gain and a rotating
gradient) with sensor noise. The per-frame ground truth is a COCO json next to the video
(``demo.mp4`` -> ``demo.json``), same conventions as above, except that image ids are the
0-based frame index, which is the ``frame_id`` the runtime gives video frames, and that every
annotation carries the ``track_id`` of its shape (1..n, the same in every frame, also after a
frame where the shape was hidden; ``info.track_ids`` is true), for ``edgeseg eval-tracks``.
:func:`render_video` paints any timeline of (track id, shape) this way: the scripted tracking
scenes of ``export/data/scenes.py`` use it too.

Only numpy, OpenCV and pycocotools: no torch, so CI and the device can generate data.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from statistics import NormalDist
from typing import Any, Final

import cv2
import numpy as np
import numpy.typing as npt
from pycocotools import mask as coco_mask

from edgeseg.errors import ExportError

log = logging.getLogger(__name__)

ImageArray = npt.NDArray[np.uint8]
"""BGR image, (H, W, 3) uint8."""
BoolMask = npt.NDArray[np.bool_]
"""(H, W) boolean mask."""
FloatArray = npt.NDArray[np.float32]

GENERATOR_VERSION: Final = 1
"""Bumped whenever the same seed would give different images: recorded in the json's info."""

CLASSES: Final = ("circle", "square", "triangle", "star", "ring")
"""Class names; the COCO category id of ``CLASSES[i]`` is ``i + 1``."""
TEXTURES: Final = ("solid", "gradient", "stripes", "grain")

SPLITS: Final = {"train": 0, "val": 1}
"""Split name to the stream number of :func:`image_rng`."""
VIDEO_STREAM: Final = 2
"""Per-frame noise of the demo video."""
VIDEO_SCENE_STREAM: Final = 3
"""The demo video's backgrounds and moving shapes."""

DEFAULT_SIZE: Final = 320
MIN_SIZE: Final = 64
"""Below this the smallest shapes are a few pixels across."""
MIN_INSTANCES: Final = 1
MAX_INSTANCES: Final = 8
RADIUS_RANGE: Final = (0.06, 0.2)
"""Circumradius of a shape as a fraction of the image side."""
RING_HOLE_RANGE: Final = (0.4, 0.65)
"""Inner over outer radius of a ring."""
STAR_POINTS: Final = 5
STAR_INNER_RATIO: Final = 0.45
CIRCLE_VERTICES: Final = 72
SUBPIXEL_BITS: Final = 4
"""cv2.fillPoly fractional bits: vertices are placed to 1/16 pixel."""

MIN_VISIBLE_FRACTION: Final = 0.2
"""An instance whose visible area is below this fraction of its in-image area is dropped."""
MIN_VISIBLE_PIXELS: Final = 30
"""An instance with fewer visible pixels than this is dropped."""

MIN_CONTRAST: Final = 60.0
"""Wanted distance (L2 over BGR) between a shape's colour and the background under it."""
COLOUR_TRIES: Final = 4

BACKGROUND_CLUTTER: Final = (2, 14)
"""Distractors drawn on the background (inclusive range)."""
FOREGROUND_CLUTTER_P: Final = 0.3
"""Probability of one or two thin distractors drawn over the instances."""
BACKGROUND_TEXTURE_P: Final = 0.5
SMOOTH_SCALE: Final = 4
"""The background's gradient and blotches are drawn at 1/4 of the size and upsampled."""

GAIN_RANGE: Final = (0.6, 1.4)
GAMMA_RANGE: Final = (0.6, 1.6)
ILLUMINATION_RANGE: Final = (0.55, 1.35)
BLUR_P: Final = 0.3
NOISE_SIGMA_RANGE: Final = (0.0, 8.0)
JPEG_QUALITY_RANGE: Final = (40, 95)

VIDEO_SIZE: Final = (640, 360)
"""Default demo video (width, height)."""
VIDEO_FPS: Final = 15
VIDEO_FRAMES: Final = 150
VIDEO_OBJECTS: Final = (4, 7)
VIDEO_NOISE_SIGMA: Final = 3.0


# -- shapes ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """One instance to paint.

    Attributes:
        kind: one of :data:`CLASSES`.
        center: (x, y) in pixels.
        radius: circumradius in pixels (outer radius of a ring).
        angle: rotation in radians.
        colour: BGR fill colour.
        texture: one of :data:`TEXTURES`.
        texture_seed: seeds the texture's second colour, direction and grain, so that a shape
            looks the same wherever and whenever it is painted (video frames).
        hole: inner over outer radius (rings only).
    """

    kind: str
    center: tuple[float, float]
    radius: float
    angle: float = 0.0
    colour: tuple[int, int, int] = (255, 255, 255)
    texture: str = "solid"
    texture_seed: int = 0
    hole: float = 0.55

    def __post_init__(self) -> None:
        if self.kind not in CLASSES:
            raise ValueError(f"shape kind {self.kind!r}: expected one of {', '.join(CLASSES)}")
        if self.texture not in TEXTURES:
            raise ValueError(f"shape texture {self.texture!r}: expected one of {', '.join(TEXTURES)}")
        if not (self.radius > 0 and math.isfinite(self.radius)):
            raise ValueError(f"shape radius {self.radius}: expected a positive number")
        if not 0 < self.hole < 1:
            raise ValueError(f"ring hole {self.hole}: expected a ratio in (0, 1)")

    @property
    def category_id(self) -> int:
        return CLASSES.index(self.kind) + 1


def _regular(n: int, radius: float, angle: float, phase: float = -math.pi / 2) -> npt.NDArray[np.float64]:
    t = phase + angle + np.arange(n) * (2 * math.pi / n)
    return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)


def outlines(shape: Shape) -> list[npt.NDArray[np.float64]]:
    """Polygons (n, 2) in pixels: the outline, then for a ring its hole."""
    r = shape.radius
    if shape.kind in ("circle", "ring"):
        polys = [_regular(CIRCLE_VERTICES, r, shape.angle)]
        if shape.kind == "ring":
            polys.append(_regular(CIRCLE_VERTICES, r * shape.hole, shape.angle))
    elif shape.kind == "square":
        polys = [_regular(4, r, shape.angle, phase=math.pi / 4)]
    elif shape.kind == "triangle":
        polys = [_regular(3, r, shape.angle)]
    else:  # star
        outer = _regular(STAR_POINTS, r, shape.angle)
        inner = _regular(STAR_POINTS, r * STAR_INNER_RATIO, shape.angle + math.pi / STAR_POINTS)
        polys = [np.stack([outer, inner], axis=1).reshape(-1, 2)]
    cx, cy = shape.center
    return [p + (cx, cy) for p in polys]


def _fixed_point(poly: npt.NDArray[np.float64]) -> npt.NDArray[np.int32]:
    return np.round(poly * (1 << SUBPIXEL_BITS)).astype(np.int32).reshape(-1, 1, 2)


def rasterize(shape: Shape, height: int, width: int) -> BoolMask:
    """The shape's pixels inside a ``height`` x ``width`` image (before any occlusion)."""
    canvas = np.zeros((height, width), np.uint8)
    polys = outlines(shape)
    cv2.fillPoly(canvas, [_fixed_point(polys[0])], 1, cv2.LINE_8, SUBPIXEL_BITS)
    for hole in polys[1:]:
        cv2.fillPoly(canvas, [_fixed_point(hole)], 0, cv2.LINE_8, SUBPIXEL_BITS)
    return canvas.astype(np.bool_)


def _bounds(mask: BoolMask) -> tuple[int, int, int, int] | None:
    """x0, y0, x1, y1 (exclusive) of the mask's pixels, None when empty."""
    x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
    return None if w == 0 or h == 0 else (x, y, x + w, y + h)


def _second_colour(rng: np.random.Generator, colour: tuple[int, int, int]) -> FloatArray:
    """A companion colour for two-tone textures: the colour darkened or lightened."""
    base = np.asarray(colour, np.float32)
    factor = float(rng.uniform(0.35, 0.7))
    return base * factor if base.mean() > 110 else base + (255 - base) * factor


def paint(image: ImageArray, shape: Shape, mask: BoolMask) -> None:
    """Fill ``mask``'s pixels of ``image`` (in place) with the shape's colour and texture."""
    box = _bounds(mask)
    if box is None:
        return
    x0, y0, x1, y1 = box
    sub = mask[y0:y1, x0:x1]
    colour = np.asarray(shape.colour, np.float32)
    if shape.texture == "solid":
        image[y0:y1, x0:x1][sub] = np.asarray(shape.colour, np.uint8)
        return
    rng = np.random.default_rng(shape.texture_seed)
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    cx, cy = shape.center
    theta = shape.angle + float(rng.uniform(0, math.pi))
    along = ((xs - cx) * math.cos(theta) + (ys - cy) * math.sin(theta)) / (2 * shape.radius) + 0.5
    other = _second_colour(rng, shape.colour)
    if shape.texture == "gradient":
        t = np.clip(along, 0, 1)[..., None]
        fill = colour * (1 - t) + other * t
    elif shape.texture == "stripes":
        period = float(rng.uniform(4, 12))
        on = (np.floor(along * 2 * shape.radius / period) % 2 == 0)[..., None]
        fill = np.where(on, colour, other)
    else:  # grain
        sigma = float(rng.uniform(10, 30))
        fill = colour + gaussian_noise(rng, (y1 - y0, x1 - x0, 1), sigma)
    image[y0:y1, x0:x1][sub] = _to_uint8(np.ascontiguousarray(fill, np.float32)).reshape(fill.shape)[sub]


# -- distractors ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Distractor:
    """Clutter that is never an instance: a polyline, open or closed, stroked or filled.

    Attributes:
        points: (n, 2) vertices in pixels.
        colour: BGR.
        thickness: stroke width in pixels; 0 fills the closed polygon.
        closed: whether the last vertex joins the first (stroked outlines).
    """

    points: npt.NDArray[np.float64]
    colour: tuple[int, int, int]
    thickness: int = 1
    closed: bool = False

    def draw(self, image: ImageArray, cover: npt.NDArray[np.uint8] | None = None) -> None:
        """Draw on ``image`` in place; also mark its pixels with 1 in ``cover`` when given."""
        pts = [_fixed_point(self.points)]
        targets: list[tuple[npt.NDArray[np.uint8], Any]] = [(image, self.colour)]
        if cover is not None:
            targets.append((cover, 1))
        for target, value in targets:
            if self.thickness <= 0:
                cv2.fillPoly(target, pts, value, cv2.LINE_8, SUBPIXEL_BITS)
            else:
                cv2.polylines(target, pts, self.closed, value, self.thickness, cv2.LINE_8, SUBPIXEL_BITS)


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    b, g, r = (int(v) for v in rng.integers(0, 256, 3))
    return b, g, r


def random_distractor(rng: np.random.Generator, height: int, width: int, thin: bool = False) -> Distractor:
    """A line, arc, dot, thin bar or outlined rectangle somewhere in the image.

    ``thin`` keeps to lines and arcs of 1-3 pixels (the occluders drawn over instances).
    None of them can be mistaken for a class: dots are below the smallest shape, bars are
    elongated, rectangles are outlines only, arcs are open.
    """
    side = min(height, width)
    kinds = ("line", "arc") if thin else ("line", "arc", "dot", "bar", "outline")
    kind = kinds[int(rng.integers(len(kinds)))]
    colour = _random_colour(rng)
    centre = rng.uniform((0, 0), (width, height))
    if kind == "line":
        end = centre + rng.uniform(-0.6, 0.6, 2) * side
        return Distractor(np.stack([centre, end]), colour, int(rng.integers(1, 4)))
    if kind == "arc":
        radius = float(rng.uniform(0.08, 0.4)) * side
        start = float(rng.uniform(0, 2 * math.pi))
        t = start + np.linspace(0, float(rng.uniform(0.5, 1.5)) * math.pi, 24)
        pts = centre + radius * np.stack([np.cos(t), np.sin(t)], axis=1)
        return Distractor(pts, colour, int(rng.integers(1, 4)))
    if kind == "dot":
        pts = _regular(12, float(rng.uniform(1.0, 0.012 * side + 1.5)), 0.0) + centre
        return Distractor(pts, colour, 0)
    if kind == "bar":
        length = float(rng.uniform(0.1, 0.35)) * side
        width_ = length * float(rng.uniform(0.05, 0.15))
        t = np.linspace(0, 2 * math.pi, 24, endpoint=False)
        ellipse = np.stack([length / 2 * np.cos(t), width_ / 2 * np.sin(t)], axis=1)
        a = float(rng.uniform(0, math.pi))
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        return Distractor(ellipse @ rot.T + centre, colour, 0)
    half = rng.uniform(0.04, 0.2, 2) * side
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64) * half + centre
    return Distractor(corners, colour, int(rng.integers(1, 3)), closed=True)


# -- scenes ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instance:
    """An annotated instance: its shape, its visible mask and its in-image area before occlusion."""

    shape: Shape
    mask: BoolMask
    full_area: int

    @property
    def category_id(self) -> int:
        return self.shape.category_id


@dataclass(frozen=True)
class Scene:
    """A painted image, its kept instances (paint order) and how many were dropped as hidden."""

    image: ImageArray
    instances: tuple[Instance, ...]
    dropped: int


def is_visible_enough(visible_area: int, full_area: int) -> bool:
    """The drop rule: enough visible pixels, and a large enough part of the in-image area."""
    return visible_area >= MIN_VISIBLE_PIXELS and visible_area >= MIN_VISIBLE_FRACTION * full_area


def compose(background: ImageArray, shapes: Sequence[Shape], foreground: Sequence[Distractor] = ()) -> Scene:
    """Paint ``shapes`` in order over a copy of ``background``, then the ``foreground`` clutter.

    Each instance keeps the pixels no later shape and no foreground distractor covers; shapes
    whose visible part fails :func:`is_visible_enough` (also shapes wholly outside the image)
    are dropped and counted.
    """
    if background.ndim != 3 or background.shape[2] != 3 or background.dtype != np.uint8:
        raise ValueError(f"background: expected (H, W, 3) uint8, got {background.shape} {background.dtype}")
    height, width = background.shape[:2]
    image = background.copy()
    masks = [rasterize(s, height, width) for s in shapes]
    for shape, mask in zip(shapes, masks):
        paint(image, shape, mask)
    cover = np.zeros((height, width), np.uint8)
    for item in foreground:
        item.draw(image, cover)
    covered = cover.astype(np.bool_)
    kept: list[Instance] = []
    dropped = 0
    for shape, mask in zip(reversed(shapes), reversed(masks)):
        full = int(np.count_nonzero(mask))
        visible = mask & ~covered
        covered |= mask
        if is_visible_enough(int(np.count_nonzero(visible)), full):
            kept.append(Instance(shape, visible, full))
        else:
            dropped += 1
    return Scene(image, tuple(reversed(kept)), dropped)


# -- backgrounds and camera -----------------------------------------------------------------------


_NORMAL_QUANTILES: Final = np.array(
    [NormalDist().inv_cdf((k + 0.5) / 256) for k in range(256)], np.float32
)
"""Standard normal quantiles of 256 equal-probability bins: a random byte looked up here is a
Gaussian sample to 8 bits, about ten times cheaper than ``Generator.standard_normal``."""


def gaussian_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> FloatArray:
    """Zero-mean Gaussian noise of standard deviation ``sigma`` (quantised to 256 levels)."""
    n = int(np.prod(shape))
    raw = np.frombuffer(rng.bytes(n), np.uint8).reshape(shape)
    return _NORMAL_QUANTILES[raw] * np.float32(sigma)


def _to_uint8(image: npt.NDArray[np.float32]) -> ImageArray:
    """Round and saturate to 0..255 (OpenCV's conversion, faster than clip + astype)."""
    return np.asarray(cv2.convertScaleAbs(np.maximum(image, np.float32(0))), np.uint8)


def _coords(height: int, width: int) -> tuple[FloatArray, FloatArray]:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return ys, xs


def _ramp(rng: np.random.Generator, height: int, width: int) -> FloatArray:
    """A linear ramp 0..1 across the image in a random direction, (H, W)."""
    theta = float(rng.uniform(0, 2 * math.pi))
    c, s = math.cos(theta), math.sin(theta)
    ramp = np.add.outer(np.arange(height, dtype=np.float32) * np.float32(s), np.arange(width, dtype=np.float32) * c)
    lo, hi = float(ramp.min()), float(ramp.max())
    return ((ramp - lo) / max(hi - lo, 1e-6)).astype(np.float32)


def _blotches(rng: np.random.Generator, height: int, width: int, cells: int, channels: int) -> FloatArray:
    """Smooth noise in -1..1: a coarse random grid upsampled bicubically, (H, W, channels)."""
    grid = rng.uniform(-1, 1, (cells, cells, channels)).astype(np.float32)
    out = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.asarray(out, np.float32).reshape(height, width, channels)


def make_background(rng: np.random.Generator, height: int, width: int) -> ImageArray:
    """Gradient, blotches, sometimes a texture, and clutter of distractors: no instances."""
    c1 = rng.uniform(0, 255, 3).astype(np.float32)
    c2 = rng.uniform(0, 255, 3).astype(np.float32)
    # The smooth part (gradient and blotches) is made at a quarter of the size and upsampled.
    sh, sw = max(height // SMOOTH_SCALE, 2), max(width // SMOOTH_SCALE, 2)
    smooth = c1 + (c2 - c1) * _ramp(rng, sh, sw)[..., None]
    smooth += _blotches(rng, sh, sw, int(rng.integers(3, 9)), 3) * np.float32(rng.uniform(0, 50))
    img = np.asarray(cv2.resize(smooth, (width, height), interpolation=cv2.INTER_LINEAR), np.float32)
    if rng.random() < BACKGROUND_TEXTURE_P:
        kind = int(rng.integers(3))
        amplitude = np.float32(rng.uniform(8, 30))
        if kind == 0:  # stripes
            period = float(rng.uniform(6, 40))
            pattern = np.sin(_ramp(rng, height, width) * (max(height, width) * 2 * math.pi / period))
        elif kind == 1:  # checks
            cell = int(rng.integers(8, 40))
            pattern = (np.add.outer(np.arange(height) // cell, np.arange(width) // cell) % 2) * 2 - 1
        else:  # grain: noise at half resolution, upsampled
            small = gaussian_noise(rng, ((height + 1) // 2, (width + 1) // 2), 1.0)
            pattern = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
        img += pattern.astype(np.float32)[..., None] * amplitude
    out = _to_uint8(img)
    for _ in range(int(rng.integers(BACKGROUND_CLUTTER[0], BACKGROUND_CLUTTER[1] + 1))):
        random_distractor(rng, height, width).draw(out)
    return out


@dataclass(frozen=True)
class Camera:
    """Pixel-value effects of one image or frame; masks are unaffected.

    Attributes:
        illumination: (H, W) multiplicative light field (a gradient or a vignette).
        gain: global exposure factor.
        gamma: output = 255 * (input / 255) ** gamma.
        blur_sigma: Gaussian blur sigma of a 5x5 kernel; 0 for none.
        noise_sigma: standard deviation of additive Gaussian noise, in grey levels.
    """

    illumination: FloatArray
    gain: float = 1.0
    gamma: float = 1.0
    blur_sigma: float = 0.0
    noise_sigma: float = 0.0


def random_camera(rng: np.random.Generator, height: int, width: int) -> Camera:
    """An illumination gradient or vignette, gain, gamma, sometimes blur, and noise."""
    lo = float(rng.uniform(ILLUMINATION_RANGE[0], 1.0))
    hi = float(rng.uniform(1.0, ILLUMINATION_RANGE[1]))
    if rng.random() < 0.5:
        illumination = lo + (hi - lo) * _ramp(rng, height, width)
    else:  # vignette around a random centre
        ys, xs = _coords(height, width)
        cx, cy = rng.uniform((0, 0), (width, height))
        d2 = ((xs - cx) ** 2 + (ys - cy) ** 2) / np.float32(max(height, width) ** 2)
        illumination = hi - (hi - lo) * np.clip(d2 * 2, 0, 1)
    return Camera(
        illumination=illumination.astype(np.float32),
        gain=float(rng.uniform(*GAIN_RANGE)),
        gamma=float(rng.uniform(*GAMMA_RANGE)),
        blur_sigma=float(rng.uniform(0.5, 1.2)) if rng.random() < BLUR_P else 0.0,
        noise_sigma=float(rng.uniform(*NOISE_SIGMA_RANGE)),
    )


def apply_camera(image: ImageArray, camera: Camera, rng: np.random.Generator) -> ImageArray:
    """``image`` seen through ``camera``; the noise is drawn from ``rng``."""
    field_ = camera.illumination * np.float32(camera.gain)
    out = cv2.multiply(image, cv2.merge([field_, field_, field_]), dtype=cv2.CV_8U)
    if camera.gamma != 1.0:
        lut = np.clip(255.0 * (np.arange(256) / 255.0) ** camera.gamma + 0.5, 0, 255).astype(np.uint8)
        out = cv2.LUT(out, lut)
    if camera.blur_sigma > 0:
        out = cv2.GaussianBlur(out, (5, 5), camera.blur_sigma)
    if camera.noise_sigma > 0:
        out = cv2.add(out, gaussian_noise(rng, out.shape, camera.noise_sigma), dtype=cv2.CV_8U)
    return np.asarray(out, np.uint8)


# -- images ---------------------------------------------------------------------------------------


def image_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``stream`` for ``seed`` (streams: :data:`SPLITS`, video)."""
    return np.random.default_rng([int(seed), int(stream), int(index)])


def _contrasting_colour(rng: np.random.Generator, under: FloatArray) -> tuple[int, int, int]:
    """Of a few random colours, the first far enough from ``under`` (else the farthest)."""
    best: tuple[int, int, int] = (0, 0, 0)
    best_d = -1.0
    for _ in range(COLOUR_TRIES):
        colour = _random_colour(rng)
        d = float(np.linalg.norm(np.asarray(colour, np.float32) - under))
        if d > best_d:
            best, best_d = colour, d
        if d >= MIN_CONTRAST:
            break
    return best


def random_shapes(rng: np.random.Generator, background: ImageArray, count: int) -> list[Shape]:
    """``count`` shapes of uniformly drawn classes placed over ``background`` (its size)."""
    height, width = background.shape[:2]
    side = min(height, width)
    shapes = []
    for _ in range(count):
        kind = CLASSES[int(rng.integers(len(CLASSES)))]
        radius = float(rng.uniform(*RADIUS_RANGE)) * side
        # Centres at least half a radius inside: shapes may be truncated, never mostly outside.
        cx = float(rng.uniform(radius / 2, width - radius / 2))
        cy = float(rng.uniform(radius / 2, height - radius / 2))
        y0, y1 = max(int(cy - radius), 0), min(int(cy + radius) + 1, height)
        x0, x1 = max(int(cx - radius), 0), min(int(cx + radius) + 1, width)
        under = background[y0:y1, x0:x1].reshape(-1, 3).mean(axis=0).astype(np.float32)
        shapes.append(
            Shape(
                kind=kind,
                center=(cx, cy),
                radius=radius,
                angle=float(rng.uniform(0, 2 * math.pi)),
                colour=_contrasting_colour(rng, under),
                texture=TEXTURES[int(rng.integers(len(TEXTURES)))],
                texture_seed=int(rng.integers(2**31)),
                hole=float(rng.uniform(*RING_HOLE_RANGE)),
            )
        )
    return shapes


@dataclass(frozen=True)
class SynthImage:
    """One generated image: the scene after camera effects and the JPEG quality to save it at."""

    image: ImageArray
    instances: tuple[Instance, ...]
    dropped: int
    jpeg_quality: int

    def encode(self) -> bytes:
        """The JPEG bytes (deterministic for a given OpenCV build)."""
        ok, buf = cv2.imencode(".jpg", self.image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise ExportError("synthetic image: OpenCV could not encode a JPEG")
        return bytes(buf.tobytes())


def generate_image(seed: int, index: int, size: int = DEFAULT_SIZE, stream: int = 0) -> SynthImage:
    """Image ``index`` of ``stream`` for ``seed``: background, 1-8 shapes, clutter, camera."""
    rng = image_rng(seed, stream, index)
    background = make_background(rng, size, size)
    shapes = random_shapes(rng, background, int(rng.integers(MIN_INSTANCES, MAX_INSTANCES + 1)))
    foreground: list[Distractor] = []
    if rng.random() < FOREGROUND_CLUTTER_P:
        foreground = [random_distractor(rng, size, size, thin=True) for _ in range(int(rng.integers(1, 3)))]
    scene = compose(background, shapes, foreground)
    image = apply_camera(scene.image, random_camera(rng, size, size), rng)
    quality = int(rng.integers(JPEG_QUALITY_RANGE[0], JPEG_QUALITY_RANGE[1] + 1))
    return SynthImage(image, scene.instances, scene.dropped, quality)


# -- COCO -----------------------------------------------------------------------------------------


def categories() -> list[dict[str, Any]]:
    """The COCO categories of :data:`CLASSES`."""
    return [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)]


def annotation(mask: BoolMask, category_id: int, ann_id: int, image_id: int) -> dict[str, Any]:
    """A COCO annotation with an RLE mask, and ``bbox``/``area`` computed from that RLE."""
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
        "area": int(coco_mask.area(rle)),
        "bbox": [float(v) for v in coco_mask.toBbox(rle)],
        "iscrowd": 0,
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@dataclass(frozen=True)
class SplitSummary:
    """What one split holds: paths, counts, instances per class and occlusion drops."""

    split: str
    images_dir: Path
    annotations: Path
    images: int
    instances: int
    dropped: int
    per_class: dict[str, int] = field(default_factory=dict)


def write_split(out: Path, split: str, count: int, size: int = DEFAULT_SIZE, seed: int = 0) -> SplitSummary:
    """Write ``out/<split>/NNNNNN.jpg`` and ``out/instances_<split>.json`` (``count`` images)."""
    if split not in SPLITS:
        raise ExportError(f"synthetic split {split!r}: expected one of {', '.join(SPLITS)}")
    _check_size(size)
    _check_seed(seed)
    if count < 0:
        raise ExportError(f"synthetic {split}: expected a number of images >= 0, got {count}")
    folder = out / split
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"{folder}: cannot create the output folder ({exc.strerror})") from exc
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    dropped = 0
    per_class: Counter[str] = Counter()
    for index in range(count):
        image_id = index + 1
        synth = generate_image(seed, index, size, SPLITS[split])
        name = f"{image_id:06d}.jpg"
        (folder / name).write_bytes(synth.encode())
        images.append({"id": image_id, "file_name": name, "width": size, "height": size})
        for inst in synth.instances:
            anns.append(annotation(inst.mask, inst.category_id, len(anns) + 1, image_id))
            per_class[inst.shape.kind] += 1
        dropped += synth.dropped
    listed = {im["file_name"] for im in images}
    strays = [p.name for p in folder.glob("*.jpg") if p.name not in listed]
    if strays:
        log.warning("%s: %d images not in %s (from an earlier run?), e.g. %s",
                    folder, len(strays), f"instances_{split}.json", sorted(strays)[0])
    path = out / f"instances_{split}.json"
    data = {
        "info": {
            "description": "edgeseg synthetic shapes",
            "generator_version": GENERATOR_VERSION,
            "seed": seed,
            "split": split,
            "size": size,
            "dropped_occluded": dropped,
        },
        "licenses": [],
        "images": images,
        "annotations": anns,
        "categories": categories(),
    }
    _write_json(path, data)
    return SplitSummary(split, folder, path, count, len(anns), dropped, {c: per_class[c] for c in CLASSES})


def write_dataset(out: Path, train: int, val: int, size: int = DEFAULT_SIZE, seed: int = 0) -> list[SplitSummary]:
    """Both splits under ``out`` (see the module docstring for the layout)."""
    return [write_split(out, "train", train, size, seed), write_split(out, "val", val, size, seed)]


def _check_size(size: int) -> None:
    if size < MIN_SIZE:
        raise ExportError(f"synthetic image size {size}: expected at least {MIN_SIZE} pixels")


def _check_seed(seed: int) -> None:
    if seed < 0:
        raise ExportError(f"synthetic seed {seed}: expected an integer >= 0")


# -- video ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoSummary:
    """The written video, its ground-truth json, and counts."""

    video: Path
    annotations: Path
    frames: int
    instances: int
    dropped: int
    tracks: int = 0
    """Distinct ground-truth track ids among the annotated instances."""


@dataclass(frozen=True)
class TrackedInstance:
    """An annotated instance of a video frame and the ground-truth track (the object) it shows."""

    track_id: int
    instance: Instance


Timeline = Sequence[Sequence[tuple[int, Shape]]]
"""Per frame, the (track id, shape) pairs to paint, in paint order (a later one covers an earlier)."""
FrameObserver = Callable[[int, Sequence[TrackedInstance]], None]
"""Called with each frame's index and its annotated instances (what the ground truth says)."""


@dataclass(frozen=True)
class VideoStage:
    """What every frame of a video is painted over, and how the camera moves and lights it.

    Attributes:
        backgrounds: two backgrounds of (height + 2 pad, width + 2 pad).
        pad: margin of the backgrounds that the camera pans over.
        phase: the pan's starting angle, also the phase of the lighting drift.
        pan: pan along an ellipse and crossfade into the second background (the demo video); a
            fixed camera (the tracking scenes, whose zones and lines are fixed in the image) shows
            the first background, still under drifting light and sensor noise.
    """

    backgrounds: tuple[ImageArray, ImageArray]
    pad: int
    phase: float
    pan: bool = True


def _stage_background(stage: VideoStage, u: float, width: int, height: int) -> ImageArray:
    """The background at time ``u`` in [0, 1] of the video."""
    if not stage.pan:
        p = stage.pad
        return np.ascontiguousarray(stage.backgrounds[0][p:p + height, p:p + width])
    pad, phase = stage.pad, stage.phase
    # Camera pan along an ellipse, and a crossfade from the first background to the second.
    ox = int(round(pad * (1 + math.sin(2 * math.pi * u + phase))))
    oy = int(round(pad * (1 + math.cos(2 * math.pi * u + phase))))
    w = np.float32(0.5 - 0.5 * math.cos(math.pi * u))
    b0, b1 = stage.backgrounds
    return np.asarray(cv2.addWeighted(b0[oy:oy + height, ox:ox + width], float(1 - w),
                                      b1[oy:oy + height, ox:ox + width], float(w), 0.0), np.uint8)


def render_video(
    path: Path,
    timeline: Timeline,
    stage: VideoStage,
    seed: int,
    fps: int,
    size: tuple[int, int],
    observe: FrameObserver | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """Paint ``timeline`` over ``stage`` into the mp4v video at ``path``.

    Returns the COCO ``images`` (id = 0-based frame index), the ``annotations`` (each with its
    ``track_id``) and the number of instances dropped as hidden. Frame ``i`` draws its sensor
    noise from :func:`image_rng` ``(seed, 2, i)``.
    """
    width, height = size
    frames = len(timeline)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), float(fps), (width, height))
    if not writer.isOpened():
        raise ExportError(f"{path}: OpenCV could not open an mp4v video writer (expected a writable .mp4 path)")
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    dropped = 0
    try:
        for i, tracked in enumerate(timeline):
            u = i / max(frames - 1, 1)
            bg = _stage_background(stage, u, width, height)
            track_of = {id(shape): track_id for track_id, shape in tracked}
            scene = compose(bg, [shape for _, shape in tracked])
            theta = stage.phase + 2 * math.pi * u
            ramp = np.add.outer(np.arange(height, dtype=np.float32) * np.float32(math.sin(theta) / height),
                                np.arange(width, dtype=np.float32) * np.float32(math.cos(theta) / width))
            illumination = (1.0 + 0.25 * ramp).astype(np.float32)
            gain = 0.9 + 0.3 * math.sin(2 * math.pi * 1.5 * u + stage.phase)
            camera = Camera(illumination, gain=gain, noise_sigma=VIDEO_NOISE_SIGMA)
            writer.write(apply_camera(scene.image, camera, image_rng(seed, VIDEO_STREAM, i)))
            images.append({"id": i, "file_name": f"{path.stem}_{i:06d}.jpg", "width": width, "height": height,
                           "frame_index": i})
            seen = [TrackedInstance(track_of[id(inst.shape)], inst) for inst in scene.instances]
            for t in seen:
                ann = annotation(t.instance.mask, t.instance.category_id, len(anns) + 1, i)
                ann["track_id"] = t.track_id
                anns.append(ann)
            if observe is not None:
                observe(i, seen)
            dropped += scene.dropped
    finally:
        writer.release()
    return images, anns, dropped


def check_video_args(frames: int, seed: int, fps: int, size: tuple[int, int], what: str = "demo video") -> None:
    """Refuse, in one line, a video that cannot be made."""
    _check_size(min(size))
    _check_seed(seed)
    if frames < 1:
        raise ExportError(f"{what}: expected at least 1 frame, got {frames}")
    if fps < 1:
        raise ExportError(f"{what}: expected fps >= 1, got {fps}")


def video_info(description: str, seed: int, path: Path, fps: int, frames: int, dropped: int) -> dict[str, Any]:
    """The ``info`` of a video's ground truth."""
    return {
        "description": description,
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "video": path.name,
        "fps": fps,
        "frames": frames,
        "dropped_occluded": dropped,
        "track_ids": True,
    }


def write_ground_truth(path: Path, info: dict[str, Any], images: list[dict[str, Any]],
                       anns: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> None:
    """The COCO json of a video (``extra``: top-level keys beyond COCO's, which COCO readers ignore)."""
    data = {"info": info, "licenses": [], "images": images, "annotations": anns, "categories": categories()}
    data.update(extra or {})
    _write_json(path, data)


@dataclass
class _Mover:
    shape: Shape
    velocity: tuple[float, float]
    spin: float

    def step(self, width: int, height: int) -> None:
        """Advance one frame, bouncing off the borders."""
        (x, y), (vx, vy), r = self.shape.center, self.velocity, self.shape.radius
        x, y = x + vx, y + vy
        if x < r and vx < 0 or x > width - r and vx > 0:
            vx = -vx
        if y < r and vy < 0 or y > height - r and vy > 0:
            vy = -vy
        self.velocity = (vx, vy)
        self.shape = replace(self.shape, center=(x, y), angle=self.shape.angle + self.spin)


def _movers(rng: np.random.Generator, width: int, height: int, under: FloatArray) -> list[_Mover]:
    """Four to seven shapes, consecutive classes from a random one, contrasting with ``under``."""
    count = int(rng.integers(VIDEO_OBJECTS[0], VIDEO_OBJECTS[1] + 1))
    offset = int(rng.integers(len(CLASSES)))
    movers = []
    for i in range(count):
        radius = float(rng.uniform(0.07, 0.14)) * height
        speed = float(rng.uniform(1.0, 4.0))
        heading = float(rng.uniform(0, 2 * math.pi))
        shape = Shape(
            kind=CLASSES[(offset + i) % len(CLASSES)],
            center=(float(rng.uniform(radius, width - radius)), float(rng.uniform(radius, height - radius))),
            radius=radius,
            angle=float(rng.uniform(0, 2 * math.pi)),
            colour=_contrasting_colour(rng, under),
            texture=("solid", "gradient", "stripes")[int(rng.integers(3))],
            texture_seed=int(rng.integers(2**31)),
            hole=float(rng.uniform(*RING_HOLE_RANGE)),
        )
        movers.append(_Mover(shape, (speed * math.cos(heading), speed * math.sin(heading)),
                             float(rng.uniform(-0.06, 0.06))))
    return movers


def write_video(
    path: Path,
    frames: int = VIDEO_FRAMES,
    seed: int = 0,
    fps: int = VIDEO_FPS,
    size: tuple[int, int] = VIDEO_SIZE,
) -> VideoSummary:
    """The demo video at ``path`` (mp4v) and its per-frame COCO ground truth at ``path.with_suffix('.json')``.

    ``size`` is (width, height). Deterministic by ``seed`` (frame ``i`` draws its noise from
    :func:`image_rng` ``(seed, 2, i)``). Every annotation carries the ``track_id`` of its shape
    (1 to the number of shapes, the same in every frame), also across frames where the shape is
    hidden and so not annotated.
    """
    width, height = size
    check_video_args(frames, seed, fps, size)
    rng = image_rng(seed, VIDEO_SCENE_STREAM, 0)
    pad = max(width, height) // 8
    backgrounds = (make_background(rng, height + 2 * pad, width + 2 * pad),
                   make_background(rng, height + 2 * pad, width + 2 * pad))
    movers = _movers(rng, width, height, backgrounds[0].reshape(-1, 3).mean(axis=0).astype(np.float32))
    phase = float(rng.uniform(0, 2 * math.pi))
    timeline: list[list[tuple[int, Shape]]] = []
    for _ in range(frames):
        timeline.append([(k + 1, m.shape) for k, m in enumerate(movers)])
        for m in movers:
            m.step(width, height)
    images, anns, dropped = render_video(path, timeline, VideoStage(backgrounds, pad, phase), seed, fps, size)
    gt = path.with_suffix(".json")
    info = video_info("edgeseg synthetic demo video ground truth (image id = 0-based frame index)",
                      seed, path, fps, frames, dropped)
    write_ground_truth(gt, info, images, anns)
    return VideoSummary(path, gt, frames, len(anns), dropped, len({a["track_id"] for a in anns}))
