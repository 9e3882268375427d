"""ByteTrack-style multi-object tracking on the instances of each frame.

Per frame (``Tracker.update``):

1. every track is moved ahead by its Kalman filter (``kalman.py``) to the frame's time;
2. first stage: detections scoring ``high_threshold`` or more are matched to the confirmed and
   lost tracks, on mask IoU where both sides have a mask and box IoU otherwise (``matching.fuse``),
   weighed by the detection's score when ``fuse_score`` (ByteTrack's ``fuse_score``);
3. second stage: the detections between ``low_threshold`` and ``high_threshold`` are matched on
   box IoU to the confirmed tracks left over. A partly occluded object scores low; matching it
   here keeps its identity without letting low-score clutter start tracks (ByteTrack's point);
   confirmed tracks still unmatched become lost;
4. third stage: tentative tracks are matched to the high-score detections left; an unmatched
   tentative track is dropped (it was never published);
5. high-score detections still unmatched that score ``new_track_threshold`` start tentative tracks.

A detection only matches a track of its own class (the cost across classes is infinite), so
identities are per class and a track never changes class. A tentative track is confirmed after
``min_hits`` consecutive matches and only then gets its id: ids are unique over the run and
increase from 1 without gaps, since tentative tracks that die never consume one. A lost track
is removed ``lost_buffer_s`` after it was last seen (or ``lost_buffer_frames`` frames; a
stationary track ``stationary_buffer_factor`` times longer, so that a parked car whose detection
flickers keeps its identity and its one event), and reported once with state "removed";
``finish`` reports every live track so at the end of a run.

Stationary: each track keeps an anchor, the centroid where it last came to rest. While the
centroid stays within ``max(stationary_max_move x the box diagonal at the anchor,
stationary_min_px)`` of it, the time at rest grows; after ``stationary_after_s`` the track is
stationary. Once it moves beyond that distance it is moving again and the anchor restarts from
there. A fraction of the diagonal rather than pixels, so that one setting suits a car near the
camera and a person far from it (the same few-pixel jitter of a mask is a lot for a small object
and nothing for a big one); the pixel floor keeps a tiny object's one-pixel jitter from counting
as motion. An anchor rather than a window of past centroids: O(1) per track per frame, and a
slow drift is caught as soon as its sum passes the threshold.

Centroids are the mask's centroid when the matched instance has a mask (computed on the crop, in
the boxes' continuous coordinates: pixel ``i`` covers ``[i, i + 1)``), else the box's centre.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Deque, Dict, Final, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import numpy.typing as npt

from edgeseg.analytics.types import Box, Point, TrackState, TrackUpdate, TrackView
from edgeseg.config.tracker import TrackerConfig
from edgeseg.structures import Instances
from edgeseg.tracking import kalman
from edgeseg.tracking.matching import assign, box_iou, fuse, mask_iou

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

_TENTATIVE: Final = "tentative"
_CONFIRMED: Final = "confirmed"
_LOST: Final = "lost"


class _Track:
    """One track's bookkeeping; its Kalman state and mask geometry live in the tracker's arrays
    (one row per track, in the order of ``Tracker._tracks``) so that they are updated together."""

    __slots__ = (
        "track_id", "class_id", "state", "hits", "first_seen", "last_seen", "last_frame",
        "score", "instance", "box", "centroid", "mask", "stationary", "rest_anchor", "rest_since",
        "rest_diagonal", "trail",
    )

    def __init__(self, class_id: int, timestamp: float, frame_id: int, trail_length: int) -> None:
        self.track_id = 0  # given on confirmation
        self.class_id = class_id
        self.state: TrackState = _TENTATIVE
        self.hits = 0
        self.first_seen = timestamp
        self.last_seen = timestamp
        self.last_frame = frame_id
        self.score = 0.0
        self.instance: Optional[int] = None
        self.box: Box = (0.0, 0.0, 0.0, 0.0)
        self.centroid: Point = (0.0, 0.0)
        self.mask: Optional[BoolArray] = None
        self.stationary = False
        self.rest_anchor: Optional[Point] = None
        self.rest_since = timestamp
        self.rest_diagonal = 0.0
        self.trail: Deque[Point] = deque(maxlen=trail_length)


class _Detections:
    """The frame's instances as the matcher needs them: those scoring ``low_threshold`` or more
    (a box that is not finite, which no model should make, is left out rather than poisoning a filter)."""

    def __init__(self, instances: Instances, low_threshold: float) -> None:
        scores = instances.scores
        self.index: IntArray = np.flatnonzero((scores >= low_threshold) & np.isfinite(instances.boxes).all(axis=1))
        self.boxes: FloatArray = instances.boxes[self.index].astype(np.float64)
        self.scores: FloatArray = scores[self.index].astype(np.float64)
        self.class_ids: IntArray = instances.class_ids[self.index].astype(np.intp)
        self.box_tuples: List[Box] = [(b[0], b[1], b[2], b[3]) for b in self.boxes.tolist()]
        self.score_list: List[float] = self.scores.tolist()
        self.index_list: List[int] = self.index.tolist()
        n = len(self.index)
        self.masks: List[Optional[BoolArray]] = [None] * n
        self.regions = np.zeros((n, 4), np.int64)
        self.areas = np.zeros(n, np.int64)
        self.centroids: List[Optional[Point]] = [None] * n
        if instances.has_masks:
            self.regions = instances.mask_boxes[self.index].astype(np.int64)
            for k, i in enumerate(self.index.tolist()):
                crop = instances.masks[i]
                area, cx, cy = _mask_stats(crop)
                if area:
                    self.masks[k] = crop
                    self.areas[k] = area
                    self.centroids[k] = (cx + float(self.regions[k, 0]), cy + float(self.regions[k, 1]))

    def __len__(self) -> int:
        return len(self.index)


def _mask_stats(crop: BoolArray) -> Tuple[int, float, float]:
    """(true pixels, centroid x, centroid y) of a crop, the centroid in crop coordinates with pixel
    centres at +0.5. ``cv2.moments`` on the crop's 0/1 bytes (not its ``binaryImage`` mode, which
    thresholds first and is twice as slow): one call, a fraction of numpy's time on a bool crop."""
    if crop.size == 0:
        return 0, 0.0, 0.0
    if not crop.flags.c_contiguous:
        crop = np.ascontiguousarray(crop)
    m = cv2.moments(crop.view(np.uint8), False)
    area = m["m00"]
    if area <= 0:
        return 0, 0.0, 0.0
    return int(round(area)), m["m10"] / area + 0.5, m["m01"] / area + 0.5


