"""The ``zones:`` and ``lines:`` sections: polygons a track is in or out of, and tripwires.

    zones:
      - name: driveway
        coordinates: normalized           # or pixel (the default)
        points: [[0.1, 0.5], [0.9, 0.5], [0.9, 1.0], [0.1, 1.0]]
        classes: [car, person]            # default: every class of the model
        min_fraction: 0.5                 # of the mask's area inside the zone
        loiter_s: {person: 30}            # or one number for every class
    lines:
      - name: gate
        points: [[100, 400], [540, 400]]  # drawn left to right: "in" = moving down the image
        directions: both

Membership is decided by the mask (``method: mask``): the fraction of the instance's mask area
inside the zone, compared with ``min_fraction``; ``box_anchor`` uses the box's bottom centre
instead, as most NVRs do, and is kept for comparison. Where a frame has no masks the box stands
for the mask. A line is crossed by the track's mask centroid.

What can be checked from the document alone is checked here (shape, bounds, names); what needs
the frame size and the model's classes is checked by ``check_against`` at start. Every refusal
is one line naming the field: ``field 'zones.1.points': ...``.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union

from pydantic import (
    AfterValidator,
    Field,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
)
from typing_extensions import Annotated

from edgeseg.errors import ConfigError
from edgeseg.strict import StrictModel
from edgeseg.zones.polygon import MAX_POINTS, distinct_ring, polygon_problem

#: One MQTT topic level (``edgeseg/<device>/zones/<zone>/<class>``): no ``/``, ``+``, ``#``.
NAME_PATTERN = r"^[A-Za-z0-9_-]+$"
NAME_MAX = 64
#: Largest absolute pixel coordinate accepted (a zone may reach outside the frame, not to infinity).
MAX_PIXEL_COORD = 100_000.0
#: Longest loitering threshold: a week.
MAX_LOITER_S = 7 * 24 * 3600.0

Coordinates = Literal["pixel", "normalized"]
Point = Tuple[float, float]


def _check_points(points: List[Tuple[float, float]], info: ValidationInfo) -> None:
    """Finite, and bounds that depend on ``coordinates`` (validated before ``points``)."""
    bad = [p for p in points if not (math.isfinite(p[0]) and math.isfinite(p[1]))]
    if bad:
        raise ValueError(f"coordinates must be finite numbers, found {_pt(bad[0])}")
    coordinates = info.data.get("coordinates")
    if coordinates == "normalized":
        bad = [p for p in points if not (0.0 <= p[0] <= 1.0 and 0.0 <= p[1] <= 1.0)]
        if bad:
            raise ValueError(
                f"normalized coordinates must lie within 0..1 (fractions of width and height), found {_pt(bad[0])}"
            )
    elif coordinates == "pixel":
        bad = [p for p in points if max(abs(p[0]), abs(p[1])) > MAX_PIXEL_COORD]
        if bad:
            raise ValueError(f"pixel coordinates must lie within +-{MAX_PIXEL_COORD:g}, found {_pt(bad[0])}")
        if all(0.0 <= v <= 1.0 for p in points for v in p):
            raise ValueError(
                "every point lies within 0..1 pixel: set coordinates: normalized for fractions of the frame"
            )


def _check_classes(classes: Optional[List[str]]) -> Optional[List[str]]:
    if classes is None:
        return None
    if not classes:
        raise ValueError("give at least one class, or leave classes out to count every class")
    seen = set()
    for name in classes:
        if not name.strip():
            raise ValueError("a class name is empty")
        if name in seen:
            raise ValueError(f"class {name!r} given twice")
        seen.add(name)
    return classes


class ZoneConfig(StrictModel):
    """A polygon (at least 3 distinct points, not self-intersecting, non-zero area). A point is
    [x, y]: pixels of the original frame, or fractions of its width and height with coordinates:
    normalized. A zone partly outside the frame is clipped to it; one entirely outside is refused."""

    name: str = Field(
        ..., min_length=1, max_length=NAME_MAX, pattern=NAME_PATTERN,
        description="unique zone name, one MQTT topic level: letters, digits, '_' and '-'",
    )
    coordinates: Coordinates = Field(
        "pixel", description="units of points: pixel (original frame) or normalized (0..1 of width and height)"
    )
    points: List[Point] = Field(
        ..., min_length=3, max_length=MAX_POINTS,
        description="polygon corners [x, y] in order (closed automatically); y grows downwards",
    )
    classes: Optional[List[str]] = Field(
        None, max_length=1000, description="class names the zone counts; null = every class of the model"
    )
    min_fraction: float = Field(
        0.5, gt=0.0, le=1.0,
        description="an instance is inside when at least this fraction of its mask area is in the zone",
    )
    method: Literal["mask", "box_anchor"] = Field(
        "mask",
        description="membership by the mask's area (mask) or by the box's bottom centre (box_anchor, "
        "as most NVRs do; for comparison)",
    )
    enter_frames: int = Field(
        3, ge=1, le=10_000, description="consecutive observed frames inside before a track enters"
    )
    leave_frames: int = Field(
        3, ge=1, le=10_000, description="consecutive observed frames outside before a track leaves"
    )
    loiter_s: Optional[Union[float, Dict[str, float]]] = Field(
        None,
        description="dwell in seconds (over 0, at most a week) after which an event reports loitering: one "
        "number for every class, or class name -> seconds; null = no loitering",
    )

    @field_validator("points")
    @classmethod
    def _points(cls, points: List[Tuple[float, float]], info: ValidationInfo) -> List[Tuple[float, float]]:
        _check_points(points, info)
        problem = polygon_problem(points)
        if problem:
            raise ValueError(problem)
        return distinct_ring(points)

    @field_validator("classes")
    @classmethod
    def _classes(cls, classes: Optional[List[str]]) -> Optional[List[str]]:
        return _check_classes(classes)

    @field_validator("loiter_s", mode="wrap")
    @classmethod
    def _loiter(
        cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> Optional[Union[float, Dict[str, float]]]:
        """One error in words rather than one per member of the union."""
        try:
            loiter = handler(value)
        except ValidationError:
            raise ValueError("expected seconds (a number) or a mapping of class name to seconds") from None
        if loiter is None:
            return None
        for seconds in loiter.values() if isinstance(loiter, dict) else (loiter,):
            if not 0 < seconds <= MAX_LOITER_S:
                raise ValueError(
                    f"seconds must be greater than 0 and at most {MAX_LOITER_S:g} (a week), found {seconds:g}"
                )
        if isinstance(loiter, dict):
            if not loiter:
                raise ValueError("give at least one class, or a number for every class")
            classes = info.data.get("classes")
            if classes is not None:
                extra = [c for c in loiter if c not in classes]
                if extra:
                    raise ValueError(f"class {extra[0]!r} is not counted by this zone (classes: {', '.join(classes)})")
        return loiter

    def loiter_threshold(self, class_name: str) -> Optional[float]:
        """Seconds of dwell after which a track of ``class_name`` loiters here, or None."""
        if isinstance(self.loiter_s, dict):
            return self.loiter_s.get(class_name)
        return self.loiter_s

    def counted_classes(self, class_names: Sequence[str]) -> Tuple[str, ...]:
        """The classes this zone counts, given the model's class table."""
        return tuple(self.classes) if self.classes is not None else tuple(class_names)

    def pixel_points(self, frame_size: Tuple[int, int]) -> List[Tuple[float, float]]:
        """The corners in pixels of a (height, width) frame."""
        return _to_pixels(self.points, self.coordinates, frame_size)


