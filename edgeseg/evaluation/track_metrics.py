"""MOTA, IDF1, HOTA and identity switches of tracks against the truth, computed by TrackEval.

TrackEval (the reference implementation of HOTA, also of the CLEAR and Identity metrics, used by
the MOTChallenge, KITTI and BDD100K benchmarks) scores one sequence from, per frame, the truth's
and the tracker's ids and a similarity matrix between them. The similarity here is the **mask
IoU** (``pycocotools.mask.iou`` on COCO RLE; the box IoU for objects without masks), set to 0
between different classes, so an object is only ever matched by a track of its own class. All
classes are scored together as one sequence (identities are unique across classes). MOTA, IDF1
and the identity switches count a match at IoU >= 0.5; HOTA averages over IoU 0.05..0.95.

TrackEval 1.3 runs on numpy 1.23 to 2.x (tested), though its metadata asks for numpy >= 2.3 on
Python 3.11+ and >= 1.24.4 on 3.8, and for the GUI ``opencv-python``; its metrics import neither
OpenCV nor matplotlib. It prints on import (a missing optional dependency) and on creating a
metric; both are silenced here, so the command's output stays its own.

Only confirmed tracks are scored (an instance whose track id is -1, not yet confirmed, is not
part of the tracker's output), as a tracker's published output would be.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np
import numpy.typing as npt

from edgeseg.errors import EvalError

#: IoU at which a prediction matches an object for MOTA, IDF1 and the switch count (TrackEval's default).
MATCH_IOU = 0.5
FloatMatrix = npt.NDArray[np.float64]


@dataclass(frozen=True)
class FrameObjects:
    """The objects of one frame, truth or prediction, aligned: ``track_ids[i]`` has class
    ``class_names[i]`` and mask ``rles[i]`` (COCO RLE of the whole frame), or, when ``rles`` is
    empty, box ``boxes[i]`` ([x, y, w, h])."""

    track_ids: Sequence[int]
    class_names: Sequence[str]
    rles: Sequence[Mapping[str, Any]] = ()
    boxes: Sequence[Sequence[float]] = ()

    def __len__(self) -> int:
        return len(self.track_ids)


@dataclass(frozen=True)
class TrackScores:
    """The scores of one sequence (fractions; counts are ints)."""

    mota: float
    idf1: float
    hota: float
    id_switches: int
    motp: float
    deta: float
    assa: float
    true_positives: int
    false_negatives: int
    false_positives: int
    truth_tracks: int
    predicted_tracks: int

    def line(self) -> str:
        """The one line ``MOTA a IDF1 b HOTA c IDsw n``."""
        return f"MOTA {self.mota:.3f} IDF1 {self.idf1:.3f} HOTA {self.hota:.3f} IDsw {self.id_switches}"

    def details(self) -> str:
        return (
            f"tracks: {self.truth_tracks} true, {self.predicted_tracks} predicted; matches at IoU {MATCH_IOU}: "
            f"{self.true_positives} TP, {self.false_negatives} FN, {self.false_positives} FP; "
            f"MOTP {self.motp:.3f} DetA {self.deta:.3f} AssA {self.assa:.3f}"
        )


def similarity(truth: FrameObjects, predicted: FrameObjects) -> FloatMatrix:
    """(len(truth), len(predicted)) IoU, 0 between different classes."""
    from pycocotools import mask as coco_mask

    n, m = len(truth), len(predicted)
    if n == 0 or m == 0:
        return np.zeros((n, m), np.float64)
    if truth.rles and predicted.rles:
        iou = coco_mask.iou(list(predicted.rles), list(truth.rles), [0] * n)
    else:
        iou = coco_mask.iou([list(b) for b in predicted.boxes], [list(b) for b in _boxes(truth)], [0] * n)
    sim = np.asarray(iou, np.float64).reshape(m, n).T.copy()
    same = np.asarray(truth.class_names, object)[:, None] == np.asarray(predicted.class_names, object)[None, :]
    sim[~same] = 0.0
    return sim


def _boxes(objects: FrameObjects) -> Sequence[Sequence[float]]:
    if objects.boxes:
        return objects.boxes
    from pycocotools import mask as coco_mask

    return [list(b) for b in coco_mask.toBbox(list(objects.rles))]


def match(sim: FloatMatrix, threshold: float = MATCH_IOU) -> List[Tuple[int, int]]:
    """(truth index, predicted index) pairs of the highest total IoU, each at least ``threshold``."""
    from scipy.optimize import linear_sum_assignment

    if sim.size == 0:
        return []
    rows, cols = linear_sum_assignment(-sim)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if sim[r, c] >= threshold]


def _trackeval_metrics() -> Tuple[Any, Any, Any]:
    """TrackEval's HOTA, CLEAR and Identity metric objects (quiet: it prints on import and init)."""
    quiet = io.StringIO()
    try:
        with contextlib.redirect_stdout(quiet):
            from trackeval.metrics import CLEAR, HOTA, Identity
    except ImportError as exc:
        raise EvalError(
            f"eval-tracks needs TrackEval ({exc.name or 'trackeval'} is missing): pip install 'edgeseg[eval]' "
            "(where numpy is pinned below 2, as on a Jetson: pip install --no-deps 'trackeval>=1.3,<2' tabulate)"
        ) from None
    config = {"THRESHOLD": MATCH_IOU, "PRINT_CONFIG": False}
    with contextlib.redirect_stdout(quiet):
        return HOTA(), CLEAR(config), Identity(config)


