"""The multi-object tracker: Kalman filter, overlaps, assignment, and the tracker's behaviour.

The Kalman filter is checked against values worked out by hand (each box coordinate and its
velocity form an independent 2x2 block, so the numbers fit in a comment); box and mask IoU
against brute-force full-frame rasterisation; the assignment against an exhaustive search of the
objective it claims to minimise. The tracker is driven through small scripted scenes, one per
behaviour the issue asks for: crossing paths, masks that keep identities where boxes swap them,
ByteTrack's second stage, per-class identities, tentative tracks, the lost buffer, stationary
objects, the end of a run, empty frames and the configuration's refusals.
"""

from __future__ import annotations

import itertools
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest

from edgeseg.analytics.types import TrackUpdate, TrackView
from edgeseg.config.tracker import TrackerConfig, parse_tracker_config
from edgeseg.errors import ConfigError
from edgeseg.structures import Instances
from edgeseg.tracking import kalman
from edgeseg.tracking.matching import assign, box_iou, mask_iou
from edgeseg.tracking.tracker import Tracker

NAMES = ("person", "car")
SIZE = (720, 1280)
FPS = 30.0

# ---------------------------------------------------------------------------------------- helpers

Det = Tuple[Sequence[float], float, int]  # box xyxy, score, class id


def instances(dets: Sequence[Det], masks: Optional[Sequence[Tuple[np.ndarray, Sequence[int]]]] = None) -> Instances:
    """Instances from (box, score, class) triples, with (crop, region) masks when given."""
    n = len(dets)
    return Instances(
        image_size=SIZE,
        boxes=np.array([d[0] for d in dets], np.float32).reshape(n, 4),
        scores=np.array([d[1] for d in dets], np.float32).reshape(n),
        class_ids=np.array([d[2] for d in dets], np.int32).reshape(n),
        class_names=NAMES,
        masks=tuple(m for m, _ in masks) if masks else (),
        mask_boxes=np.array([r for _, r in masks], np.int32).reshape(n, 4) if masks else np.zeros((0, 4), np.int32),
    )


def box(x: float, y: float, w: float = 60.0, h: float = 120.0) -> Tuple[float, float, float, float]:
    return (x, y, x + w, y + h)


def config(**kw: object) -> TrackerConfig:
    return TrackerConfig(**{"enabled": True, **kw})  # type: ignore[arg-type]


class Run:
    """A tracker fed frame by frame at 30 fps; keeps every update."""

    def __init__(self, cfg: Optional[TrackerConfig] = None) -> None:
        self.tracker = Tracker(cfg or config(), NAMES)
        self.frame = 0
        self.updates: List[TrackUpdate] = []

    def step(self, inst: Instances, skip: int = 0) -> TrackUpdate:
        self.frame += skip
        update = self.tracker.update(inst, timestamp=1000.0 + self.frame / FPS, frame_id=self.frame)
        self.frame += 1
        self.updates.append(update)
        return update

    def dets(self, dets: Sequence[Det], skip: int = 0) -> TrackUpdate:
        return self.step(instances(dets), skip)

    def empty(self) -> TrackUpdate:
        return self.step(Instances.empty(SIZE, NAMES))

    def views(self) -> List[TrackView]:
        return [v for u in self.updates for v in u.tracks]


def ids_of(update: TrackUpdate) -> List[int]:
    return update.track_ids.tolist()


def view(update: TrackUpdate, track_id: int) -> Optional[TrackView]:
    found = [v for v in update.tracks if v.track_id == track_id]
    assert len(found) <= 1
    return found[0] if found else None


# ---------------------------------------------------------------------------------------- Kalman

# box cx 50, cy 100, w 100, h 200. Position noise 1/20 of the extent, velocity noise 1/160.
# initiate: std 2/20 * (100, 200) = (10, 20) on x/w and y/h, 10/160 * (100, 200) = (6.25, 12.5) on
# the velocities: variances 100, 400 and 39.0625, 156.25.
MEASUREMENT = np.array([[50.0, 100.0, 100.0, 200.0]])