class LineConfig(StrictModel):
    """A tripwire from its first point to its second. A track crosses it when its mask centroid
    moves from one side to the other through the segment. "in" is a crossing from the line's
    left to its right, seen from the first point towards the second: a line drawn left to right
    across the image counts a track moving down the image as "in"."""

    name: str = Field(
        ..., min_length=1, max_length=NAME_MAX, pattern=NAME_PATTERN,
        description="unique line name: letters, digits, '_' and '-'",
    )
    coordinates: Coordinates = Field(
        "pixel", description="units of points: pixel (original frame) or normalized (0..1 of width and height)"
    )
    points: List[Point] = Field(
        ..., min_length=2, max_length=2, description="the two ends [[x1, y1], [x2, y2]]; y grows downwards"
    )
    classes: Optional[List[str]] = Field(
        None, max_length=1000, description="class names whose crossings count; null = every class of the model"
    )
    directions: Literal["both", "in", "out"] = Field(
        "both", description="which crossings are reported: both, in (left to right) or out (right to left)"
    )
    dead_band_px: float = Field(
        2.0, ge=0.0, le=1000.0,
        description="a centroid within this many pixels of the line is on neither side, so jitter on the "
        "line is not a crossing: the track must reach the other side beyond it",
    )

    @field_validator("points")
    @classmethod
    def _points(cls, points: List[Tuple[float, float]], info: ValidationInfo) -> List[Tuple[float, float]]:
        _check_points(points, info)
        (x1, y1), (x2, y2) = points
        length = math.hypot(x2 - x1, y2 - y1)
        if length == 0 or (info.data.get("coordinates") == "pixel" and length < 1.0):
            raise ValueError(
                f"zero length: a line needs two distinct ends, found {_pt(points[0])} and {_pt(points[1])}"
            )
        return points

    @field_validator("classes")
    @classmethod
    def _classes(cls, classes: Optional[List[str]]) -> Optional[List[str]]:
        return _check_classes(classes)

    def pixel_points(self, frame_size: Tuple[int, int]) -> List[Tuple[float, float]]:
        """The two ends in pixels of a (height, width) frame."""
        return _to_pixels(self.points, self.coordinates, frame_size)


def _unique_names(items: List[Any], what: str) -> List[Any]:
    first: Dict[str, int] = {}
    for i, item in enumerate(items):
        if item.name in first:
            raise ValueError(f"name {item.name!r} is used by {what}.{first[item.name]} and {what}.{i}")
        first[item.name] = i
    return items


