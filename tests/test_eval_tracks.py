"""``edgeseg eval-tracks``: tracking metrics on hand-made sequences with known answers, the truth
file's refusals, the zone/line event comparison, and the tracker and zones run on a hand-made truth.

Runs on Python 3.8 too (no export stage here); the scenes of the synthetic generator are tested in
tests/test_synthetic_tracks.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from edgeseg.analytics.types import Crossing, ZoneUpdate
from edgeseg.config import load_config
from edgeseg.errors import EvalError
from edgeseg.evaluation.track_metrics import FrameObjects, score_tracks, similarity
from edgeseg.evaluation.track_truth import load_truth
from edgeseg.evaluation.tracks import add_eval_tracks_parser, evaluate_truth_detections, truth_instances
from edgeseg.evaluation.zone_accuracy import (
    Identities,
    PredictedCrossing,
    PredictedZoneEvent,
    line_accuracy,
    predicted_events,
    zone_event_accuracy,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools

H, W = 60, 80
needs_trackeval = pytest.mark.skipif(
    __import__("importlib").util.find_spec("trackeval") is None,
    reason="TrackEval is not installed (pip install 'edgeseg[eval]')",
)


def rle(mask: np.ndarray) -> Dict[str, Any]:
    r = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")}


def square(x: int, y: int, side: int = 10, h: int = H, w: int = W) -> np.ndarray:
    m = np.zeros((h, w), np.bool_)
    m[max(y, 0):max(y + side, 0), max(x, 0):max(x + side, 0)] = True
    return m


def two_objects(frames: int = 10) -> List[FrameObjects]:
    """Object 1 (class a) moves right along the top, object 2 (class b) left along the bottom."""
    return [FrameObjects([1, 2], ["a", "b"], [rle(square(2 * t, 5)), rle(square(60 - 2 * t, 40))])
            for t in range(frames)]


def relabel(truth: List[FrameObjects], ids: List[List[int]]) -> List[FrameObjects]:
    return [FrameObjects(i, list(f.class_names), list(f.rles)) for f, i in zip(truth, ids)]


# -- the metrics ----------------------------------------------------------------------------------


@needs_trackeval
def test_perfect_tracking_scores_one_with_no_switch() -> None:
    truth = two_objects()
    scores = score_tracks(truth, relabel(truth, [[7, 9]] * 10))
    assert (scores.mota, scores.idf1, scores.hota, scores.id_switches) == (1.0, 1.0, pytest.approx(1.0), 0)
    assert scores.line() == "MOTA 1.000 IDF1 1.000 HOTA 1.000 IDsw 0"
    assert (scores.true_positives, scores.false_negatives, scores.false_positives) == (20, 0, 0)


@needs_trackeval
def test_one_identity_switch_is_counted() -> None:
    truth = two_objects()
    scores = score_tracks(truth, relabel(truth, [[7, 9]] * 5 + [[8, 9]] * 5))
    assert scores.id_switches == 1
    assert scores.mota == pytest.approx(1 - 1 / 20)  # no miss, no false positive, one switch
    assert scores.idf1 == pytest.approx(2 * 15 / 40)  # object 1 keeps one id for 5 of its 10 frames
    assert scores.hota < 1.0


@needs_trackeval
def test_a_missed_object_lowers_mota_by_its_misses() -> None:
    truth = two_objects()
    predicted = [FrameObjects([7], ["a"], [f.rles[0]]) if t < 5 else relabel([f], [[7, 9]])[0]
                 for t, f in enumerate(truth)]
    scores = score_tracks(truth, predicted)
    assert scores.mota == pytest.approx(1 - 5 / 20)
    assert scores.false_negatives == 5 and scores.id_switches == 0
    assert scores.idf1 == pytest.approx(2 * 15 / (20 + 15))


@needs_trackeval
def test_a_prediction_of_another_class_never_matches() -> None:
    truth = two_objects(4)
    predicted = [FrameObjects([7, 9], ["b", "b"], list(f.rles)) for f in truth]
    scores = score_tracks(truth, predicted)
    assert (scores.true_positives, scores.false_negatives, scores.false_positives) == (4, 4, 4)


def test_without_trackeval_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "trackeval", None)  # import trackeval raises ImportError
    monkeypatch.setitem(sys.modules, "trackeval.metrics", None)
    with pytest.raises(EvalError, match=r"needs TrackEval \(trackeval\S* is missing\): pip install 'edgeseg\[eval\]'"):
        score_tracks(two_objects(2), two_objects(2))


def test_similarity_is_the_mask_iou_not_the_box_iou() -> None:
    disk = np.zeros((H, W), np.bool_)
    yy, xx = np.mgrid[0:H, 0:W]
    disk[(yy - 30) ** 2 + (xx - 40) ** 2 <= 15 ** 2] = True
    ring = disk & ((yy - 30) ** 2 + (xx - 40) ** 2 > 11 ** 2)  # same box as the disk
    sim = similarity(FrameObjects([1], ["a"], [rle(disk)]), FrameObjects([5], ["a"], [rle(ring)]))
    assert sim.shape == (1, 1)
    assert sim[0, 0] == pytest.approx(ring.sum() / disk.sum())
    assert sim[0, 0] < 0.5  # the boxes are identical (IoU 1): the masks decide


# -- the truth file -------------------------------------------------------------------------------


def truth_doc(frames: int = 4, with_ids: bool = True) -> Dict[str, Any]:
    anns = []
    for t in range(frames):
        for tid, m in ((1, square(2 * t, 5)), (2, square(60 - 2 * t, 40))):
            r = rle(m)
            ann = {"id": len(anns) + 1, "image_id": t, "category_id": tid, "segmentation": r, "iscrowd": 0,
                   "area": int(m.sum()), "bbox": [float(v) for v in coco_mask.toBbox(r)]}
            if with_ids:
                ann["track_id"] = tid
            anns.append(ann)
    return {
        "info": {"fps": 10},
        "images": [{"id": t, "file_name": f"f{t}.jpg", "width": W, "height": H} for t in range(frames)],
        "annotations": anns,
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }


def write(tmp_path: Path, doc: Dict[str, Any], name: str = "truth.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def test_truth_loads_frames_tracks_and_classes(tmp_path: Path) -> None:
    truth = load_truth(write(tmp_path, truth_doc(3)))
    assert (truth.frames, truth.frame_size, truth.fps) == (3, (H, W), 10.0)
    assert [(o.track_id, o.class_name) for o in truth.objects[2]] == [(1, "a"), (2, "b")]
    assert not truth.has_events


def test_truth_without_track_ids_is_refused_naming_the_file_and_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, truth_doc(with_ids=False), "plain.json")
    with pytest.raises(EvalError) as err:
        load_truth(path)
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message and "field 'annotations.0.track_id': missing" in message


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["annotations"][1].update(track_id=1),
         "field 'annotations.1.track_id': track 1 is already in frame 0"),
        (lambda d: d["annotations"][0].update(track_id="x"), "field 'annotations.0.track_id': expected an integer"),
        (lambda d: d["annotations"][0].update(image_id=99), "field 'annotations.0.image_id': no image has id 99"),
        (lambda d: d.pop("categories"), "field 'categories': expected a list"),
        (lambda d: d.update(zones=[{"name": "z", "points": [[0, 0], [10, 10], [0, 10], [10, 0]]}]),
         "field 'zones.0.points'"),
        (lambda d: d.update(lines=[{"name": "l", "points": [[5, 5], [5, 5]]}]), "field 'lines.0.points'"),
        (lambda d: d["info"].update(fps=0), "field 'info.fps'"),
    ],
)
def test_unusable_truth_is_refused_in_one_line(tmp_path: Path, change: Any, message: str) -> None:
    doc = truth_doc()
    change(doc)
    with pytest.raises(EvalError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        load_truth(write(tmp_path, doc))
    assert "\n" not in str(err.value)


def test_the_command_refuses_a_truth_without_ids_before_loading_any_model(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="edgeseg")
    add_eval_tracks_parser(parser.add_subparsers(dest="command"))
    path = write(tmp_path, truth_doc(with_ids=False))
    args = parser.parse_args(["eval-tracks", "--model", str(tmp_path / "no-such-model.onnx"),
                              "--source", str(tmp_path / "no-such.mp4"), "--truth", str(path)])
    with pytest.raises(EvalError, match="track_id"):
        args.func(args)


# -- events ---------------------------------------------------------------------------------------


def scene_truth(tmp_path: Path, frames: int = 30) -> Path:
    """Object 1 (class a) crosses a vertical line rightwards and walks through a zone; object 2
    (class b) stays left of the line, outside the zone. The truth's events are written by hand."""
    h, w = 60, 120
    doc = truth_doc(0)
    doc["images"] = [{"id": t, "file_name": f"f{t}.jpg", "width": w, "height": h} for t in range(frames)]
    anns = []
    for t in range(frames):
        for tid, m in ((1, square(4 * t - 10, 10, 12, h, w)), (2, square(10, 40, 12, h, w))):
            if not m.any():
                continue
            r = rle(m)
            anns.append({"id": len(anns) + 1, "image_id": t, "category_id": tid, "segmentation": r, "iscrowd": 0,
                         "area": int(m.sum()), "bbox": [float(v) for v in coco_mask.toBbox(r)], "track_id": tid})
    doc["annotations"] = anns
    # zone x in [60, 90]: the 12 px square is half inside when its left edge is at 54 (t = 16) and
    # leaves when its left edge passes 84 (t = 24); the line x = 40.5: centroid 4t - 10 + 5.5 > 40.5 at t = 12
    doc["zones"] = [{"name": "z", "points": [[60, 0], [90, 0], [90, 59], [60, 59]]}]
    doc["lines"] = [{"name": "l", "points": [[40.5, 59], [40.5, 0]]}]
    doc["events"] = {
        "zones": [{"track_id": 1, "zone": "z", "enter_frame": 16, "leave_frame": 24}],
        "crossings": [{"track_id": 1, "line": "l", "direction": "in", "frame": 12}],
    }
    return write(tmp_path, doc, "scene.json")


