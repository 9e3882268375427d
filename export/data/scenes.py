"""Scripted tracking scenes: videos whose truth holds track ids, zones, lines and the true events.

The demo video (:func:`export.data.synthetic.write_video`) has shapes bouncing around: good for
detection and identity, but nothing enters or leaves, stops, or crosses a line on cue. The scenes
here are scripted so that a tracker, the zones and the lines have something to get right, and
so that their truth is known exactly:

- ``crossings``: six shapes enter and leave the frame, cross each other's paths (one paints over
  the other: occlusion), stop for a while (stationary), cross the tripwire ``gate`` in both
  directions (three "in", four "out") and enter and leave the zone ``lot``.
- ``anchors``: a zone ``band`` across the lower part of the image, under tall shapes whose box
  anchor (the bottom centre of the box, what NVRs test against their zones) falls in the band
  while the shape mostly is not: an upright star (its anchor lies between its two lower tips, off
  the shape), a ring just above the band; a triangle that walks down through it (the two rules
  disagree while it goes in and out), a circle sitting in it and a square far from it (both
  rules agree: the controls).

Shapes are painted exactly as in the training images and the demo video (same classes, sizes,
textures, noise); the camera is fixed (zones and lines are fixed in the image), under drifting
light and sensor noise.

The truth (``PATH.json`` next to ``PATH.mp4``) is the demo video's COCO json (every annotation
has its ``track_id``; image id = 0-based frame index) plus:

- ``zones`` and ``lines``, in the edgeseg configuration's form (pixel coordinates), so that the
  truth file can be pasted into a config;
- ``events``: ``zones`` (per track and zone: the frame and time it entered and left, ``null``
  for a leave after the end), ``crossings`` (per line: track, direction, frame, time) and
  ``stationary`` (the frames each track stands still), times in seconds from the first frame;
- ``membership``: per zone and track, over the frames where the track is annotated, the mask's
  fraction inside the zone, the mask rule's verdict (fraction >= the zone's ``min_fraction``)
  and the box anchor's verdict (the pixel at the bottom centre of the annotation's ``bbox``, in
  the column of its centre on its last row, inside the zone's pixels: the runtime's rule).

How the true events are derived from the ground-truth masks (:func:`zone_events`,
:func:`line_crossings`), the same rules as the runtime's ``edgeseg.zones`` minus its inertia:

- a track is in a zone in a frame where its visible mask has at least ``min_fraction`` of its
  pixels inside the zone's polygon; in a frame where it is hidden (not annotated, but annotated
  again later) it keeps the state it had; after its last annotated frame it is gone, so it leaves
  at the next frame. An enter or leave is the first frame of the new state.
- a track crosses a line when the path of its mask centroids (between consecutive annotated
  frames) crosses the line's segment; the direction is "in" when it goes from the line's left to
  its right as seen from the line's first point towards its second (image coordinates, y down:
  the right side is where ``(x2 - x1) * (y - y1) - (y2 - y1) * (x - x1) > 0``), "out" the other
  way. The crossing's frame is the first frame on the new side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import cv2
import numpy as np
import numpy.typing as npt

from edgeseg.errors import ExportError
from export.data.synthetic import (
    RING_HOLE_RANGE,
    SUBPIXEL_BITS,
    VIDEO_FPS,
    VIDEO_FRAMES,
    VIDEO_SIZE,
    BoolMask,
    Shape,
    TrackedInstance,
    VideoStage,
    VideoSummary,
    _contrasting_colour,
    check_video_args,
    image_rng,
    make_background,
    render_video,
    video_info,
    write_ground_truth,
)

SCENE_STREAM: Final = 4
"""Stream of :func:`image_rng` for the scenes' backgrounds and colours (index: the scene's)."""
DEFAULT_MIN_FRACTION: Final = 0.5
"""A zone's ``min_fraction`` unless the scene sets another: the share of the mask inside."""
COORDINATES: Final = "pixel"
"""The ``coordinates`` field of the zones and lines written into the truth."""

Point = tuple[float, float]


