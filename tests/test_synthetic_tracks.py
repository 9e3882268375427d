"""Ground-truth track ids of the synthetic videos and the scripted tracking scenes: the truth is
self-consistent (its events follow from its own masks by the documented rules), agrees with the
runtime's conventions (the runtime's tracker and zones, fed the truth's masks, find its events),
and ``edgeseg synth --tracking-scene`` / ``edgeseg eval-tracks`` work end to end.

Imports the export stage, so it is collected on Python 3.11+ only (tests/conftest.py).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import DEMO_BUNDLE
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

from edgeseg.config import load_config
from edgeseg.errors import ExportError
from edgeseg.evaluation.track_truth import load_truth
from edgeseg.evaluation.tracks import add_eval_tracks_parser, evaluate_truth_detections
from edgeseg.zones.geometry import box_anchors, rasterize
from export.data.cli import add_synth_parser
from export.data.scenes import SCENES, line_crossings, mask_centroid, write_tracking_scene, zone_events
from export.data.synthetic import write_video

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools

SIZE = (320, 180)
FRAMES = 90  # the tracking scenes move at their nominal pace from about 90 frames; 45 is 3x as fast
needs_trackeval = pytest.mark.skipif(
    __import__("importlib").util.find_spec("trackeval") is None,
    reason="TrackEval is not installed (pip install 'edgeseg[eval]')",
)
#: The crossings scene's script: who crosses the gate, in order, and which way.
CROSSINGS = [(2, "out"), (4, "out"), (1, "in"), (3, "in"), (5, "in"), (3, "out"), (6, "out")]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("scenes")
    return {name: write_tracking_scene(name, folder / f"{name}.mp4", frames=FRAMES, size=SIZE).annotations
            for name in SCENES}


def by_track(doc: dict[str, Any]) -> dict[int, dict[int, dict[str, Any]]]:
    """track id -> frame -> annotation."""
    out: dict[int, dict[int, dict[str, Any]]] = defaultdict(dict)
    for ann in doc["annotations"]:
        assert ann["image_id"] not in out[ann["track_id"]], "one instance per track and frame"
        out[ann["track_id"]][ann["image_id"]] = ann
    return out


# -- the demo video -------------------------------------------------------------------------------


def test_every_instance_of_the_demo_video_has_a_stable_track_id(tmp_path: Path) -> None:
    summary = write_video(tmp_path / "demo.mp4", frames=12, seed=1)
    doc = json.loads(summary.annotations.read_text())
    assert doc["info"]["track_ids"] is True
    tracks = by_track(doc)
    assert summary.tracks == len(tracks) >= 4 and set(tracks) == set(range(1, len(tracks) + 1))
    for frames in tracks.values():
        assert len({a["category_id"] for a in frames.values()}) == 1, "a track keeps its class"
        centres = [mask_centroid(coco_mask.decode(frames[f]["segmentation"]).astype(bool)) for f in sorted(frames)]
        steps = np.hypot(*np.diff(np.array(centres), axis=0).T)
        assert steps.max() < 12, "a track is one shape moving a few pixels per frame"
    COCO(str(summary.annotations))  # still a COCO file


# -- the scenes' truth ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCENES))
def test_scene_truth_is_coco_with_zones_and_lines_the_runtime_accepts(scenes: dict[str, Path], name: str) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(scenes[name]))
    assert sorted(coco.getImgIds()) == list(range(FRAMES))
    truth = load_truth(scenes[name])  # the runtime's loader validates zones and lines as the config does
    assert truth.frames == FRAMES and truth.frame_size == (SIZE[1], SIZE[0])
    assert [z.name for z in truth.zones] == [z for z, _ in SCENES[name].zones]
    assert [ln.name for ln in truth.lines] == [n for n, _ in SCENES[name].lines]
    assert {o.track_id for objs in truth.objects.values() for o in objs} == {a.track_id for a in SCENES[name].actors}


@pytest.mark.parametrize("name", sorted(SCENES))
def test_scene_membership_follows_from_the_masks(scenes: dict[str, Path], name: str) -> None:
    doc = json.loads(scenes[name].read_text())
    height, width = SIZE[1], SIZE[0]
    tracks = by_track(doc)
    zones = {z["name"]: z for z in doc["zones"]}
    for row in doc["membership"]:
        zone = zones[row["zone"]]
        raster = rasterize([tuple(p) for p in zone["points"]], (height, width))  # the runtime's raster
        for frame, fraction, inside, anchor in zip(row["frames"], row["fraction"], row["inside"],
                                                   row["anchor_inside"]):
            ann = tracks[row["track_id"]][frame]
            mask = coco_mask.decode(ann["segmentation"]).astype(bool)
            assert fraction == pytest.approx((mask & raster).sum() / mask.sum(), abs=1e-4)
            assert inside == (fraction >= zone["min_fraction"])
            x, y, w, h = ann["bbox"]
            ax, ay = box_anchors(np.array([[x, y, x + w, y + h]]), (height, width))[0]  # the runtime's anchor
            assert anchor == bool(raster[ay, ax])
        events = zone_events(dict(zip(row["frames"], row["inside"])), FRAMES)
        rows = [r for r in doc["events"]["zones"] if r["zone"] == row["zone"] and r["track_id"] == row["track_id"]]
        assert [("enter", r["enter_frame"]) for r in rows] == [e for e in events if e[0] == "enter"]
        assert [("leave", r["leave_frame"]) for r in rows if r["leave_frame"] is not None] == \
            [e for e in events if e[0] == "leave"]
        for r in rows:
            assert r["enter_time"] == pytest.approx(r["enter_frame"] / doc["info"]["fps"], abs=1e-3)


def test_crossings_follow_from_the_mask_centroids_and_the_script(scenes: dict[str, Path]) -> None:
    doc = json.loads(scenes["crossings"].read_text())
    (line,) = doc["lines"]
    found = []
    for tid, frames in by_track(doc).items():
        path = {f: mask_centroid(coco_mask.decode(a["segmentation"]).astype(bool)) for f, a in frames.items()}
        found += [(f, tid, d) for d, f in line_crossings(path, line["points"])]
    assert [(c["frame"], c["track_id"], c["direction"]) for c in doc["events"]["crossings"]] == sorted(found)
    assert [(c["track_id"], c["direction"]) for c in doc["events"]["crossings"]] == CROSSINGS
    visits = {r["track_id"]: r for r in doc["events"]["zones"]}
    assert sorted(visits) == [2, 3, 4] and visits[3]["enter_frame"] == 0
    assert all(r["leave_frame"] > r["enter_frame"] for r in visits.values())
    stationary = {(s["track_id"], s["start_frame"]) for s in doc["events"]["stationary"]}
    assert (5, 0) in stationary and (3, 0) in stationary
    assert doc["info"]["dropped_occluded"] > 0, "the scene has occlusions deep enough to hide a shape"


def test_anchor_scene_box_anchors_disagree_with_the_masks(scenes: dict[str, Path]) -> None:
    doc = json.loads(scenes["anchors"].read_text())
    rows = {r["track_id"]: r for r in doc["membership"]}
    for tall in (1, 2):  # the star and the ring above the band: anchors in it, masks not
        assert not any(rows[tall]["inside"]) and all(rows[tall]["anchor_inside"])
    assert all(rows[4]["inside"]) and all(rows[4]["anchor_inside"])  # the circle in the band
    assert not any(rows[5]["inside"]) and not any(rows[5]["anchor_inside"])  # the square far above
    assert any(rows[3]["inside"]) and rows[3]["inside"] != rows[3]["anchor_inside"]  # the triangle walks through


def test_line_crossing_rules() -> None:
    line = [[10.0, 20.0], [10.0, 0.0]]  # upwards: its right is +x
    assert line_crossings({0: (5.0, 10.0), 1: (15.0, 10.0), 2: (5.0, 10.0)}, line) == [("in", 1), ("out", 2)]
    assert line_crossings({0: (5.0, 30.0), 1: (15.0, 30.0)}, line) == [], "beyond the segment's end"
    assert line_crossings({0: (5.0, 10.0), 1: (10.0, 10.0), 2: (5.0, 10.0)}, line) == [], "on the line: no side"
    assert zone_events({0: True, 1: False, 5: True}, 10) == [("enter", 0), ("leave", 1), ("enter", 5), ("leave", 6)]
    assert zone_events({2: True, 9: True}, 10) == [("enter", 2)], "hidden frames keep the state; inside at the end"


@needs_trackeval
@pytest.mark.parametrize("name", sorted(SCENES))
def test_the_runtime_finds_the_truths_events_from_the_truths_masks(scenes: dict[str, Path], name: str) -> None:
    """Same conventions: the runtime's tracker and zones, fed the true masks, find the true events."""
    report = evaluate_truth_detections(load_config(None, {}), load_truth(scenes[name]))
    assert report.scores.idf1 > 0.9
    for line in report.lines:
        assert line.exact and line.attributed == line.truth == len(CROSSINGS)
    for acc in report.zone_events:
        assert acc.found == acc.truth and acc.max_error <= 3 and acc.spurious == 0
    for m in report.membership:
        assert m.mask == 1.0
        assert m.box_anchor == pytest.approx(m.truth_box_anchor, abs=0.02)