def _unique_zones(items: List[ZoneConfig]) -> List[ZoneConfig]:
    return _unique_names(items, "zones")


def _unique_lines(items: List[LineConfig]) -> List[LineConfig]:
    return _unique_names(items, "lines")


#: The ``zones:`` list (names unique), for the configuration's top level.
ZoneList = Annotated[List[ZoneConfig], AfterValidator(_unique_zones)]
#: The ``lines:`` list (names unique), for the configuration's top level.
LineList = Annotated[List[LineConfig], AfterValidator(_unique_lines)]


def _to_pixels(
    points: Sequence[Tuple[float, float]], coordinates: str, frame_size: Tuple[int, int]
) -> List[Tuple[float, float]]:
    if coordinates == "pixel":
        return [(float(x), float(y)) for x, y in points]
    height, width = frame_size
    return [(float(x) * width, float(y) * height) for x, y in points]


def _pt(p: Sequence[float]) -> str:
    return f"[{p[0]:g}, {p[1]:g}]"


def _unknown_class(name: str, class_names: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, class_names, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"the model has {len(class_names)} classes"
    shown = ", ".join(class_names[:12]) + (", ..." if len(class_names) > 12 else "")
    return f"unknown class {name!r} ({hint} classes: {shown})"


def check_classes(
    zones: Sequence[ZoneConfig], lines: Sequence[LineConfig], class_names: Sequence[str],
    zones_field: str = "zones", lines_field: str = "lines",
) -> None:
    """Refuse, with a one-line ``ConfigError`` naming the field, a class the model does not have
    in a zone's or a line's ``classes`` or in a zone's ``loiter_s``."""
    known = set(class_names)
    filters = [(f"{zones_field}.{i}", z.classes) for i, z in enumerate(zones)]
    filters += [(f"{lines_field}.{i}", ln.classes) for i, ln in enumerate(lines)]
    for where, classes in filters:
        for name in classes or ():
            if name not in known:
                raise ConfigError(f"field '{where}.classes': {_unknown_class(name, class_names)}")
    for i, zone in enumerate(zones):
        if isinstance(zone.loiter_s, dict):
            for name in zone.loiter_s:
                if name not in known:
                    raise ConfigError(f"field '{zones_field}.{i}.loiter_s': {_unknown_class(name, class_names)}")


def check_against(
    zones: Sequence[ZoneConfig], lines: Sequence[LineConfig], frame_size: Tuple[int, int],
    class_names: Sequence[str], zones_field: str = "zones", lines_field: str = "lines",
) -> Tuple[str, ...]:
    """Check zones and lines against the frame size (height, width) and the model's classes.

    Raises a one-line ``ConfigError`` naming the field for an unknown class, a zone that covers
    no pixel of the frame (entirely outside it) or a line that does not touch the frame. Returns
    notes worth a log line: the zones and lines partly outside the frame, which are clipped to it.
    """
    import cv2  # noqa: PLC0415 - only needed at start, keeps the config import light

    from edgeseg.zones.geometry import rasterize  # noqa: PLC0415 - imports cv2 and numpy

    check_classes(zones, lines, class_names, zones_field, lines_field)
    height, width = frame_size
    size = f"{width}x{height}"
    notes: List[str] = []
    for i, zone in enumerate(zones):
        pts = zone.pixel_points(frame_size)
        if not rasterize(pts, frame_size).any():
            raise ConfigError(
                f"field '{zones_field}.{i}.points': zone {zone.name!r} covers no pixel of the {size} frame "
                f"(its points span x {_span(p[0] for p in pts)}, y {_span(p[1] for p in pts)})"
            )
        if any(not (0 <= x <= width and 0 <= y <= height) for x, y in pts):
            notes.append(f"zone {zone.name!r} is partly outside the {size} frame: clipped to it")
    for i, line in enumerate(lines):
        (x1, y1), (x2, y2) = line.pixel_points(frame_size)
        if math.hypot(x2 - x1, y2 - y1) < 1.0:
            raise ConfigError(
                f"field '{lines_field}.{i}.points': line {line.name!r} is shorter than a pixel in the {size} frame"
            )
        inside, _, _ = cv2.clipLine(
            (0, 0, width, height), (int(round(x1)), int(round(y1))), (int(round(x2)), int(round(y2)))
        )
        if not inside:
            raise ConfigError(
                f"field '{lines_field}.{i}.points': line {line.name!r} does not touch the {size} frame "
                f"({_pt((x1, y1))} to {_pt((x2, y2))})"
            )
        if not all(0 <= x <= width and 0 <= y <= height for x, y in ((x1, y1), (x2, y2))):
            notes.append(f"line {line.name!r} is partly outside the {size} frame: only its visible part can be crossed")
    return tuple(notes)


def _span(values: Any) -> str:
    v = list(values)
    return f"{min(v):g}..{max(v):g}"