def test_kalman_initiate() -> None:
    mean, cov = kalman.initiate(MEASUREMENT)
    assert mean.tolist() == [[50, 100, 100, 200, 0, 0, 0, 0]]
    np.testing.assert_allclose(np.diag(cov[0]), [100, 400, 100, 400, 39.0625, 156.25, 39.0625, 156.25])
    assert np.count_nonzero(cov[0] - np.diag(np.diag(cov[0]))) == 0


@pytest.mark.parametrize(
    "dt, pxx, pxv, pvv",
    [
        # x block [[100, 0], [0, 39.0625]] -> F P F^T + dt Q, Q = diag(5^2, 0.625^2) (w = 100)
        (1.0, 100 + 39.0625 + 25, 39.0625, 39.0625 + 0.390625),
        (2.0, 100 + 4 * 39.0625 + 2 * 25, 2 * 39.0625, 39.0625 + 2 * 0.390625),
    ],
)
def test_kalman_predict(dt: float, pxx: float, pxv: float, pvv: float) -> None:
    mean, cov = kalman.initiate(MEASUREMENT)
    mean[0, 4] = 2.0  # vx: 2 px per frame
    mean, cov = kalman.predict(mean, cov, dt)
    assert mean[0, 0] == pytest.approx(50 + 2 * dt)
    assert mean[0, 1:4].tolist() == [100, 100, 200]
    assert cov[0, 0, 0] == pytest.approx(pxx)
    assert cov[0, 0, 4] == pytest.approx(pxv) and cov[0, 4, 0] == pytest.approx(pxv)
    assert cov[0, 4, 4] == pytest.approx(pvv)
    # y block: [[400, 0], [0, 156.25]] with Q = diag(10^2, 1.25^2) (h = 200)
    assert cov[0, 1, 1] == pytest.approx(400 + dt * dt * 156.25 + dt * 100)


def test_kalman_update_by_hand() -> None:
    mean, cov = kalman.initiate(MEASUREMENT)
    mean[0, 4] = 2.0
    mean, cov = kalman.predict(mean, cov, 1.0)  # cx 52, Pxx 164.0625, Pxv 39.0625, Pvv 39.453125
    z = np.array([[62.0, 100.0, 100.0, 200.0]])  # innovation 10 on cx
    new_mean, new_cov = kalman.update(mean, cov, z)
    # S = 164.0625 + 25 (R = (w/20)^2) = 189.0625; K = (164.0625, 39.0625) / S = (105/121, 25/121)
    assert new_mean[0, 0] == pytest.approx(52 + 1050 / 121)
    assert new_mean[0, 4] == pytest.approx(2 + 250 / 121)
    assert new_cov[0, 0, 0] == pytest.approx(164.0625 * 16 / 121)
    assert new_cov[0, 0, 4] == pytest.approx(39.0625 * 16 / 121)
    assert new_cov[0, 4, 4] == pytest.approx(39.453125 - 39.0625 * 25 / 121)
    # the other coordinates had no innovation: their means stay
    np.testing.assert_allclose(new_mean[0, 1:4], [100, 100, 200])


def test_kalman_update_without_prediction() -> None:
    mean, cov = kalman.initiate(MEASUREMENT)
    new_mean, new_cov = kalman.update(mean, cov, np.array([[60.0, 100.0, 100.0, 200.0]]))
    # S = 100 + 25; K = 0.8 on x, 0 on vx (no correlation yet)
    assert new_mean[0, 0] == pytest.approx(58.0)
    assert new_mean[0, 4] == pytest.approx(0.0)
    assert new_cov[0, 0, 0] == pytest.approx(20.0)


def _reference_step(mean: np.ndarray, cov: np.ndarray, z: np.ndarray, dt: float) -> Tuple[np.ndarray, np.ndarray]:
    """The textbook filter for one track, written with inverses and explicit matrices."""
    f = np.eye(8)
    for i in range(4):
        f[i, i + 4] = dt
    w, h = mean[2], mean[3]
    q = np.diag(np.r_[np.array([w, h, w, h]) / 20, np.array([w, h, w, h]) / 160] ** 2) * dt
    mean = f @ mean
    cov = f @ cov @ f.T + q
    hm = np.eye(4, 8)
    w, h = mean[2], mean[3]
    r = np.diag((np.array([w, h, w, h]) / 20) ** 2)
    s = hm @ cov @ hm.T + r
    k = cov @ hm.T @ np.linalg.inv(s)
    return mean + k @ (z - hm @ mean), (np.eye(8) - k @ hm) @ cov


