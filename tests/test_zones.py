"""Zones and lines (edgeseg/zones, edgeseg/config/zones.py): rasters, mask fractions, box
anchors, inertia, occupancy, line crossings, and every bad input refused in one line."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import pytest
from pydantic import Field

from edgeseg.analytics.types import TrackUpdate, TrackView
from edgeseg.config.errors import parse_section
from edgeseg.config.zones import LineConfig, LineList, ZoneConfig, ZoneList, check_against
from edgeseg.errors import ConfigError
from edgeseg.strict import StrictModel
from edgeseg.structures import Instances
from edgeseg.zones.geometry import Observations, ZoneRaster, inside_zone, mask_fractions, rasterize
from edgeseg.zones.polygon import polygon_problem
from edgeseg.zones.state import ZoneTracker

CLASSES = ("person", "car", "dog")
SIZE = (100, 200)  # height, width


class _Doc(StrictModel):
    """What the configuration's top level holds of this part."""

    zones: ZoneList = Field(default_factory=list, description="zones")
    lines: LineList = Field(default_factory=list, description="lines")


def _parse(raw: Dict[str, Any]) -> _Doc:
    return parse_section(_Doc, raw, "")


def _zone(name: str = "z", points: Any = ((0, 0), (100, 0), (100, 100), (0, 100)), **kw: Any) -> ZoneConfig:
    return ZoneConfig(name=name, points=[list(p) for p in points], **kw)


def _line(name: str = "l", points: Any = ((0, 50), (200, 50)), **kw: Any) -> LineConfig:
    return LineConfig(name=name, points=[list(p) for p in points], **kw)


def _instances(
    full_masks: Sequence[np.ndarray], classes: Optional[Sequence[int]] = None, size: Tuple[int, int] = SIZE,
    with_masks: bool = True,
) -> Instances:
    """Instances from full-frame masks: each box and crop is the mask's bounding box."""
    boxes, crops, regions = [], [], []
    for m in full_masks:
        ys, xs = np.nonzero(m)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        boxes.append([x0, y0, x1, y1])
        crops.append(np.ascontiguousarray(m[y0:y1, x0:x1]))
        regions.append([x0, y0, x1, y1])
    n = len(full_masks)
    return Instances(
        image_size=size,
        boxes=np.array(boxes, np.float32).reshape(-1, 4),
        scores=np.full(n, 0.9, np.float32),
        class_ids=np.array(classes if classes is not None else [0] * n, np.int32),
        class_names=CLASSES,
        masks=tuple(crops) if with_masks else (),
        mask_boxes=np.array(regions, np.int32).reshape(-1, 4) if with_masks else np.zeros((0, 4), np.int32),
    )


def _rect(x0: int, y0: int, x1: int, y1: int, size: Tuple[int, int] = SIZE) -> np.ndarray:
    m = np.zeros(size, np.bool_)
    m[y0:y1, x0:x1] = True
    return m


def _view(
    track_id: int, instance: Optional[int], centroid: Tuple[float, float] = (0.0, 0.0), cls: str = "person",
    state: str = "confirmed", last_seen: float = 0.0,
) -> TrackView:
    return TrackView(
        track_id=track_id, class_id=CLASSES.index(cls), class_name=cls, state=state,  # type: ignore[arg-type]
        box=(0.0, 0.0, 1.0, 1.0), score=0.9 if instance is not None else 0.0, instance=instance,
        centroid=centroid, stationary=False, first_seen=0.0, last_seen=last_seen, hits=1,
    )


def _update(frame: int, views: Sequence[TrackView], n: int = 0) -> TrackUpdate:
    return TrackUpdate(frame_id=frame, timestamp=100.0 + frame, track_ids=np.full(n, -1, np.int32), tracks=tuple(views))