class Tracker:
    """Identities across frames for one camera; call ``update`` once per frame, in order.

    Not thread-safe: it runs in the pipeline's output thread. What it returns is immutable.
    """

    def __init__(self, config: TrackerConfig, class_names: Sequence[str]) -> None:
        self.config = config
        self.class_names = tuple(class_names)
        self._tracks: List[_Track] = []
        # one row per track of ``_tracks``: Kalman state, and the last matched mask's region,
        # pixel count and the filtered box centre when it was matched (to move it by the motion since)
        self._means: FloatArray = np.zeros((0, 8))
        self._covs: FloatArray = np.zeros((0, 8, 8))
        self._classes: IntArray = np.zeros(0, np.intp)
        self._regions = np.zeros((0, 4), np.int64)
        self._areas = np.zeros(0, np.int64)
        self._anchors: FloatArray = np.zeros((0, 2))
        self._next_id = 1
        self._frame_id: Optional[int] = None
        self._timestamp = 0.0

    # ------------------------------------------------------------------ public

    def update(self, instances: Instances, timestamp: float, frame_id: int) -> TrackUpdate:
        """Match the frame's instances to the tracks; what each instance is and where every track stands."""
        cfg = self.config
        dt = 1.0
        if self._frame_id is not None and frame_id > self._frame_id:
            dt = float(frame_id - self._frame_id)
        self._frame_id = frame_id
        self._timestamp = timestamp
        self._means, self._covs = kalman.predict(self._means, self._covs, dt)
        predicted = kalman.cxcywh_to_xyxy(self._means[:, :4])
        for track in self._tracks:
            track.instance = None
            track.score = 0.0

        dets = _Detections(instances, cfg.low_threshold)
        high = dets.scores >= cfg.high_threshold
        high_idx = np.flatnonzero(high)
        low_idx = np.flatnonzero(~high)
        states = [t.state for t in self._tracks]
        pool = np.array([i for i, s in enumerate(states) if s != _TENTATIVE], np.intp)
        tentative = np.array([i for i, s in enumerate(states) if s == _TENTATIVE], np.intp)
        matches: List[Tuple[int, int]] = []  # (track row, detection k)

        # 2. high-score detections against confirmed and lost tracks
        pairs, free_pool, free_high = self._match(
            pool, high_idx, dets, predicted, 1.0 - cfg.match_iou, masks=cfg.use_masks, fuse_score=cfg.fuse_score
        )
        matches += pairs
        # 3. low-score detections against the confirmed tracks left (box IoU, as ByteTrack)
        confirmed_left = np.array([i for i in free_pool.tolist() if states[i] == _CONFIRMED], np.intp)
        pairs, unmatched_confirmed, _ = self._match(
            confirmed_left, low_idx, dets, predicted, 1.0 - cfg.low_match_iou, masks=False, fuse_score=False
        )
        matches += pairs
        # 4. high-score detections left against tentative tracks
        pairs, dead_tentative, new_high = self._match(
            tentative, free_high, dets, predicted, 1.0 - cfg.tentative_match_iou,
            masks=cfg.use_masks, fuse_score=cfg.fuse_score,
        )
        matches += pairs

        for row in unmatched_confirmed.tolist():
            self._tracks[row].state = _LOST
        drop = np.zeros(len(self._tracks), np.bool_)
        drop[dead_tentative] = True

        # 5. new tentative tracks
        starts = [k for k in new_high.tolist() if dets.scores[k] >= cfg.new_track_threshold]
        if starts:
            boxes = kalman.xyxy_to_cxcywh(dets.boxes[starts])
            means, covs = kalman.initiate(boxes)
            self._means = np.concatenate([self._means, means])
            self._covs = np.concatenate([self._covs, covs])
            self._classes = np.concatenate([self._classes, dets.class_ids[starts]])
            self._regions = np.concatenate([self._regions, np.zeros((len(starts), 4), np.int64)])
            self._areas = np.concatenate([self._areas, np.zeros(len(starts), np.int64)])
            self._anchors = np.concatenate([self._anchors, boxes[:, :2]])
            predicted = np.concatenate([predicted, dets.boxes[starts]])
            drop = np.concatenate([drop, np.zeros(len(starts), np.bool_)])
            row = len(self._tracks)
            for k in starts:
                self._tracks.append(_Track(int(dets.class_ids[k]), timestamp, frame_id, cfg.trail_length))
                self._record_match(row, k, dets, timestamp, frame_id)
                row += 1

        if matches:
            rows = np.array([r for r, _ in matches], np.intp)
            ks = np.array([k for _, k in matches], np.intp)
            self._means[rows], self._covs[rows] = kalman.update(
                self._means[rows], self._covs[rows], kalman.xyxy_to_cxcywh(dets.boxes[ks])
            )
            for r, k in matches:
                self._record_match(r, k, dets, timestamp, frame_id)

        # lost tracks past the buffer are removed (reported once below)
        removed: List[int] = []
        for row, track in enumerate(self._tracks):
            if track.state == _LOST and self._expired(track, timestamp, frame_id):
                removed.append(row)
                drop[row] = True

        track_ids = np.full(len(instances), -1, np.int32)
        views: List[TrackView] = []
        removed_set = set(removed)
        for row, track in enumerate(self._tracks):
            if track.state == _TENTATIVE:
                continue
            if track.instance is not None:
                track_ids[track.instance] = track.track_id
                views.append(self._view(track, track.state, track.box, track.centroid))
            else:
                box = _box_tuple(predicted[row])
                state: TrackState = "removed" if row in removed_set else _LOST
                views.append(self._view(track, state, box, _centre(box)))
        self._compact(~drop)
        views.sort(key=lambda v: v.track_id)
        return TrackUpdate(frame_id=frame_id, timestamp=timestamp, track_ids=track_ids, tracks=tuple(views))

    def finish(self) -> TrackUpdate:
        """Report every live (confirmed or lost) track as removed and forget them all.

        For the end of a run (the source ended, the service stops): each published track ends
        exactly once, here or in an ``update``. The tracker can go on afterwards; ids keep counting.
        """
        views = []
        predicted = kalman.cxcywh_to_xyxy(self._means[:, :4])
        for row, track in enumerate(self._tracks):
            if track.state == _TENTATIVE:
                continue
            if track.instance is not None:  # matched in the last frame
                views.append(self._view(track, "removed", track.box, track.centroid))
            else:
                box = _box_tuple(predicted[row])
                views.append(self._view(track, "removed", box, _centre(box)))
        self._compact(np.zeros(len(self._tracks), np.bool_))
        views.sort(key=lambda v: v.track_id)
        return TrackUpdate(
            frame_id=self._frame_id if self._frame_id is not None else 0,
            timestamp=self._timestamp,
            track_ids=np.zeros(0, np.int32),
            tracks=tuple(views),
        )

    def trails(self) -> Dict[int, Tuple[Point, ...]]:
        """Recent centroids (matched frames only) of each confirmed or lost track, oldest first."""
        return {t.track_id: tuple(t.trail) for t in self._tracks if t.state != _TENTATIVE and t.trail}

    def __len__(self) -> int:
        """Live tracks, tentative ones included."""
        return len(self._tracks)

    # ----------------------------------------------------------------- helpers

    def _match(
        self,
        rows: IntArray,
        ks: IntArray,
        dets: _Detections,
        predicted: FloatArray,
        max_cost: float,
        masks: bool,
        fuse_score: bool,
    ) -> Tuple[List[Tuple[int, int]], IntArray, IntArray]:
        """Assign detections ``ks`` to tracks ``rows``: (pairs of row and k, rows left, ks left)."""
        if len(rows) == 0 or len(ks) == 0:
            return [], rows, ks
        sim = box_iou(predicted[rows], dets.boxes[ks])
        same_class = self._classes[rows][:, None] == dets.class_ids[ks][None, :]
        if masks:
            track_masks = [self._tracks[r].mask for r in rows.tolist()]
            det_masks = [dets.masks[k] for k in ks.tolist()]
            if any(m is not None for m in track_masks) and any(m is not None for m in det_masks):
                # move each track's last mask by the predicted motion of its box since it was matched
                shift = np.rint(kalman.xyxy_to_cxcywh(predicted[rows])[:, :2] - self._anchors[rows]).astype(np.int64)
                regions = self._regions[rows] + np.concatenate([shift, shift], axis=1)
                overlap = (sim > 0.0) & same_class
                miou, defined = mask_iou(
                    track_masks, regions, self._areas[rows], det_masks, dets.regions[ks], dets.areas[ks], overlap
                )
                sim = fuse(sim, miou, defined)
        if fuse_score:
            sim = sim * dets.scores[ks][None, :]
        cost = np.where(same_class, 1.0 - sim, np.inf)
        pairs, free_rows, free_cols = assign(cost, max_cost)
        matched = [(int(rows[i]), int(ks[j])) for i, j in pairs.tolist()]
        return matched, rows[free_rows], ks[free_cols]

    def _record_match(self, row: int, k: int, dets: _Detections, timestamp: float, frame_id: int) -> None:
        """What a match changes on a track, after its Kalman update."""
        track = self._tracks[row]
        cfg = self.config
        track.hits += 1
        track.last_seen = timestamp
        track.last_frame = frame_id
        track.score = dets.score_list[k]
        track.instance = dets.index_list[k]
        box = dets.box_tuples[k]
        track.box = box
        centroid = dets.centroids[k]
        track.centroid = centroid if centroid is not None else _centre(box)
        mask = dets.masks[k]
        track.mask = mask
        if mask is not None:
            self._regions[row] = dets.regions[k]
            self._areas[row] = dets.areas[k]
            self._anchors[row] = self._means[row, :2]
        if track.state == _LOST:
            track.state = _CONFIRMED
        elif track.state == _TENTATIVE and track.hits >= cfg.min_hits:
            # a tentative track is dropped at its first miss, so its hits are consecutive
            track.state = _CONFIRMED
            track.track_id = self._next_id
            self._next_id += 1
        if cfg.trail_length:
            track.trail.append(track.centroid)
        self._update_rest(track, timestamp)

    def _update_rest(self, track: _Track, timestamp: float) -> None:
        """The stationary rule (module docstring): an anchor, and the time spent within reach of it."""
        cfg = self.config
        x, y = track.centroid
        x0, y0, x1, y1 = track.box
        if track.rest_anchor is None:
            track.rest_anchor = (x, y)
            track.rest_since = timestamp
            track.rest_diagonal = math.hypot(x1 - x0, y1 - y0)
            return
        ax, ay = track.rest_anchor
        reach = max(cfg.stationary_max_move * track.rest_diagonal, cfg.stationary_min_px)
        if math.hypot(x - ax, y - ay) > reach:
            track.stationary = False
            track.rest_anchor = (x, y)
            track.rest_since = timestamp
            track.rest_diagonal = math.hypot(x1 - x0, y1 - y0)
        elif timestamp - track.rest_since >= cfg.stationary_after_s:
            track.stationary = True

    def _expired(self, track: _Track, timestamp: float, frame_id: int) -> bool:
        """Whether a lost track has been unmatched longer than the buffer. Frame ids or timestamps
        that went back (a source restarted, a clock set back) end it too: its buffer cannot be
        measured any more, and a lost track kept forever would never end its event."""
        cfg = self.config
        factor = cfg.stationary_buffer_factor if track.stationary else 1.0
        if cfg.lost_buffer_frames is not None:
            return not 0 <= frame_id - track.last_frame <= cfg.lost_buffer_frames * factor
        return not 0.0 <= timestamp - track.last_seen <= cfg.lost_buffer_s * factor

    def _view(self, track: _Track, state: TrackState, box: Box, centroid: Point) -> TrackView:
        c = track.class_id
        return TrackView(
            track_id=track.track_id,
            class_id=c,
            class_name=self.class_names[c] if 0 <= c < len(self.class_names) else str(c),
            state=state,
            box=box,
            score=track.score,
            instance=track.instance,
            centroid=centroid,
            stationary=track.stationary,
            first_seen=track.first_seen,
            last_seen=track.last_seen,
            hits=track.hits,
        )

    def _compact(self, keep: BoolArray) -> None:
        """Keep the tracks (and their rows) where ``keep``."""
        if keep.all():
            return
        self._tracks = [t for t, k in zip(self._tracks, keep.tolist()) if k]
        self._means = self._means[keep]
        self._covs = self._covs[keep]
        self._classes = self._classes[keep]
        self._regions = self._regions[keep]
        self._areas = self._areas[keep]
        self._anchors = self._anchors[keep]


def _box_tuple(box: npt.ArrayLike) -> Box:
    x0, y0, x1, y1 = np.asarray(box, np.float64).tolist()
    return (x0, y0, x1, y1)


def _centre(box: Box) -> Point:
    return ((box[0] + box[2]) * 0.5, (box[1] + box[3]) * 0.5)