def test_kalman_vectorised_matches_the_textbook_filter_per_track() -> None:
    rng = np.random.default_rng(1)
    z0 = np.c_[rng.uniform(0, 1000, (5, 2)), rng.uniform(20, 300, (5, 2))]
    mean, cov = kalman.initiate(z0)
    mean[:, 4:] = rng.normal(0, 3, (5, 4))
    refs = [(mean[i].copy(), cov[i].copy()) for i in range(5)]
    for step in range(4):
        z = z0 + rng.normal(0, 5, z0.shape) + step
        dt = float(step % 2 + 1)
        mean, cov = kalman.predict(mean, cov, dt)
        mean, cov = kalman.update(mean, cov, z)
        refs = [_reference_step(m, c, z[i], dt) for i, (m, c) in enumerate(refs)]
    for i, (m, c) in enumerate(refs):
        np.testing.assert_allclose(mean[i], m, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(cov[i], c, rtol=1e-7, atol=1e-7)


def test_box_conversions_round_trip() -> None:
    boxes = np.array([[10.0, 20.0, 110.0, 220.0], [0.5, 0.5, 3.5, 9.5]])
    np.testing.assert_allclose(kalman.cxcywh_to_xyxy(kalman.xyxy_to_cxcywh(boxes)), boxes)
    # a degenerate box keeps a positive extent (no zero noise, no singular innovation)
    assert kalman.xyxy_to_cxcywh([[5, 5, 5, 5]])[0, 2:].tolist() == [kalman.MIN_EXTENT, kalman.MIN_EXTENT]


# ---------------------------------------------------------------------------------------- overlaps


def _raster(x0: int, y0: int, x1: int, y1: int, shape: Tuple[int, int], offset: int) -> np.ndarray:
    out = np.zeros(shape, np.bool_)
    out[max(y0 + offset, 0):max(y1 + offset, 0), max(x0 + offset, 0):max(x1 + offset, 0)] = True
    return out


def _full_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


BOX_CASES = {
    "identical": ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),
    "disjoint": ((0, 0, 10, 10), (20, 20, 30, 30), 0.0),
    "touching edges": ((0, 0, 10, 10), (10, 0, 20, 10), 0.0),
    "contained": ((0, 0, 10, 10), (2, 2, 7, 7), 25 / 100),
    "half overlap": ((0, 0, 10, 10), (5, 0, 15, 10), 50 / 150),
    "corner": ((0, 0, 10, 10), (5, 5, 15, 15), 25 / 175),
    "empty box": ((3, 3, 3, 3), (0, 0, 10, 10), 0.0),
}


@pytest.mark.parametrize("a, b, expected", BOX_CASES.values(), ids=BOX_CASES.keys())
def test_box_iou_cases(a: Tuple[int, ...], b: Tuple[int, ...], expected: float) -> None:
    assert box_iou([a], [b])[0, 0] == pytest.approx(expected)
    assert box_iou([b], [a])[0, 0] == pytest.approx(expected)
    shape = (64, 64)
    assert _full_iou(_raster(*a, shape, 8), _raster(*b, shape, 8)) == pytest.approx(expected)


def test_box_iou_matches_rasterised_boxes() -> None:
    rng = np.random.default_rng(2)
    corners = rng.integers(-5, 50, (12, 2))
    boxes = np.c_[corners, corners + rng.integers(1, 30, (12, 2))]
    shape = (100, 100)
    rasters = [_raster(*b, shape, 10) for b in boxes.tolist()]
    iou = box_iou(boxes[:6], boxes[6:])
    assert iou.shape == (6, 6)
    for i, j in itertools.product(range(6), range(6)):
        assert iou[i, j] == pytest.approx(_full_iou(rasters[i], rasters[6 + j]))
    assert box_iou(np.zeros((0, 4)), boxes).shape == (0, 12)