class _Driver:
    """Feeds one track through a ZoneTracker, frame by frame, inside or outside zone ``z``."""

    def __init__(self, tracker: ZoneTracker) -> None:
        self.tracker = tracker
        self.frame = 0
        self.inside_mask = _rect(10, 10, 60, 60)
        self.outside_mask = _rect(150, 10, 190, 60)

    def step(self, where: Optional[bool], track_id: int = 1) -> Any:
        """where: True inside, False outside, None not observed (lost)."""
        if where is None:
            inst = Instances.empty(SIZE, CLASSES)
            views = [_view(track_id, None, state="lost")]
        else:
            inst = _instances([self.inside_mask if where else self.outside_mask])
            views = [_view(track_id, 0)]
        update = self.tracker.update(inst, _update(self.frame, views, len(inst)))
        self.frame += 1
        return update


# -- rasters and fractions --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_raster_agrees_with_point_polygon_test(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, w = 90, 130
    pts = rng.uniform([-15, -15], [w + 15, h + 15], (7, 2))
    centre = pts.mean(0)
    pts = pts[np.argsort(np.arctan2(pts[:, 1] - centre[1], pts[:, 0] - centre[0]))]  # a simple polygon
    raster = rasterize([tuple(p) for p in pts], (h, w))
    poly = pts.astype(np.float32).reshape(-1, 1, 2)
    dist = np.array([[cv2.pointPolygonTest(poly, (float(x), float(y)), True) for x in range(w)] for y in range(h)])
    differ = raster != (dist >= 0)
    assert raster.shape == (h, w) and raster.any()
    # the raster only ever differs from the exact test along the outline, by at most ~1.5 px
    assert differ.sum() < 0.05 * raster.sum()
    assert np.all(np.abs(dist[differ]) <= 1.5)


def test_raster_is_cached_read_only_and_clipped_to_the_frame() -> None:
    pts = [(-50.0, -50.0), (100.0, -50.0), (100.0, 50.0), (-50.0, 50.0)]
    raster = rasterize(pts, SIZE)
    assert raster is rasterize(pts, SIZE) and not raster.flags.writeable
    assert raster.shape == SIZE
    assert raster[:50, :100].all() and not raster[52:, :].any() and not raster[:, 102:].any()


def _brute_fraction(zone: np.ndarray, mask: np.ndarray) -> float:
    return float((zone & mask).sum()) / float(mask.sum())


# The zone is x 0..100 of a 200-wide frame (its raster includes the outline column 100).
@pytest.mark.parametrize(
    ("name", "mask", "expected"),
    [
        ("fully in", _rect(20, 20, 60, 80), 1.0),
        ("fully out", _rect(130, 20, 190, 80), 0.0),
        ("half in", _rect(61, 10, 141, 90), 0.5),
        ("a sliver in", _rect(91, 10, 191, 90), 0.1),
    ],
)
def test_mask_fraction_table(name: str, mask: np.ndarray, expected: float) -> None:
    zone = ZoneRaster.build(_zone().pixel_points(SIZE), SIZE)
    inst = _instances([mask])
    obs = Observations(inst, np.array([0]))
    fraction = float(obs.fractions(zone)[0])
    assert fraction == pytest.approx(expected, abs=0.015), name
    assert fraction == pytest.approx(_brute_fraction(zone.mask, mask))


def test_mask_fraction_in_a_zone_clipped_by_the_frame() -> None:
    # the zone reaches far beyond the frame's right and bottom edges: the visible part counts
    zone_cfg = _zone(points=((150, 50), (900, 50), (900, 900), (150, 900)))
    zone = ZoneRaster.build(zone_cfg.pixel_points(SIZE), SIZE)
    inst = _instances([_rect(160, 60, 200, 100), _rect(100, 60, 180, 100)])
    fractions = Observations(inst, np.array([0, 1])).fractions(zone)
    assert fractions[0] == 1.0
    assert fractions[1] == pytest.approx(_brute_fraction(zone.mask, _rect(100, 60, 180, 100)))
    assert 0.3 < fractions[1] < 0.45
    notes = check_against([zone_cfg], [], SIZE, CLASSES)
    assert notes and "partly outside the 200x100 frame: clipped" in notes[0]