# -- the commands ---------------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="edgeseg")
    sub = parser.add_subparsers(dest="command")
    add_synth_parser(sub)
    add_eval_tracks_parser(sub)
    return parser.parse_args(argv)


def test_synth_writes_a_tracking_scene(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = parse(["synth", "--out", str(tmp_path), "--train", "0", "--val", "0", "--tracking-scene", "anchors",
                  "--video", str(tmp_path / "a.mp4"), "--video-frames", "20"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "tracking scene anchors" in out and "box anchor agrees with the masks: band 0." in out
    assert json.loads((tmp_path / "a.json").read_text())["info"]["scene"] == "anchors"
    args = parse(["synth", "--out", str(tmp_path), "--train", "0", "--val", "0", "--tracking-scene", "anchors"])
    with pytest.raises(ExportError, match="--tracking-scene needs --video"):
        args.func(args)
    with pytest.raises(SystemExit):
        parse(["synth", "--out", "x", "--tracking-scene", "nope", "--video", "v.mp4"])


@needs_trackeval
def test_eval_tracks_with_the_demo_student(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_tracking_scene("anchors", tmp_path / "a.mp4", frames=30, size=(640, 360))
    args = parse(["eval-tracks", "--model", str(DEMO_BUNDLE), "--source", str(tmp_path / "a.mp4"),
                  "--truth", str(tmp_path / "a.json"), "--conf", "0.1", "--log-level", "warning"])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"MOTA -?\d+\.\d{3} IDF1 \d\.\d{3} HOTA \d\.\d{3} IDsw \d+", lines[0]), lines[0]
    membership = next(line for line in lines if line.startswith("membership band: "))
    mask, anchor = (float(v) for v in re.findall(r"(?:mask|box anchor) (\d\.\d+)", membership)[:2])
    assert mask > anchor, membership