@dataclass(frozen=True)
class Actor:
    """One scripted object: a shape that follows key positions.

    Attributes:
        track_id: its ground-truth identity.
        kind: its class.
        radius: circumradius as a fraction of the frame height.
        keys: (u, x, y): at time u (0 first frame, 1 last), the centre at (x * width, y * height);
            linear in between; absent before the first key and after the last. Positions may lie
            outside the frame: the shape enters or leaves it.
        angle: rotation at u = 0, radians.
        spin: rotation over the whole video, radians.
    """

    track_id: int
    kind: str
    radius: float
    keys: tuple[tuple[float, float, float], ...]
    angle: float = 0.0
    spin: float = 0.0

    def center(self, u: float) -> Point | None:
        """Centre (fractions of width and height) at time ``u``, None when absent."""
        us = [k[0] for k in self.keys]
        if u < us[0] - 1e-9 or u > us[-1] + 1e-9:
            return None
        x = float(np.interp(u, us, [k[1] for k in self.keys]))
        y = float(np.interp(u, us, [k[2] for k in self.keys]))
        return x, y

    def still(self) -> list[tuple[float, float]]:
        """Time spans (u0, u1) where two consecutive keys hold the same position."""
        return [(a[0], b[0]) for a, b in zip(self.keys, self.keys[1:]) if (a[1], a[2]) == (b[1], b[2])]


@dataclass(frozen=True)
class SceneScript:
    """A scene: its actors (in paint order), zones and lines (points as fractions of the frame)."""

    name: str
    description: str
    actors: tuple[Actor, ...]
    zones: tuple[tuple[str, tuple[Point, ...]], ...] = ()
    lines: tuple[tuple[str, tuple[Point, Point]], ...] = ()


CROSSINGS: Final = SceneScript(
    "crossings",
    "shapes enter and leave the frame, cross paths, stop, cross the line 'gate' both ways and use the zone 'lot'",
    actors=(
        Actor(1, "circle", 0.10, ((0.00, -0.08, 0.20), (0.70, 1.10, 0.20))),
        Actor(2, "square", 0.11, ((0.00, 1.08, 0.28), (0.40, 0.14, 0.28), (0.50, 0.14, 0.66), (0.78, 0.14, 0.66),
                                  (1.00, 0.14, 1.20)), angle=0.3, spin=1.5),
        Actor(3, "triangle", 0.11, ((0.00, 0.15, 0.72), (0.30, 0.15, 0.72), (0.60, 0.84, 0.72), (0.85, 0.50, 0.62),
                                    (1.00, 0.50, 0.62)), spin=0.8),
        Actor(4, "star", 0.12, ((0.05, 1.06, 0.42), (0.55, 0.30, 0.55), (0.70, 0.30, 0.55), (0.95, 0.30, -0.20)),
              spin=1.0),
        Actor(5, "ring", 0.10, ((0.00, 0.44, 0.50), (0.60, 0.44, 0.50), (0.85, 1.10, 0.50))),
        Actor(6, "circle", 0.09, ((0.45, 0.86, 1.10), (0.70, 0.86, 0.30), (1.00, 0.30, -0.15))),
    ),
    zones=(("lot", ((0.04, 0.45), (0.36, 0.42), (0.40, 0.88), (0.03, 0.90))),),
    lines=(("gate", ((0.62, 0.95), (0.62, 0.05))),),
)

ANCHORS: Final = SceneScript(
    "anchors",
    "a zone 'band' under tall shapes whose box anchor is in the band while their masks mostly are not",
    actors=(
        Actor(1, "star", 0.16, ((0.00, 0.08, 0.62 - 0.45 * 0.16), (1.00, 0.28, 0.62 - 0.45 * 0.16))),
        Actor(2, "ring", 0.13, ((0.00, 0.96, 0.62 - 0.35 * 0.13), (1.00, 0.72, 0.62 - 0.35 * 0.13))),
        Actor(3, "triangle", 0.15, ((0.00, 0.50, 0.40), (1.00, 0.50, 1.15))),
        Actor(4, "circle", 0.07, ((0.00, 0.16, 0.74), (1.00, 0.16, 0.74))),
        Actor(5, "square", 0.10, ((0.00, 0.95, 0.12), (1.00, 0.05, 0.12)), spin=2.0),
    ),
    zones=(("band", ((0.0, 0.62), (1.0, 0.62), (1.0, 0.82), (0.0, 0.82))),),
)