def test_mask_fractions_match_brute_force_on_random_crops() -> None:
    """The integral-image shortcuts (window all zone, no zone) and the straddling path agree with
    a full-frame computation."""
    rng = np.random.default_rng(7)
    size = (240, 320)
    zone = ZoneRaster.build([(40.5, 30.2), (280.0, 60.0), (200.0, 200.0), (60.0, 220.7), (100.0, 120.0)], size)
    masks = []
    for _ in range(60):
        w, h = rng.integers(3, 90, 2)
        x0, y0 = rng.integers(0, size[1] - w), rng.integers(0, size[0] - h)
        m = np.zeros(size, np.uint8)
        cv2.ellipse(m, (int(x0 + w // 2), int(y0 + h // 2)), (int(w // 2), int(h // 2)), 0, 0, 360, 1, -1)
        masks.append(m.astype(bool))
    inst = _instances(masks, size=size)
    obs = Observations(inst, np.arange(len(masks)))
    got = obs.fractions(zone)
    want = np.array([_brute_fraction(zone.mask, m) for m in masks])
    np.testing.assert_allclose(got, want)
    assert (want == 0).any() and (want == 1).any() and ((want > 0) & (want < 1)).sum() > 5


def test_mask_fractions_of_empty_input_and_empty_zone() -> None:
    zone = ZoneRaster.build([(0, 0), (10, 0), (10, 10)], SIZE)
    assert mask_fractions(zone, [], np.zeros((0, 4), np.int32), np.zeros(0, np.int64)).shape == (0,)
    outside = ZoneRaster.build([(500, 500), (600, 500), (600, 600)], SIZE)
    assert outside.empty
    inst = _instances([_rect(0, 0, 50, 50)])
    assert not Observations(inst, np.array([0])).inside(outside, "mask", 0.5).any()


def test_box_anchor_and_mask_disagree_on_a_large_object() -> None:
    """A large object whose bottom centre is in a zone while only ~10% of its mask is: the mask
    says outside, the box anchor (the NVRs' rule) says inside."""
    size = (200, 200)
    mask = np.zeros(size, np.uint8)
    cv2.ellipse(mask, (100, 100), (80, 99), 0, 0, 360, 1, -1)  # box about x 20..181, y 1..200
    zone_points = ((70, 150), (130, 150), (130, 199), (70, 199))
    inst = _instances([mask.astype(bool)], size=size)
    raster = ZoneRaster.build(zone_points, size)
    obs = Observations(inst, np.array([0]))
    fraction = float(obs.fractions(raster)[0])
    assert 0.05 < fraction < 0.15
    assert not obs.inside(raster, "mask", 0.5)[0]
    assert obs.inside(raster, "box_anchor", 0.5)[0]
    assert inside_zone(raster, inst, np.array([0]), "box_anchor", 0.5)[0]

    zones = [_zone("by_mask", zone_points, enter_frames=1), _zone("by_anchor", zone_points, method="box_anchor",
                                                                    enter_frames=1)]
    tracker = ZoneTracker(zones, [], CLASSES)
    update = tracker.update(inst, _update(0, [_view(1, 0)], 1))
    assert update.inside[1] == frozenset({"by_anchor"})
    assert update.occupancy["by_mask"]["person"] == 0 and update.occupancy["by_anchor"]["person"] == 1


def test_frames_without_masks_use_the_box_area() -> None:
    tracker = ZoneTracker([_zone(enter_frames=1)], [], CLASSES)
    half = _instances([_rect(61, 10, 141, 90)], with_masks=False)  # 40 of its 80 columns in x 0..100
    most = _instances([_rect(40, 10, 120, 90)], with_masks=False)
    assert tracker.update(half, _update(0, [_view(1, 0)], 1)).inside[1] == frozenset({"z"})  # 0.5 >= 0.5
    tracker2 = ZoneTracker([_zone(enter_frames=1, min_fraction=0.8)], [], CLASSES)
    assert tracker2.update(half, _update(0, [_view(1, 0)], 1)).inside[1] == frozenset()
    assert tracker2.update(most, _update(1, [_view(1, 0)], 1)).inside[1] == frozenset()  # 61/80 < 0.8


def test_normalized_zone_follows_the_frame_size() -> None:
    zone = _zone(points=((0, 0), (0.5, 0), (0.5, 1), (0, 1)), coordinates="normalized", enter_frames=1)
    tracker = ZoneTracker([zone], [], CLASSES)
    small = tracker.update(_instances([_rect(10, 10, 40, 40)]), _update(0, [_view(1, 0)], 1))
    big_size = (400, 800)
    big = tracker.update(_instances([_rect(500, 10, 700, 300, big_size)], size=big_size), _update(1, [_view(2, 0)], 1))
    assert small.inside[1] == frozenset({"z"}) and big.inside[2] == frozenset()


# -- inertia, lost and removed tracks ---------------------------------------------------------------


def test_enter_after_n_frames_and_flicker_does_not_toggle() -> None:
    tracker = ZoneTracker([_zone(enter_frames=3, leave_frames=2)], [], CLASSES)
    drive = _Driver(tracker)
    assert drive.step(True).entered == () and drive.step(True).entered == ()
    update = drive.step(True)
    assert update.entered == ((1, "z"),) and update.inside[1] == frozenset({"z"})
    assert tracker.transition_times == {(1, "z"): 100.0}  # the streak began at frame 0
    # one frame out, then in again: the leave streak restarts, no toggle
    for where in (False, True, False, True, False, True):
        update = drive.step(where)
        assert update.left == () and update.entered == () and update.inside[1] == frozenset({"z"})
    assert drive.step(False).left == ()
    update = drive.step(False)
    assert update.left == ((1, "z"),) and update.inside[1] == frozenset()
    assert tracker.transition_times == {(1, "z"): 100.0 + drive.frame - 2}


def test_flicker_at_the_threshold_never_enters() -> None:
    tracker = ZoneTracker([_zone(enter_frames=2)], [], CLASSES)
    drive = _Driver(tracker)
    for k in range(20):
        update = drive.step(k % 2 == 0)
        assert update.entered == () and update.occupancy == {"z": {"person": 0, "car": 0, "dog": 0}}


def test_lost_frames_keep_the_state_and_the_streak() -> None:
    tracker = ZoneTracker([_zone(enter_frames=3, leave_frames=3)], [], CLASSES)
    drive = _Driver(tracker)
    drive.step(True)
    drive.step(True)
    assert drive.step(None).entered == ()  # lost: neither advances nor breaks the streak
    assert tracker.membership_state(1, "z") == (False, 2)
    assert drive.step(True).entered == ((1, "z"),)
    for _ in range(5):
        update = drive.step(None)
        assert update.inside[1] == frozenset({"z"}) and update.occupancy["z"]["person"] == 1
        assert update.left == ()


def test_removed_track_leaves_every_zone_in_that_frame() -> None:
    zones = [_zone("a", enter_frames=1), _zone("b", ((0, 0), (200, 0), (200, 100), (0, 100)), enter_frames=1)]
    tracker = ZoneTracker(zones, [_line()], CLASSES)
    inst = _instances([_rect(10, 10, 60, 60)])
    update = tracker.update(inst, _update(0, [_view(7, 0, (30.0, 30.0))], 1))
    assert update.entered == ((7, "a"), (7, "b"))
    removed = _view(7, None, state="removed", last_seen=100.0)
    update = tracker.update(Instances.empty(SIZE, CLASSES), _update(1, [removed]))
    assert update.left == ((7, "a"), (7, "b"))
    assert tracker.transition_times == {(7, "a"): 100.0, (7, "b"): 100.0}  # its last sighting
    assert 7 not in update.inside and update.occupancy["a"]["person"] == 0
    assert tracker.membership_state(7, "a") is None
    # a track the tracker stops reporting without a "removed" view is dropped the same way
    tracker.update(inst, _update(2, [_view(8, 0, (30.0, 30.0))], 1))
    update = tracker.update(Instances.empty(SIZE, CLASSES), _update(3, []))
    assert update.left == ((8, "a"), (8, "b")) and tracker.membership_state(8, "a") is None


def test_track_rows_are_reused_without_leaking_state() -> None:
    tracker = ZoneTracker([_zone(enter_frames=1)], [_line()], CLASSES)
    inst = _instances([_rect(10, 10, 60, 60)])
    for k in range(300):  # more tracks than the table's first allocation, one at a time
        update = tracker.update(inst, _update(2 * k, [_view(k, 0, (30.0, 30.0))], 1))
        assert update.entered == ((k, "z"),)
        update = tracker.update(inst, _update(2 * k + 1, [_view(k, None, state="removed")], 1))
        assert update.left == ((k, "z"),)
    many = [_view(1000 + k, 0, (30.0, 30.0)) for k in range(150)]  # and many at once
    update = tracker.update(_instances([_rect(10, 10, 60, 60)] * 1), _update(999, many, 1))
    assert len(update.entered) == 150 and update.occupancy["z"]["person"] == 150


# -- occupancy and class filters --------------------------------------------------------------------


def test_occupancy_counts_per_class_with_filters_and_zeros() -> None:
    zones = [
        _zone("people", classes=["person"], enter_frames=1),
        _zone("all", enter_frames=1),
        _zone("dogs", ((120, 0), (200, 0), (200, 100), (120, 100)), classes=["dog", "car"], enter_frames=1),
    ]
    tracker = ZoneTracker(zones, [], CLASSES)
    empty = tracker.update(Instances.empty(SIZE, CLASSES), _update(0, []))
    assert empty.occupancy == {
        "people": {"person": 0}, "all": {"person": 0, "car": 0, "dog": 0}, "dogs": {"dog": 0, "car": 0},
    }
    inst = _instances([_rect(10, 10, 40, 40), _rect(50, 10, 90, 40), _rect(20, 50, 60, 90)], classes=[0, 1, 1])
    views = [_view(1, 0, cls="person"), _view(2, 1, cls="car"), _view(3, 2, cls="car")]
    update = tracker.update(inst, _update(1, views, 3))
    assert update.occupancy == {
        "people": {"person": 1}, "all": {"person": 1, "car": 2, "dog": 0}, "dogs": {"dog": 0, "car": 0},
    }
    assert update.inside == {1: frozenset({"people", "all"}), 2: frozenset({"all"}), 3: frozenset({"all"})}
    # the car leaves (removed): counts go back down, zeros stay
    update = tracker.update(inst, _update(2, [views[0], _view(2, None, cls="car", state="removed"), views[2]], 3))
    assert update.occupancy["all"] == {"person": 1, "car": 1, "dog": 0}


def test_tracks_out_of_range_or_unmatched_are_not_observed() -> None:
    tracker = ZoneTracker([_zone(enter_frames=1)], [_line()], CLASSES)
    inst = _instances([_rect(10, 10, 40, 40)])
    views = [_view(1, 5), _view(2, None, state="lost"), _view(3, 0, state="tentative")]
    update = tracker.update(inst, _update(0, views, 1))
    assert update.inside == {1: frozenset(), 2: frozenset()} and update.entered == ()
    assert update.occupancy["z"]["person"] == 0


# -- lines ------------------------------------------------------------------------------------------


def _walk(tracker: ZoneTracker, path: Sequence[Tuple[float, float]], track_id: int = 1, cls: str = "person",
          start: int = 0) -> List[Any]:
    """Feed a track whose centroid follows ``path``; returns every crossing."""
    inst = _instances([_rect(0, 0, 5, 5)], classes=[CLASSES.index(cls)])
    crossings: List[Any] = []
    for k, point in enumerate(path):
        update = tracker.update(inst, _update(start + k, [_view(track_id, 0, point, cls=cls)], 1))
        crossings.extend(update.crossings)
    return crossings


def test_line_crossings_in_both_directions() -> None:
    # drawn left to right: moving down the image is "in", up is "out"
    tracker = ZoneTracker([], [_line(points=((20, 50), (180, 50)))], CLASSES)
    down = _walk(tracker, [(100, 20), (100, 35), (100, 48), (100, 60), (100, 80)])
    assert [(c.line, c.track_id, c.direction, c.timestamp) for c in down] == [("l", 1, "in", 103.0)]
    up = _walk(tracker, [(100, 80), (100, 55), (100, 30)], start=10)
    assert [c.direction for c in up] == ["out"]
    # the same walk against a line drawn right to left is the other way round
    reverse = ZoneTracker([], [_line(points=((180, 50), (20, 50)))], CLASSES)
    assert [c.direction for c in _walk(reverse, [(100, 20), (100, 80), (100, 20)])] == ["out", "in"]


def test_jitter_on_the_line_is_not_a_crossing() -> None:
    tracker = ZoneTracker([], [_line(points=((20, 50), (180, 50)), dead_band_px=2.0)], CLASSES)
    jitter = [(100, 30)] + [(100, 50 + (1.5 if k % 2 else -1.5)) for k in range(30)] + [(100, 30)]
    assert _walk(tracker, jitter) == []
    # a centroid that lingers on the line, then goes on through, crosses exactly once
    through = [(100, 30), (100, 49), (100, 51), (100, 49.5), (100, 50.5), (100, 70), (100, 90)]
    assert [c.direction for c in _walk(tracker, through, track_id=2)] == ["in"]


def test_going_round_the_end_of_a_line_is_not_a_crossing() -> None:
    tracker = ZoneTracker([], [_line(points=((20, 50), (100, 50)))], CLASSES)
    assert _walk(tracker, [(150, 20), (150, 80), (150, 20)]) == []
    # having gone round, coming back through the segment counts once
    assert [c.direction for c in _walk(tracker, [(150, 80), (60, 80), (60, 20)], start=5)] == ["out"]


def test_line_direction_and_class_filters() -> None:
    lines = [_line("in_only", directions="in"), _line("out_only", directions="out"), _line("cars", classes=["car"])]
    tracker = ZoneTracker([], lines, CLASSES)
    crossings = _walk(tracker, [(100, 20), (100, 80), (100, 20)])
    assert [(c.line, c.direction) for c in crossings] == [("in_only", "in"), ("out_only", "out")]
    cars = _walk(tracker, [(100, 20), (100, 80)], track_id=2, cls="car", start=5)
    assert [(c.line, c.direction) for c in cars] == [("in_only", "in"), ("cars", "in")]


def test_lost_track_seen_again_on_the_other_side_crosses_then() -> None:
    tracker = ZoneTracker([], [_line()], CLASSES)
    inst = _instances([_rect(0, 0, 5, 5)])
    assert tracker.update(inst, _update(0, [_view(1, 0, (100, 20))], 1)).crossings == ()
    lost = tracker.update(Instances.empty(SIZE, CLASSES), _update(1, [_view(1, None, (100, 80), state="lost")]))
    assert lost.crossings == ()  # a prediction is not an observation
    again = tracker.update(inst, _update(2, [_view(1, 0, (100, 85))], 1))
    assert [(c.direction, c.timestamp) for c in again.crossings] == [("in", 102.0)]


# -- configuration: bad input refused in one line naming the field ----------------------------------

SQUARE = [[0, 0], [100, 0], [100, 100], [0, 100]]
GOOD_ZONE: Dict[str, Any] = {"name": "ok", "points": SQUARE}


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        ({"zones": [GOOD_ZONE, {"name": "b", "points": [[0, 0], [10, 10], [0, 0]]}]}, "zones.1.points",
         "at least 3"),
        ({"zones": [{"name": "b", "points": [[0, 0], [10, 10], [10, 10], [0, 0]]}]}, "zones.0.points",
         "3 distinct points"),
        ({"zones": [{"name": "b", "points": [[0, 0], [10, 10], [20, 20]]}]}, "zones.0.points", "zero area"),
        ({"zones": [{"name": "b", "points": [[0, 0], [10, 10], [10, 0], [0, 10]]}]}, "zones.0.points",
         "self-intersecting"),
        ({"zones": [{"name": "b", "points": [[0, 0], [10, 0], [5, 5], [10, 10], [0, 10], [5, 5]]}]},
         "zones.0.points", "self-intersecting"),
        ({"zones": [{"name": "b", "points": [[0, 0], [20, 0], [10, 0], [10, 10]]}]}, "zones.0.points",
         "folds back"),
        ({"zones": [{"name": "b", "coordinates": "normalized", "points": [[0, 0], [1.2, 0], [1, 1]]}]},
         "zones.0.points", "within 0..1"),
        ({"zones": [{"name": "b", "points": [[0, 0], [1, 0], [1, 1]]}]}, "zones.0.points", "coordinates: normalized"),
        ({"zones": [{"name": "b", "points": [[0, 0], ["nan", 0], [1, 1]]}]}, "zones.0.points", "finite"),
        ({"zones": [{"name": "b", "points": [[0, 0, 3], [5, 0], [1, 1]]}]}, "zones.0.points.0", "at most 2"),
        ({"zones": [{"name": "b", "points": [[0, 0], [9e9, 0], [1, 1]]}]}, "zones.0.points", "within +-"),
        ({"zones": [GOOD_ZONE, GOOD_ZONE]}, "zones", "'ok' is used by zones.0 and zones.1"),
        ({"zones": [{"name": "a/b", "points": SQUARE}]}, "zones.0.name", "pattern"),
        ({"zones": [{"name": "b", "points": SQUARE, "min_fraction": 0}]}, "zones.0.min_fraction", "greater than 0"),
        ({"zones": [{"name": "b", "points": SQUARE, "min_fraction": 1.5}]}, "zones.0.min_fraction", "less than"),
        ({"zones": [{"name": "b", "points": SQUARE, "enter_frames": 0}]}, "zones.0.enter_frames", "greater than"),
        ({"zones": [{"name": "b", "points": SQUARE, "method": "centre"}]}, "zones.0.method", "mask"),
        ({"zones": [{"name": "b", "points": SQUARE, "colour": "red"}]}, "zones.0.colour", "unknown key"),
        ({"zones": [{"name": "b", "points": SQUARE, "classes": []}]}, "zones.0.classes", "at least one"),
        ({"zones": [{"name": "b", "points": SQUARE, "classes": ["car", "car"]}]}, "zones.0.classes", "twice"),
        ({"zones": [{"name": "b", "points": SQUARE, "loiter_s": -1}]}, "zones.0.loiter_s", "greater than 0"),
        ({"zones": [{"name": "b", "points": SQUARE, "classes": ["car"], "loiter_s": {"person": 5}}]},
         "zones.0.loiter_s", "not counted"),
        ({"zones": [{"name": "b"}]}, "zones.0.points", "required"),
        ({"lines": [{"name": "l", "points": [[10, 10], [10, 10]]}]}, "lines.0.points", "zero length"),
        ({"lines": [{"name": "l", "points": [[10, 10], [10.5, 10]]}]}, "lines.0.points", "zero length"),
        ({"lines": [{"name": "l", "coordinates": "normalized", "points": [[0.5, 0.5], [0.5, 0.5]]}]},
         "lines.0.points", "zero length"),
        ({"lines": [{"name": "l", "points": [[0, 0], [10, 10], [20, 0]]}]}, "lines.0.points", "at most 2"),
        ({"lines": [{"name": "l", "coordinates": "normalized", "points": [[0, 0], [1, -0.1]]}]}, "lines.0.points",
         "within 0..1"),
        ({"lines": [{"name": "l", "points": [[0, 0], [50, 50]]}, {"name": "l", "points": [[0, 0], [60, 50]]}]},
         "lines", "'l' is used by lines.0 and lines.1"),
        ({"lines": [{"name": "l", "points": [[0, 0], [50, 50]], "directions": "up"}]}, "lines.0.directions", "both"),
    ],
)
def test_bad_config_is_refused_in_one_line_naming_the_field(raw: Dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        _parse(raw)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"field '{field}': "), message
    assert words in message, message


def test_good_config_is_accepted_and_normalised() -> None:
    doc = _parse({
        "zones": [
            {"name": "drive-way_1", "points": [[0, 0], [100, 0], [100, 0], [100, 100], [0, 100], [0, 0]],
             "classes": ["car"], "loiter_s": {"car": 30}},
            {"name": "lawn", "coordinates": "normalized", "points": [[0, 0.5], [1, 0.5], [1, 1], [0, 1]],
             "loiter_s": 12.5},
        ],
        "lines": [{"name": "gate", "points": [[0, 50], [200, 50]], "directions": "in"}],
    })
    drive, lawn = doc.zones
    assert drive.points == [(0.0, 0.0), (100.0, 0.0), (100.0, 100.0), (0.0, 100.0)]  # repeats dropped
    assert drive.loiter_threshold("car") == 30 and drive.loiter_threshold("person") is None
    assert lawn.loiter_threshold("dog") == 12.5 and lawn.counted_classes(CLASSES) == CLASSES
    assert lawn.pixel_points((100, 200))[1] == (200.0, 50.0)
    assert check_against(doc.zones, doc.lines, SIZE, CLASSES + ("car",)) == ()


def test_polygon_checks_accept_concave_and_collinear_points() -> None:
    assert polygon_problem([(0, 0), (10, 0), (10, 10), (5, 3), (0, 10)]) is None  # concave
    assert polygon_problem([(0, 0), (5, 0), (10, 0), (10, 10), (0, 10)]) is None  # straight on through a point


@pytest.mark.parametrize(
    ("zones", "lines", "field", "words"),
    [
        ([_zone(points=((300, 10), (400, 10), (400, 90)))], [], "zones.0.points", "covers no pixel of the 200x100"),
        ([_zone(), _zone("x", classes=["persn"])], [], "zones.1.classes", "did you mean 'person'"),
        ([_zone(classes=["unicorn"])], [], "zones.0.classes", "unknown class 'unicorn'"),
        ([_zone(loiter_s={"cat": 5})], [], "zones.0.loiter_s", "unknown class 'cat'"),
        ([], [_line(classes=["person", "bus"])], "lines.0.classes", "unknown class 'bus'"),
        ([], [_line(points=((300, 10), (400, 90)))], "lines.0.points", "does not touch the 200x100 frame"),
    ],
)
def test_checks_against_the_frame_and_the_model(
    zones: List[ZoneConfig], lines: List[LineConfig], field: str, words: str
) -> None:
    with pytest.raises(ConfigError) as info:
        check_against(zones, lines, SIZE, CLASSES)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"field '{field}': ") and words in message, message


def test_tracker_refuses_unknown_classes_at_start() -> None:
    with pytest.raises(ConfigError, match=r"^field 'zones\.0\.classes': unknown class 'cat'"):
        ZoneTracker([_zone(classes=["cat"])], [], CLASSES)


def test_line_partly_outside_the_frame_is_noted() -> None:
    notes = check_against([], [_line(points=((-50, 50), (100, 50)))], SIZE, CLASSES)
    assert notes == ("line 'l' is partly outside the 200x100 frame: only its visible part can be crossed",)