def test_event_errors_pair_true_and_predicted_events_of_the_same_object(tmp_path: Path) -> None:
    truth = load_truth(scene_truth(tmp_path))
    ids = Identities()
    for f in range(30):
        ids.add(f, 11, 1)  # predicted track 11 is object 1 throughout
        ids.add(f, 12, 2)
    predicted = [PredictedZoneEvent(11, "z", "enter", 18), PredictedZoneEvent(11, "z", "leave", 23),
                 PredictedZoneEvent(12, "z", "enter", 5)]  # object 2 never enters: spurious
    enter, leave = zone_event_accuracy(truth, predicted, ids)
    assert (enter.kind, enter.found, enter.errors, enter.spurious) == ("enter", 1, (2,), 1)
    assert (leave.kind, leave.found, leave.errors, leave.spurious) == ("leave", 1, (-1,), 0)
    (line,) = line_accuracy(truth, [PredictedCrossing(11, "l", "in", 13), PredictedCrossing(12, "l", "out", 3)], ids)
    assert dict(line.counts) == {"in": (1, 1), "out": (1, 0)}
    assert not line.exact and line.attributed == 1


def test_identities_fall_back_to_the_nearest_matched_frame() -> None:
    ids = Identities()
    ids.add(3, 5, 1)
    ids.add(9, 5, 2)  # an identity switch: track 5 follows object 2 from frame 9
    ids.add(4, -1, 1)  # untracked instances are nobody
    assert (ids.truth_of(5, 0), ids.truth_of(5, 5), ids.truth_of(5, 7), ids.truth_of(5, 20)) == (1, 1, 2, 2)
    assert ids.truth_of(6, 3) is None and ids.truth_of(-1, 4) is None