def _random_crops(rng: np.random.Generator, n: int, none_at: Sequence[int] = ()) -> Tuple[list, np.ndarray]:
    crops: List[Optional[np.ndarray]] = []
    regions = []
    for i in range(n):
        x0, y0 = rng.integers(-10, 25, 2).tolist()  # some regions start outside the frame
        w, h = rng.integers(1, 45, 2).tolist()
        regions.append([x0, y0, x0 + w, y0 + h])
        crops.append(None if i in none_at else rng.random((h, w)) < rng.uniform(0.2, 0.9))
    return crops, np.array(regions, np.int64)


def _canvas(crop: np.ndarray, region: Sequence[int], shape: Tuple[int, int], offset: int) -> np.ndarray:
    out = np.zeros(shape, np.bool_)
    x0, y0, x1, y1 = region
    out[y0 + offset:y1 + offset, x0 + offset:x1 + offset] = crop
    return out


@pytest.mark.parametrize("seed", range(5))
def test_mask_iou_matches_full_frame_masks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    crops_a, regions_a = _random_crops(rng, 8, none_at=(3,))
    crops_b, regions_b = _random_crops(rng, 9, none_at=(0, 5))
    areas_a = [int(c.sum()) if c is not None else 0 for c in crops_a]
    areas_b = [int(c.sum()) if c is not None else 0 for c in crops_b]
    iou, defined = mask_iou(crops_a, regions_a, areas_a, crops_b, regions_b, areas_b)
    shape, offset = (100, 100), 20
    assert iou.shape == defined.shape == (8, 9)
    for i, j in itertools.product(range(8), range(9)):
        a, b = crops_a[i], crops_b[j]
        assert defined[i, j] == (a is not None and b is not None)
        if a is None or b is None:
            assert iou[i, j] == 0.0
            continue
        full = _full_iou(_canvas(a, regions_a[i], shape, offset), _canvas(b, regions_b[j], shape, offset))
        assert iou[i, j] == pytest.approx(full)
    assert np.count_nonzero(iou) > 3  # the draw has overlapping pairs (the test tests something)


def test_mask_iou_computes_only_candidates() -> None:
    crop = np.ones((10, 10), np.bool_)
    regions = np.array([[0, 0, 10, 10], [5, 0, 15, 10]])
    candidates = np.array([[True, False], [False, True]])
    iou, defined = mask_iou([crop, crop], regions, [100, 100], [crop, crop], regions, [100, 100], candidates)
    assert defined.tolist() == candidates.tolist()
    assert iou.tolist() == [[1.0, 0.0], [0.0, 1.0]]


def _brute_assignment(cost: np.ndarray, max_cost: float) -> float:
    """The least of sum(pair costs) + max_cost per pair left unmade (half per unpaired row or
    column), over every partial matching of allowed pairs: lapjv's cost_limit objective."""
    n, m = cost.shape
    best = (n + m) * max_cost / 2
    for k in range(1, min(n, m) + 1):
        for rows in itertools.combinations(range(n), k):
            for cols in itertools.permutations(range(m), k):
                c = [cost[r, q] for r, q in zip(rows, cols)]
                if all(np.isfinite(x) and x <= max_cost for x in c):
                    best = min(best, sum(c) + (n + m - 2 * k) * max_cost / 2)
    return best


