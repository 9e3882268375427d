"""What the dashboard draws over the live stream when tracking is on: zones, lines, ids, trails.

The geometry (``Overlay``) is given once, from the config's zones and lines, in pixels or in
normalised coordinates; it is turned into pixel contours per frame and stream size on first use
and kept, so a frame costs only the drawing. Drawing happens in a viewer's thread
(``DashboardSink``), never in the pipeline's output thread, in two steps: the track ids on the
annotated frame at full size (``draw_ids``: they replace ``annotate``'s labels), then the rest
on the frame scaled to the stream's width (``draw``): cheaper than at full size (a quarter of
the pixels from 1080p to 960 wide), and lines and labels keep their size on screen whatever the
camera's resolution.

- each zone: a translucent fill (blended inside the polygon's bounding box only), its outline,
  and a label with its name and the live count of each class inside (``ZoneUpdate.occupancy``);
- each line: the line, an arrow at its middle pointing to its "in" side, and a label with its
  name and the in/out counts so far;
- each confirmed track: its recent centroids as a trail (``Analytics.trails``) and, on the
  instance it matched this frame, the label ``#12 person 0.87`` in place of ``person 0.87``.

Zones and lines may belong to a camera (``CameraSpec.zones``): ``camera_overlays`` makes one
``Overlay`` per camera, and the feed draws each camera's frames with its own.

The "in" side of a line is the right-hand side seen from its first point towards its second, as
it appears on screen (``Crossing.direction``: "in" is a crossing from left to right).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Dict, Final, List, Optional, Tuple, Union

import cv2
import numpy as np
import numpy.typing as npt

from edgeseg.analytics.types import Analytics
from edgeseg.sinks.annotate import class_color, draw_label, hex_to_bgr
from edgeseg.structures import ImageArray, Instances

OVERLAY_PALETTE_HEX: Final = (
    "#00E5FF", "#FFD600", "#FF4081", "#76FF03", "#FF9100", "#D500F9", "#18FFFF", "#FFFFFF",
)  # fmt: skip
"""Colours of zones and lines, in the order given (zones first, then lines): bright, so that
they stand out from the class palette's tints."""
OVERLAY_PALETTE_BGR: Final = tuple(hex_to_bgr(c) for c in OVERLAY_PALETTE_HEX)
ZONE_FILL_ALPHA: Final = 0.2
OUTLINE_THICKNESS: Final = 2
TRAIL_THICKNESS: Final = 2
TRAIL_POINTS: Final = 30
"""Most recent centroids drawn per track (the trail's length)."""
ARROW_FRACTION: Final = 0.04
"""Length of a line's direction arrow, as a fraction of the frame's shorter side (12 px at least)."""
MAX_CLASSES_SHOWN: Final = 4
"""Classes listed on a zone's label, most numerous first; the rest are summed as "+n"."""
COORDINATES: Final = {"pixel": False, "pixels": False, "normalized": True, "normalised": True}

Points = Tuple[Tuple[float, float], ...]


@dataclass(frozen=True)
class Shape:
    """One zone or line as configured: its name, its points, and whether they are normalised (0..1
    of the frame's width and height) or in pixels."""

    name: str
    points: Points
    normalized: bool = False

    def pixels(self, height: int, width: int) -> npt.NDArray[np.int32]:
        """The points in pixels of a ``height`` x ``width`` frame, as OpenCV draws them."""
        return self.on_canvas((height, width), (height, width))

    def on_canvas(self, frame: Tuple[int, int], canvas: Tuple[int, int]) -> npt.NDArray[np.int32]:
        """The points in pixels of a canvas of size ``canvas`` that shows a frame of size
        ``frame`` (both height, width): the frame scaled for the stream."""
        height, width = canvas
        scale = (width, height) if self.normalized else (width / frame[1], height / frame[0])
        points = np.asarray(self.points, np.float64) * np.asarray(scale, np.float64)
        return np.round(points).astype(np.int32).reshape(-1, 1, 2)