SCENES: Final = {s.name: s for s in (CROSSINGS, ANCHORS)}
"""Scene name -> script."""


# -- geometry of the truth ------------------------------------------------------------------------


def to_pixels(points: Sequence[Point], width: int, height: int) -> list[list[float]]:
    """Fractions of the frame to pixel coordinates inside it (x * (width - 1), 2 decimals)."""
    return [[round(x * (width - 1), 2), round(y * (height - 1), 2)] for x, y in points]


def polygon_mask(points: Sequence[Sequence[float]], height: int, width: int) -> BoolMask:
    """The pixels of a polygon given in pixel coordinates."""
    canvas = np.zeros((height, width), np.uint8)
    pts = np.round(np.asarray(points, np.float64) * (1 << SUBPIXEL_BITS)).astype(np.int32).reshape(-1, 1, 2)
    cv2.fillPoly(canvas, [pts], 1, cv2.LINE_8, SUBPIXEL_BITS)
    return canvas.astype(np.bool_)


def side_of_line(line: Sequence[Sequence[float]], point: Point) -> float:
    """> 0 right of the line seen from its first point towards its second (image y down), < 0 left."""
    (x1, y1), (x2, y2) = line[0], line[1]
    return (x2 - x1) * (point[1] - y1) - (y2 - y1) * (point[0] - x1)


def _segments_cross(a: Point, b: Point, line: Sequence[Sequence[float]]) -> bool:
    """Whether the step a -> b crosses the line's segment (a and b on opposite sides of it)."""
    p1, p2 = (float(line[0][0]), float(line[0][1])), (float(line[1][0]), float(line[1][1]))
    s1, s2 = side_of_line(line, a), side_of_line(line, b)
    t1, t2 = side_of_line((a, b), p1), side_of_line((a, b), p2)
    return s1 * s2 < 0 and t1 * t2 <= 0


def mask_centroid(mask: BoolMask) -> Point:
    """Mean pixel (x, y) of a mask (pixel indices, as the runtime's crops give them)."""
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())


# -- events from per-frame observations -----------------------------------------------------------


def zone_events(inside: dict[int, bool], frames: int) -> list[tuple[str, int]]:
    """("enter" | "leave", frame) of one track in one zone, from its verdict per annotated frame.

    Hidden frames keep the state; after the last annotated frame the track is gone (a leave at
    the next frame, when there is one).
    """
    events: list[tuple[str, int]] = []
    state = False
    for frame in sorted(inside):
        if inside[frame] != state:
            state = inside[frame]
            events.append(("enter" if state else "leave", frame))
    last = max(inside) if inside else -1
    if state and last + 1 < frames:
        events.append(("leave", last + 1))
    return events


def line_crossings(path: dict[int, Point], line: Sequence[Sequence[float]]) -> list[tuple[Literal["in", "out"], int]]:
    """(direction, frame) of one track's centroid path over a line.

    Points exactly on the line are skipped; a crossing needs the step between two consecutive
    points off the line to cross the line's segment.
    """
    out: list[tuple[Literal["in", "out"], int]] = []
    previous: Point | None = None
    for frame in sorted(path):
        point = path[frame]
        side = side_of_line(line, point)
        if side == 0:
            continue
        if previous is not None and _segments_cross(previous, point, line):
            out.append(("in" if side > 0 else "out", frame))
        previous = point
    return out