@pytest.mark.parametrize("seed", range(8))
def test_assign_minimises_the_cost_limit_objective(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, m = rng.integers(1, 5, 2).tolist()
    cost = rng.uniform(0, 1, (n, m))
    cost[rng.random((n, m)) < 0.2] = np.inf  # another class
    max_cost = 0.6
    pairs, free_rows, free_cols = assign(cost, max_cost)
    assert all(cost[r, c] <= max_cost for r, c in pairs.tolist())
    assert sorted(pairs[:, 0].tolist() + free_rows.tolist()) == list(range(n))
    assert sorted(pairs[:, 1].tolist() + free_cols.tolist()) == list(range(m))
    total = sum(cost[r, c] for r, c in pairs.tolist()) + (n + m - 2 * len(pairs)) * max_cost / 2
    assert total == pytest.approx(_brute_assignment(cost, max_cost))


def test_assign_prefers_one_good_pair_to_two_poor_ones() -> None:
    # raw linear_sum_assignment pairs (0, 1) and (1, 0) (1.0 < 0.1 + 0.95); with the limit, pair
    # (0, 0) alone is cheaper (0.1 + 0.6 for leaving row 1 and column 1)
    cost = np.array([[0.1, 0.5], [0.5, 0.95]])
    pairs, free_rows, free_cols = assign(cost, 0.6)
    assert pairs.tolist() == [[0, 0]]
    assert free_rows.tolist() == [1] and free_cols.tolist() == [1]


# ---------------------------------------------------------------------------------------- tracker


def test_two_objects_crossing_paths_keep_their_ids() -> None:
    run = Run()
    for f in range(50):  # A goes right, B goes left, 10 px a frame; their boxes overlap at f ~ 25
        run.dets([(box(100 + 10 * f, 300), 0.9, 0), (box(600 - 10 * f, 310), 0.9, 0)])
    assert ids_of(run.updates[1]) == [-1, -1]  # tentative for min_hits - 1 frames
    assert all(ids_of(u) == [1, 2] for u in run.updates[2:])


def _band_masks() -> Tuple[np.ndarray, np.ndarray]:
    """Two 100x100 masks with the same bounding box and no pixel in common: a diagonal band
    (|x - y| < 20) and two bands beside it (45 <= |x - y| < 70)."""
    yy, xx = np.mgrid[0:100, 0:100]
    d = np.abs(xx - yy)
    return d < 20, (d >= 45) & (d < 70)


@pytest.mark.parametrize("use_masks, expect_swap", [(True, False), (False, True)])
def test_mask_iou_keeps_ids_where_box_iou_swaps_them(use_masks: bool, expect_swap: bool) -> None:
    """Two objects whose boxes overlap heavily (IoU 0.82) but whose masks do not: when they trade
    places in one frame, box IoU prefers the swap (IoU 1.0 against 0.82); mask IoU does not (0
    against about 0.5)."""
    mask_a, mask_b = _band_masks()
    run = Run(config(use_masks=use_masks))

    def frame(xa: int, xb: int) -> TrackUpdate:
        regions = [(xa, 100, xa + 100, 200), (xb, 100, xb + 100, 200)]
        dets = [(tuple(map(float, r)), 0.9, 0) for r in regions]
        return run.step(instances(dets, [(mask_a, regions[0]), (mask_b, regions[1])]))

    for _ in range(5):
        frame(100, 110)
    assert ids_of(run.updates[-1]) == [1, 2]
    after = frame(110, 100)  # A moves right by 10 px, B left by 10 px
    assert ids_of(after) == ([2, 1] if expect_swap else [1, 2])


def test_low_score_detections_keep_an_occluded_object_in_the_second_stage() -> None:
    run = Run()
    for f in range(5):
        run.dets([(box(100 + 5 * f, 300), 0.9, 0)])
    for f in range(5, 9):  # half hidden: scores between low_threshold and high_threshold
        update = run.dets([(box(100 + 5 * f, 300), 0.3, 0)])
        assert ids_of(update) == [1]
        track = view(update, 1)
        assert track is not None and track.state == "confirmed" and track.score == pytest.approx(0.3)
    assert ids_of(run.dets([(box(145, 300), 0.9, 0)])) == [1]


def test_low_score_detections_never_start_tracks() -> None:
    run = Run()
    for _ in range(20):
        update = run.dets([(box(100, 300), 0.45, 0)])  # above low_threshold, below high_threshold
        assert ids_of(update) == [-1] and update.tracks == ()
    assert len(run.tracker) == 0


def test_a_detection_of_another_class_never_takes_a_track() -> None:
    run = Run()
    for _ in range(4):
        run.dets([(box(100, 300), 0.9, 0)])
    person = view(run.updates[-1], 1)
    assert person is not None and person.class_name == "person"
    for f in range(4):  # a car where the person was, the person gone
        update = run.dets([(box(100, 300), 0.95, 1)])
        assert ids_of(update) == ([-1] if f < 2 else [2])
        lost = view(update, 1)
        assert lost is not None and lost.state == "lost" and lost.class_id == 0
    # both at once: each its own
    assert ids_of(run.dets([(box(100, 300), 0.9, 1), (box(100, 300), 0.9, 0)])) == [2, 1]


def test_tentative_tracks_are_never_published_and_consume_no_id() -> None:
    run = Run(config(min_hits=3))
    run.dets([(box(100, 300), 0.9, 0)])
    run.dets([(box(102, 300), 0.9, 0)])
    run.empty()  # missed at its third frame: dropped silently
    assert all(u.tracks == () for u in run.updates)
    assert all(ids_of(u) in ([-1], []) for u in run.updates)
    for _ in range(3):
        update = run.dets([(box(500, 300), 0.9, 0)])
    assert ids_of(update) == [1]  # the first confirmed track is 1


def test_min_hits_one_publishes_at_once() -> None:
    run = Run(config(min_hits=1))
    assert ids_of(run.dets([(box(100, 300), 0.9, 0), (box(400, 300), 0.9, 1)])) == [1, 2]


def test_lost_then_found_within_the_buffer_keeps_its_id() -> None:
    run = Run(config(lost_buffer_s=1.0))
    for _ in range(4):
        run.dets([(box(100, 300), 0.9, 0)])
    for _ in range(15):  # 0.5 s unseen
        update = run.empty()
        lost = view(update, 1)
        assert lost is not None and lost.state == "lost" and lost.instance is None and lost.score == 0.0
    update = run.dets([(box(101, 300), 0.9, 0)])
    assert ids_of(update) == [1]
    found = view(update, 1)
    assert found is not None and found.state == "confirmed" and found.hits == 5


@pytest.mark.parametrize("cfg", [config(lost_buffer_s=1.0), config(lost_buffer_frames=30)], ids=["seconds", "frames"])
def test_removed_after_the_buffer_reported_once(cfg: TrackerConfig) -> None:
    run = Run(cfg)
    for _ in range(4):
        run.dets([(box(100, 300), 0.9, 0)])
    last_seen = run.updates[-1].timestamp
    for _ in range(40):
        run.empty()
    states = [(u.timestamp, v.state) for u in run.updates[4:] for v in u.tracks]
    removed = [t for t, s in states if s == "removed"]
    assert len(removed) == 1
    assert 1.0 < removed[0] - last_seen < 1.0 + 1.5 / FPS  # the first frame past 1 s / 30 frames unseen
    assert all(s == "lost" for t, s in states if t < removed[0]) and max(t for t, _ in states) == removed[0]
    for _ in range(3):  # back after the buffer: a new identity
        update = run.dets([(box(100, 300), 0.9, 0)])
    assert ids_of(update) == [2]


def test_dropped_frames_are_predicted_over() -> None:
    """Frame ids that jump (frames dropped upstream) move the prediction as many frames ahead:
    a 40-px object moving 12 px a frame is found again after a gap of 4 frames (48 px), where a
    one-frame prediction would leave it 36 px behind (IoU 0.05)."""
    run = Run()
    for f in range(6):
        run.dets([(box(100 + 12 * f, 300, 40, 40), 0.9, 0)])
    update = run.dets([(box(100 + 12 * 9, 300, 40, 40), 0.9, 0)], skip=3)
    assert update.frame_id == 9 and ids_of(update) == [1]


def test_stationary_after_the_configured_time_and_moving_again() -> None:
    run = Run(config(stationary_after_s=2.0, stationary_max_move=0.1))
    rng = np.random.default_rng(0)
    flags = []
    for _ in range(90):  # 3 s at rest, with a pixel of jitter (the threshold: 0.1 x 134 px)
        x, y = 100 + rng.uniform(-1, 1), 300 + rng.uniform(-1, 1)
        flags.append(view(run.dets([(box(x, y), 0.9, 0)]), 1))
    published = [v for v in flags if v is not None]
    times = [(v.stationary, u.timestamp - 1000.0) for v, u in zip(flags, run.updates) if v is not None]
    assert len(published) == 88
    assert all(not s for s, t in times if t < 2.0 - 1e-9)
    assert all(s for s, t in times if t >= 2.0 - 1e-9)
    moving = [view(run.dets([(box(100 + 5 * f, 300), 0.9, 0)]), 1) for f in range(1, 6)]
    states = [v.stationary for v in moving if v is not None]
    assert states == [True, True, False, False, False]  # 5, 10 px within 13.4 px; 15 px beyond


def test_a_stationary_track_is_kept_lost_longer() -> None:
    run = Run(config(stationary_after_s=1.0, lost_buffer_s=1.0, stationary_buffer_factor=5.0))
    for _ in range(40):
        update = run.dets([(box(100, 300), 0.9, 0)])
    parked = view(update, 1)
    assert parked is not None and parked.stationary
    for _ in range(120):  # 4 s unseen: past lost_buffer_s, within 5 x
        update = run.empty()
    lost = view(update, 1)
    assert lost is not None and lost.state == "lost" and lost.stationary
    seen = run.dets([(box(100, 300), 0.9, 0)])
    assert ids_of(seen) == [1]
    states = []
    for _ in range(160):
        update = run.empty()
        states += [(update.timestamp - seen.timestamp, v.state) for v in update.tracks]
    removed = [t for t, s in states if s == "removed"]
    assert len(removed) == 1 and 5.0 < removed[0] < 5.0 + 1.5 / FPS  # 5 s after it was last seen


def test_finish_ends_every_live_track_once() -> None:
    run = Run()
    for _ in range(3):
        run.dets([(box(100, 300), 0.9, 0), (box(400, 300), 0.9, 0)])
    run.dets([(box(100, 300), 0.9, 0), (box(800, 300), 0.9, 1)])  # 2 lost, a tentative car
    end = run.tracker.finish()
    assert [(v.track_id, v.state) for v in end.tracks] == [(1, "removed"), (2, "removed")]
    assert end.frame_id == run.updates[-1].frame_id and end.track_ids.shape == (0,)
    assert run.tracker.finish().tracks == ()
    assert len(run.tracker) == 0
    for _ in range(3):
        update = run.dets([(box(100, 300), 0.9, 0)])
    assert ids_of(update) == [3]  # ids stay unique over the run


def test_empty_frames() -> None:
    run = Run()
    update = run.empty()
    assert update.track_ids.shape == (0,) and update.track_ids.dtype == np.int32 and update.tracks == ()
    assert run.tracker.finish().tracks == ()
    assert run.tracker.trails() == {}


def test_odd_input_does_not_crash() -> None:
    """A non-finite box is left out; frame ids that go back (a restarted source) end lost tracks;
    a track lost while shrinking keeps a positive predicted size."""
    run = Run()
    nan_box = (float("nan"), 0.0, 10.0, 10.0)
    for f in range(4):
        update = run.dets([(nan_box, 0.9, 0), (box(100, 300, 60 - 10 * f, 120 - 20 * f), 0.9, 0)])
    assert ids_of(update) == [-1, 1]
    for _ in range(20):  # lost, predicted on with its shrinking velocity
        update = run.empty()
    lost = view(update, 1)
    assert lost is not None and lost.state == "lost"
    assert lost.box[2] - lost.box[0] >= kalman.MIN_EXTENT and lost.box[3] - lost.box[1] >= kalman.MIN_EXTENT
    back = run.tracker.update(Instances.empty(SIZE, NAMES), timestamp=run.updates[-1].timestamp - 60, frame_id=0)
    assert [(v.track_id, v.state) for v in back.tracks] == [(1, "removed")]


def test_frame_ids_going_back_end_lost_tracks_counted_in_frames() -> None:
    run = Run(config(lost_buffer_frames=30))
    for _ in range(4):
        run.dets([(box(100, 300), 0.9, 0)])
    run.empty()
    back = run.tracker.update(Instances.empty(SIZE, NAMES), timestamp=run.updates[-1].timestamp + 0.1, frame_id=0)
    assert [(v.track_id, v.state) for v in back.tracks] == [(1, "removed")]


def test_centroid_is_the_mask_centroid_else_the_box_centre() -> None:
    crop = np.zeros((40, 30), np.bool_)
    crop[:, :10] = True  # an L: a column and a foot
    crop[30:, :] = True
    region = (200, 100, 230, 140)
    ys, xs = np.nonzero(crop)
    expected = (xs.mean() + 0.5 + 200, ys.mean() + 0.5 + 100)
    run = Run(config(min_hits=1))
    update = run.step(instances([(tuple(map(float, region)), 0.9, 0)], [(crop, region)]))
    track = view(update, 1)
    assert track is not None and track.centroid == pytest.approx(expected)
    update = run.dets([(region, 0.9, 0)])  # the same object without a mask: its box centre
    track = view(update, 1)
    assert track is not None and track.centroid == pytest.approx((215.0, 120.0))
    assert np.ravel(run.tracker.trails()[1]).tolist() == pytest.approx([*expected, 215.0, 120.0])


def test_views_describe_the_matched_instance() -> None:
    run = Run()
    for f in range(3):
        update = run.dets([(box(500, 10), 0.2, 0), (box(100 + f, 300), 0.8, 1)])
    track = view(update, 1)
    assert track is not None
    assert (track.class_id, track.class_name, track.state, track.instance) == (1, "car", "confirmed", 1)
    assert track.box == pytest.approx(box(102, 300)) and track.score == pytest.approx(0.8)
    assert track.first_seen == 1000.0 and track.last_seen == pytest.approx(1000.0 + 2 / FPS) and track.hits == 3
    assert ids_of(update) == [-1, 1]


def test_trail_length_bounds_the_trail() -> None:
    run = Run(config(trail_length=5))
    for f in range(20):
        run.dets([(box(100 + f, 300), 0.9, 0)])
    trail = run.tracker.trails()[1]
    assert len(trail) == 5 and trail[-1] == pytest.approx((100 + 19 + 30, 360))


def test_many_objects_keep_their_ids() -> None:
    """50 objects on a grid, each moving at its own constant velocity without meeting another."""
    rng = np.random.default_rng(3)
    starts = [(40 + 120 * (i % 10), 40 + 130 * (i // 10)) for i in range(50)]
    vel = rng.uniform(-2, 2, (50, 2))
    run = Run()
    for f in range(40):
        update = run.dets([(box(x + vx * f, y + vy * f, 50, 50), 0.9, i % 2) for i, ((x, y), (vx, vy)) in
                           enumerate(zip(starts, vel.tolist()))])
    assert sorted(ids_of(update)) == list(range(1, 51))
    assert all(ids_of(u) == ids_of(update) for u in run.updates[2:])


# ---------------------------------------------------------------------------------------- config

REFUSED: Dict[str, Tuple[dict, str]] = {
    "low above high": ({"low_threshold": 0.6}, "field 'tracker.low_threshold': must be below high_threshold (0.5)"),
    "low equal to high": ({"low_threshold": 0.5, "high_threshold": 0.5}, "field 'tracker.low_threshold'"),
    "new below high": ({"new_track_threshold": 0.4}, "field 'tracker.new_track_threshold': must be at least"),
    "high out of bounds": ({"high_threshold": 1.5}, "field 'tracker.high_threshold'"),
    "min_hits zero": ({"min_hits": 0}, "field 'tracker.min_hits'"),
    "negative buffer": ({"lost_buffer_s": -1}, "field 'tracker.lost_buffer_s'"),
    "zero frames buffer": ({"lost_buffer_frames": 0}, "field 'tracker.lost_buffer_frames'"),
    "zero stationary time": ({"stationary_after_s": 0}, "field 'tracker.stationary_after_s'"),
    "unknown key": ({"min_hit": 3}, "field 'tracker.min_hit': unknown key"),
    "not a number": ({"match_iou": "high"}, "field 'tracker.match_iou'"),
}


@pytest.mark.parametrize("raw, message", REFUSED.values(), ids=REFUSED.keys())
def test_config_refusals_are_one_line_naming_the_field(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_tracker_config(raw)
    text = str(info.value)
    assert message in text and "\n" not in text


def test_config_defaults_and_descriptions() -> None:
    cfg = parse_tracker_config(None)
    assert (cfg.enabled, cfg.high_threshold, cfg.low_threshold, cfg.new_track_threshold, cfg.min_hits) == (
        False, 0.5, 0.1, 0.6, 3,
    )
    missing = [name for name, f in TrackerConfig.model_fields.items() if not (f.description or "").strip()]
    assert missing == []