def sequence_data(
    truth: Sequence[FrameObjects], predicted: Sequence[FrameObjects]
) -> Dict[str, Any]:
    """TrackEval's per-sequence input: ids renumbered 0..n-1, and a similarity matrix per frame."""
    if len(truth) != len(predicted):
        raise ValueError(f"truth has {len(truth)} frames, predictions {len(predicted)}")
    gt_index: Dict[int, int] = {}
    tr_index: Dict[int, int] = {}
    gt_ids, tr_ids, sims = [], [], []
    for t, p in zip(truth, predicted):
        gt_ids.append(np.array([gt_index.setdefault(int(i), len(gt_index)) for i in t.track_ids], np.int64))
        tr_ids.append(np.array([tr_index.setdefault(int(i), len(tr_index)) for i in p.track_ids], np.int64))
        sims.append(similarity(t, p))
    return {
        "seq": "video",
        "num_timesteps": len(truth),
        "num_gt_ids": len(gt_index),
        "num_tracker_ids": len(tr_index),
        "num_gt_dets": int(sum(len(g) for g in gt_ids)),
        "num_tracker_dets": int(sum(len(p) for p in tr_ids)),
        "gt_ids": gt_ids,
        "tracker_ids": tr_ids,
        "similarity_scores": sims,
    }


def score_tracks(truth: Sequence[FrameObjects], predicted: Sequence[FrameObjects]) -> TrackScores:
    """Score the predicted tracks of a sequence against the truth, frame by frame (same length)."""
    for frame, p in enumerate(predicted):
        if len(set(p.track_ids)) != len(p.track_ids):
            raise ValueError(f"frame {frame}: a track id is given to two predictions")
    data = sequence_data(truth, predicted)
    hota_metric, clear_metric, identity_metric = _trackeval_metrics()
    with contextlib.redirect_stdout(io.StringIO()):
        hota = hota_metric.eval_sequence(data)
        clear = clear_metric.eval_sequence(data)
        identity = identity_metric.eval_sequence(data)
    return TrackScores(
        mota=float(clear["MOTA"]),
        idf1=float(identity["IDF1"]),
        hota=float(np.mean(hota["HOTA"])),
        id_switches=int(clear["IDSW"]),
        motp=float(clear["MOTP"]),
        deta=float(np.mean(hota["DetA"])),
        assa=float(np.mean(hota["AssA"])),
        true_positives=int(clear["CLR_TP"]),
        false_negatives=int(clear["CLR_FN"]),
        false_positives=int(clear["CLR_FP"]),
        truth_tracks=int(data["num_gt_ids"]),
        predicted_tracks=int(data["num_tracker_ids"]),
    )