def _coordinates(value: Any, where: str) -> bool:
    """True for normalised coordinates: "normalized" (or a bool True), False for "pixel"."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in COORDINATES:
        return COORDINATES[value.strip().lower()]
    raise ValueError(f"{where}.coordinates: expected 'pixel' or 'normalized', got {value!r:.40}")


def to_shape(item: Any, where: str, min_points: int) -> Shape:
    """A ``Shape`` from a config object (``name``, ``points``, ``coordinates`` attributes, as
    ``ZoneConfig`` and ``LineConfig``), a mapping with those keys, or a tuple ``(name, points)`` /
    ``(name, points, coordinates)``; ``ValueError`` naming ``where`` otherwise."""
    if isinstance(item, Shape):
        return item
    name: Any
    points: Any
    coordinates: Any
    if isinstance(item, Mapping):
        name, points, coordinates = item.get("name"), item.get("points"), item.get("coordinates", "pixel")
    elif isinstance(item, tuple) and len(item) in (2, 3):
        name, points = item[0], item[1]
        coordinates = item[2] if len(item) == 3 else "pixel"
    elif hasattr(item, "name") and hasattr(item, "points"):
        name, points, coordinates = item.name, item.points, getattr(item, "coordinates", "pixel")
    else:
        raise ValueError(f"{where}: expected a zone or line config, a mapping or (name, points[, coordinates]), "
                         f"got {type(item).__name__}")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}.name: expected a non-empty string, got {name!r:.40}")
    normalized = _coordinates(coordinates, where)
    try:
        array = np.asarray([tuple(p) for p in points], np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where}.points: expected a list of (x, y) pairs") from None
    if array.ndim != 2 or array.shape[1] != 2 or len(array) < min_points:
        raise ValueError(f"{where}.points: expected at least {min_points} (x, y) pairs, got {len(array)}")
    if not np.isfinite(array).all():
        raise ValueError(f"{where}.points: expected finite numbers")
    return Shape(name, tuple((float(x), float(y)) for x, y in array), normalized)


@dataclass(frozen=True)
class _Drawn:
    """A shape in pixels of the canvas drawn on: its contour, colour and where its label goes."""

    name: str
    contour: npt.NDArray[np.int32]
    color: Tuple[int, int, int]
    anchor: Tuple[int, int]
    bounds: Tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) clipped to the frame; empty when outside


def _drawn(shape: Shape, frame: Tuple[int, int], canvas: Tuple[int, int], color: Tuple[int, int, int]) -> _Drawn:
    """``shape`` on a canvas of size ``canvas`` showing a frame of size ``frame`` (both height, width)."""
    height, width = canvas
    contour = shape.on_canvas(frame, canvas)
    xy = contour.reshape(-1, 2)
    top = int(np.lexsort((xy[:, 0], xy[:, 1]))[0])  # the topmost point, leftmost of those
    x0, y0 = max(int(xy[:, 0].min()), 0), max(int(xy[:, 1].min()), 0)
    x1, y1 = min(int(xy[:, 0].max()) + 1, width), min(int(xy[:, 1].max()) + 1, height)
    return _Drawn(shape.name, contour, color, (int(xy[top, 0]), int(xy[top, 1])), (x0, y0, x1, y1))


class Overlay:
    """The zones and lines to draw, and the drawing of a frame's analytics over its annotated copy.

    Args:
        zones: polygons (three points at least): ``ZoneConfig`` objects, mappings or tuples (see
            ``to_shape``).
        lines: polylines (two points at least), likewise.
        trail_points: most recent centroids drawn per track.

    ``ValueError`` (naming ``zones[i]`` / ``lines[i]``) for a shape that cannot be drawn.
    """

    def __init__(self, zones: Iterable[Any] = (), lines: Iterable[Any] = (), trail_points: int = TRAIL_POINTS):
        if trail_points < 2:
            raise ValueError(f"trail_points: expected at least 2, got {trail_points}")
        self.zones: Tuple[Shape, ...] = tuple(to_shape(z, f"zones[{i}]", 3) for i, z in enumerate(zones))
        self.lines: Tuple[Shape, ...] = tuple(to_shape(ln, f"lines[{i}]", 2) for i, ln in enumerate(lines))
        self.trail_points = trail_points
        self._lock = threading.Lock()
        self._sizes: Dict[Tuple[Tuple[int, int], Tuple[int, int]], Tuple[Tuple[_Drawn, ...], Tuple[_Drawn, ...]]] = {}

    def color(self, kind: str, index: int) -> str:
        """The ``#RRGGBB`` colour of zone or line ``index`` (``kind`` "zone" or "line"), as drawn."""
        offset = index + (len(self.zones) if kind == "line" else 0)
        return OVERLAY_PALETTE_HEX[offset % len(OVERLAY_PALETTE_HEX)]

    def _geometry(
        self, frame: Tuple[int, int], canvas: Tuple[int, int]
    ) -> Tuple[Tuple[_Drawn, ...], Tuple[_Drawn, ...]]:
        """The zones and lines in pixels of the canvas (computed once per frame and canvas size)."""
        key = (frame, canvas)
        with self._lock:
            cached = self._sizes.get(key)
            if cached is None:
                palette = OVERLAY_PALETTE_BGR
                zones = tuple(_drawn(s, frame, canvas, palette[i % len(palette)]) for i, s in enumerate(self.zones))
                lines = tuple(_drawn(s, frame, canvas, palette[(len(zones) + i) % len(palette)])
                              for i, s in enumerate(self.lines))
                if len(self._sizes) >= 4:  # a source switch changes the size; keep a few
                    self._sizes.clear()
                cached = self._sizes[key] = (zones, lines)
            return cached

    def draw(
        self,
        canvas: ImageArray,
        frame_size: Tuple[int, int],
        analytics: Analytics,
        line_counts: Optional[Mapping[str, Tuple[int, int]]] = None,
    ) -> None:
        """Draw the zones, lines and trails of ``analytics`` over ``canvas`` in place: the frame of
        ``frame_size`` (height, width) as annotated, possibly scaled.

        ``line_counts``: line name -> (in, out) crossings so far, shown on each line's label.
        """
        height, width = canvas.shape[:2]
        zones, lines = self._geometry((int(frame_size[0]), int(frame_size[1])), (height, width))
        for zone in zones:
            _fill(canvas, zone, ZONE_FILL_ALPHA)
        for zone in zones:
            cv2.polylines(canvas, [zone.contour], True, zone.color, OUTLINE_THICKNESS, cv2.LINE_AA)
        arrow = max(12, int(ARROW_FRACTION * min(height, width)))
        for line in lines:
            cv2.polylines(canvas, [line.contour], False, line.color, OUTLINE_THICKNESS, cv2.LINE_AA)
            _direction_arrow(canvas, line, arrow)
        self._draw_trails(canvas, analytics, (width / frame_size[1], height / frame_size[0]))
        occupancy = analytics.zones.occupancy
        for zone in zones:
            draw_label(canvas, zone_label(zone.name, occupancy.get(zone.name)), *zone.anchor, zone.color)
        counts = line_counts or {}
        for line in lines:
            went_in, went_out = counts.get(line.name, (0, 0))
            draw_label(canvas, f"{line.name} in {went_in} out {went_out}", *line.anchor, line.color)

    def _draw_trails(self, canvas: ImageArray, analytics: Analytics, scale: Tuple[float, float]) -> None:
        """Each track's recent centroids, in its class colour, ending in a dot; one OpenCV call
        per class."""
        classes = {t.track_id: t.class_id for t in analytics.tracks.tracks}
        by_class: Dict[int, List[npt.NDArray[np.int32]]] = {}
        for track_id, trail in analytics.trails.items():
            if len(trail) < 2:
                continue
            points = np.asarray(trail[-self.trail_points :], np.float64) * np.asarray(scale, np.float64)
            contour = np.round(points).astype(np.int32).reshape(-1, 1, 2)
            by_class.setdefault(classes.get(track_id, 0), []).append(contour)
        for class_id, trails in by_class.items():
            color = class_color(class_id)
            cv2.polylines(canvas, trails, False, color, TRAIL_THICKNESS, cv2.LINE_8)  # AA: 4x the cost
            for contour in trails:
                end = (int(contour[-1, 0, 0]), int(contour[-1, 0, 1]))
                cv2.circle(canvas, end, TRAIL_THICKNESS + 1, color, cv2.FILLED)

    @staticmethod
    def draw_ids(canvas: ImageArray, instances: Instances, analytics: Analytics) -> None:
        """``#id name score`` over the label ``annotate`` drew for each tracked instance, on the
        annotated frame at full size (before any scaling), in place.

        The new label has the old one's place and height and is wider, so it covers it; every
        label is drawn again in ``annotate``'s order, so that overlapping labels stack as before.
        """
        track_ids = analytics.tracks.track_ids
        if len(track_ids) != len(instances) or not (track_ids >= 0).any():
            return  # nothing tracked, or not this frame's ids: draw none rather than wrong ones
        names = instances.names
        for i, track_id in enumerate(track_ids.tolist()):
            class_id = int(instances.class_ids[i])
            x0, y0 = (int(round(float(v))) for v in instances.boxes[i, :2])
            text = f"{names[i]} {float(instances.scores[i]):.2f}"
            draw_label(canvas, f"#{track_id} {text}" if track_id >= 0 else text, x0, y0, class_color(class_id))