def test_predicted_events_take_the_time_an_event_began() -> None:
    update = ZoneUpdate(entered=((4, "z"),), left=((5, "z"),), crossings=(Crossing("l", 4, "in", 2.0),))
    zones, crossings = predicted_events(12, update, {(4, "z"): 1.0}, fps=10.0)
    assert [(e.track_id, e.kind, e.frame) for e in zones] == [(4, "enter", 10), (5, "leave", 12)]
    assert [(c.track_id, c.direction, c.frame) for c in crossings] == [(4, "in", 20)]


@needs_trackeval
def test_tracker_and_zones_on_the_truths_own_masks_find_every_event(tmp_path: Path) -> None:
    truth = load_truth(scene_truth(tmp_path))
    instances = truth_instances(truth, 20, ("a", "b"))
    assert instances.has_masks and instances.names == ["a", "b"] and float(instances.scores.min()) == 1.0
    report = evaluate_truth_detections(load_config(None, {}), truth)
    assert report.scores.id_switches == 0 and report.scores.idf1 > 0.9
    (line,) = report.lines
    assert line.exact and line.attributed == 1
    for acc in report.zone_events:
        assert acc.found == acc.truth == 1 and acc.max_error <= 3
    text = report.lines_out()
    assert text[0].startswith("MOTA ") and " IDsw 0" in text[0]
    assert any(t.startswith("line l: in 1/1 out 0/0") for t in text)


def test_truth_instances_are_empty_in_a_frame_without_objects(tmp_path: Path) -> None:
    doc = truth_doc(2)
    doc["images"].append({"id": 2, "file_name": "f2.jpg", "width": W, "height": H})
    truth = load_truth(write(tmp_path, doc))
    assert len(truth_instances(truth, 2, ("a", "b"))) == 0