@dataclass
class _Observations:
    """What the truth needs from each annotated instance, gathered while the video is painted."""

    zones: list[tuple[str, list[list[float]], BoolMask, float]]
    centroids: dict[int, dict[int, Point]]
    fractions: dict[tuple[str, int], dict[int, float]]
    anchors: dict[tuple[str, int], dict[int, bool]]

    def __call__(self, frame: int, seen: Sequence[TrackedInstance]) -> None:
        for t in seen:
            mask = t.instance.mask
            self.centroids.setdefault(t.track_id, {})[frame] = mask_centroid(mask)
            x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
            # The bottom centre of the box, as the runtime takes it: the pixel in the column of the
            # box's centre (rounded down) on its last row.
            ax, ay = (2 * x + w) // 2, y + h - 1
            area = int(np.count_nonzero(mask))
            for name, _, raster, _ in self.zones:
                key = (name, t.track_id)
                self.fractions.setdefault(key, {})[frame] = int(np.count_nonzero(mask & raster)) / max(area, 1)
                self.anchors.setdefault(key, {})[frame] = bool(raster[ay, ax])


def _time(frame: int | None, fps: int) -> float | None:
    return None if frame is None else round(frame / fps, 4)


def _truth(script: SceneScript, obs: _Observations, lines: list[dict[str, Any]], frames: int, fps: int
           ) -> dict[str, Any]:
    """The ``events`` and ``membership`` of the truth json."""
    zone_rows: list[dict[str, Any]] = []
    membership: list[dict[str, Any]] = []
    for name, _, _, min_fraction in obs.zones:
        for track_id in sorted(tid for (z, tid) in obs.fractions if z == name):
            fractions = obs.fractions[(name, track_id)]
            inside = {f: v >= min_fraction for f, v in fractions.items()}
            anchors = obs.anchors[(name, track_id)]
            order = sorted(fractions)
            membership.append({
                "zone": name, "track_id": track_id, "frames": order,
                "fraction": [round(fractions[f], 4) for f in order],
                "inside": [inside[f] for f in order],
                "anchor_inside": [anchors[f] for f in order],
            })
            enter: int | None = None
            for kind, frame in zone_events(inside, frames):
                if kind == "enter":
                    enter = frame
                    continue
                zone_rows.append(_zone_row(track_id, name, enter, frame, fps))
                enter = None
            if enter is not None:
                zone_rows.append(_zone_row(track_id, name, enter, None, fps))
    crossings = [
        {"track_id": track_id, "line": line["name"], "direction": direction, "frame": frame,
         "time": _time(frame, fps)}
        for line in lines
        for track_id, path in sorted(obs.centroids.items())
        for direction, frame in line_crossings(path, line["points"])
    ]
    crossings.sort(key=lambda c: (c["frame"], c["track_id"]))
    stationary = []
    for actor in script.actors:
        for u0, u1 in actor.still():
            first, last = math.ceil(u0 * (frames - 1) - 1e-9), math.floor(u1 * (frames - 1) + 1e-9)
            if last > first:
                stationary.append({"track_id": actor.track_id, "start_frame": first, "end_frame": last,
                                   "start_time": _time(first, fps), "end_time": _time(last, fps)})
    zone_rows.sort(key=lambda r: (r["enter_frame"], r["track_id"], r["zone"]))
    return {"events": {"zones": zone_rows, "crossings": crossings, "stationary": stationary},
            "membership": membership}


def _zone_row(track_id: int, zone: str, enter: int | None, leave: int | None, fps: int) -> dict[str, Any]:
    return {"track_id": track_id, "zone": zone, "enter_frame": enter, "enter_time": _time(enter, fps),
            "leave_frame": leave, "leave_time": _time(leave, fps)}


# -- writing --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneSummary(VideoSummary):
    """A written scene: the video's summary plus its true events."""

    zone_events: int = 0
    crossings: int = 0
    anchor_agreement: dict[str, float] | None = None
    """Per zone: the share of annotated object-frames where the box anchor's verdict equals the mask's."""