def camera_overlays(
    cameras: Union[Mapping[str, Any], Iterable[Any]], trail_points: int = TRAIL_POINTS
) -> Dict[str, Overlay]:
    """One ``Overlay`` per camera, in the order given.

    ``cameras``: objects with ``name``, ``zones`` and ``lines`` (``CameraSpec``), or a mapping
    camera name -> such an object, a mapping with ``zones``/``lines`` keys, or a ``(zones,
    lines)`` pair. ``ValueError`` naming the camera and ``zones[i]``/``lines[i]`` for a shape
    that cannot be drawn, or naming the entry that is none of these.
    """
    items = list(cameras.items()) if isinstance(cameras, Mapping) else [
        (getattr(spec, "name", None), spec) for spec in cameras]
    overlays: Dict[str, Overlay] = {}
    for index, (name, spec) in enumerate(items):
        if not isinstance(name, str):
            raise ValueError(f"cameras[{index}]: expected a camera with a name (a CameraSpec), "
                             f"got {type(spec).__name__}")
        if isinstance(spec, Mapping):
            zones, lines = spec.get("zones", ()), spec.get("lines", ())
        elif isinstance(spec, tuple) and len(spec) == 2:
            zones, lines = spec
        elif hasattr(spec, "zones") or hasattr(spec, "lines"):
            zones, lines = getattr(spec, "zones", ()), getattr(spec, "lines", ())
        else:
            raise ValueError(f"camera {name!r}: expected a camera spec, a mapping with zones and lines, "
                             f"or (zones, lines), got {type(spec).__name__}")
        try:
            overlays[name] = Overlay(zones or (), lines or (), trail_points)
        except ValueError as exc:
            raise ValueError(f"camera {name!r}: {exc}") from None
    return overlays


def zone_label(name: str, counts: Optional[Mapping[str, int]]) -> str:
    """``entrance: person 2, car 1`` (classes inside, most numerous first), ``entrance: 0`` when
    empty, the bare name when the zone has no counts this frame."""
    if counts is None:
        return name
    present = sorted(((int(n), str(c)) for c, n in counts.items() if n), key=lambda nc: (-nc[0], nc[1]))
    if not present:
        return f"{name}: 0"
    shown = ", ".join(f"{c} {n}" for n, c in present[:MAX_CLASSES_SHOWN])
    rest = sum(n for n, _ in present[MAX_CLASSES_SHOWN:])
    return f"{name}: {shown}" + (f", +{rest}" if rest else "")


def _fill(canvas: ImageArray, zone: _Drawn, alpha: float) -> None:
    """Tint the inside of a zone in place, blending only within its bounding box on the frame."""
    x0, y0, x1, y1 = zone.bounds
    if x0 >= x1 or y0 >= y1:
        return
    roi = canvas[y0:y1, x0:x1]
    tinted = roi.copy()
    cv2.fillPoly(tinted, [zone.contour - np.array([x0, y0], np.int32)], zone.color)
    cv2.addWeighted(roi, 1.0 - alpha, tinted, alpha, 0.0, dst=roi)


def _direction_arrow(canvas: ImageArray, line: _Drawn, length: int) -> None:
    """An arrow from the middle of the line's middle segment towards its "in" side."""
    xy = line.contour.reshape(-1, 2).astype(np.float64)
    k = (len(xy) - 2) // 2
    (ax, ay), (bx, by) = xy[k], xy[k + 1]
    dx, dy = bx - ax, by - ay
    norm = math.hypot(dx, dy)
    if norm == 0:
        return
    mx, my = (ax + bx) / 2, (ay + by) / 2
    # Seen from a to b on screen (y down), the right-hand side is (-dy, dx).
    tip = (int(round(mx - dy / norm * length)), int(round(my + dx / norm * length)))
    cv2.arrowedLine(canvas, (int(round(mx)), int(round(my))), tip, line.color, OUTLINE_THICKNESS, cv2.LINE_AA,
                    tipLength=0.35)