def write_tracking_scene(
    name: str,
    path: Path,
    frames: int = VIDEO_FRAMES,
    seed: int = 0,
    fps: int = VIDEO_FPS,
    size: tuple[int, int] = VIDEO_SIZE,
) -> SceneSummary:
    """Scene ``name`` (:data:`SCENES`) as an mp4v video at ``path`` and its truth at ``path.with_suffix('.json')``.

    The script is in time fractions and frame fractions, so any length and size give the same
    story (shorter videos move faster). Deterministic by ``seed`` (backgrounds, colours, noise).
    """
    script = SCENES.get(name)
    if script is None:
        raise ExportError(f"tracking scene {name!r}: expected one of {', '.join(SCENES)}")
    check_video_args(frames, seed, fps, size, what=f"tracking scene {name}")
    width, height = size
    rng = image_rng(seed, SCENE_STREAM, list(SCENES).index(name))
    pad = max(width, height) // 8
    backgrounds = (make_background(rng, height + 2 * pad, width + 2 * pad),
                   make_background(rng, height + 2 * pad, width + 2 * pad))
    stage = VideoStage(backgrounds, pad, float(rng.uniform(0, 2 * math.pi)), pan=False)
    view = backgrounds[0][pad:pad + height, pad:pad + width]
    looks = [_look(rng, actor, view) for actor in script.actors]

    timeline: list[list[tuple[int, Shape]]] = []
    for i in range(frames):
        u = i / max(frames - 1, 1)
        now: list[tuple[int, Shape]] = []
        for actor, look in zip(script.actors, looks):
            centre = actor.center(u)
            if centre is not None:
                now.append((actor.track_id, Shape(
                    kind=actor.kind, center=(centre[0] * width, centre[1] * height), radius=actor.radius * height,
                    angle=actor.angle + actor.spin * u, **look)))
        timeline.append(now)

    zone_points = [(z, to_pixels(pts, width, height)) for z, pts in script.zones]
    zone_docs: list[dict[str, Any]] = [
        {"name": z, "points": pts, "coordinates": COORDINATES, "min_fraction": DEFAULT_MIN_FRACTION}
        for z, pts in zone_points
    ]
    line_docs: list[dict[str, Any]] = [{"name": n, "points": to_pixels(pts, width, height), "coordinates": COORDINATES}
                                       for n, pts in script.lines]
    obs = _Observations(
        zones=[(z, pts, polygon_mask(pts, height, width), DEFAULT_MIN_FRACTION) for z, pts in zone_points],
        centroids={}, fractions={}, anchors={},
    )
    images, anns, dropped = render_video(path, timeline, stage, seed, fps, size, observe=obs)
    truth = _truth(script, obs, line_docs, frames, fps)
    info = video_info(f"edgeseg synthetic tracking scene '{name}' ground truth (image id = 0-based frame index): "
                      f"{script.description}", seed, path, fps, frames, dropped)
    info["scene"] = name
    gt = path.with_suffix(".json")
    write_ground_truth(gt, info, images, anns, {"zones": zone_docs, "lines": line_docs, **truth})
    agreement: dict[str, float] = {}
    for z in zone_docs:
        rows = [m for m in truth["membership"] if m["zone"] == z["name"]]
        total = sum(len(m["frames"]) for m in rows)
        same = sum(a == b for m in rows for a, b in zip(m["inside"], m["anchor_inside"]))
        agreement[z["name"]] = same / total if total else 1.0
    return SceneSummary(path, gt, frames, len(anns), dropped, len({a["track_id"] for a in anns}),
                        zone_events=len(truth["events"]["zones"]), crossings=len(truth["events"]["crossings"]),
                        anchor_agreement=agreement)


def _look(rng: np.random.Generator, actor: Actor, view: npt.NDArray[np.uint8]) -> dict[str, Any]:
    """Colour (contrasting with the background where the actor first shows), texture and ring hole."""
    height, width = view.shape[:2]
    x, y = next((k[1], k[2]) for k in actor.keys)
    cx, cy = min(max(x, 0.0), 1.0) * (width - 1), min(max(y, 0.0), 1.0) * (height - 1)
    r = actor.radius * height
    y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 1, height)
    x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 1, width)
    under = view[y0:y1, x0:x1].reshape(-1, 3).mean(axis=0).astype(np.float32)
    return {
        "colour": _contrasting_colour(rng, under),
        "texture": ("solid", "gradient", "stripes")[int(rng.integers(3))],
        "texture_seed": int(rng.integers(2**31)),
        "hole": float(rng.uniform(*RING_HOLE_RANGE)),
    }
