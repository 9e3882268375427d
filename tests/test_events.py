"""Events (edgeseg.events): the lifecycle driven by hand-built tracker and zone results, the event
documents against their JSON Schema, mask formats, snapshots in a bounded directory, and the
``events:PATH`` sink."""

from __future__ import annotations

import json
import os
from itertools import count
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import cv2
import jsonschema
import numpy as np
import pytest
from pycocotools import mask as coco_mask

from edgeseg.analytics.types import Analytics, Crossing, Event, TrackUpdate, TrackView, ZoneUpdate
from edgeseg.config.events import EventsConfig, SnapshotConfig, parse_events_config
from edgeseg.errors import ConfigError, SinkError
from edgeseg.events import EventManager, EventsSink, SnapshotStore, camera_dir_name, load_event_schema
from edgeseg.events.snapshots import SnapshotSource, cutout_png
from edgeseg.sinks import create_sink, sink_kinds
from edgeseg.sinks.base import SinkOptions
from edgeseg.structures import Frame, FrameResult, Instances

HEIGHT, WIDTH = 120, 160
CLASSES = ("person", "car")
VALIDATOR = jsonschema.Draft202012Validator(load_event_schema())


# -- builders --------------------------------------------------------------------------------


def instances_with_mask(box: Tuple[int, int, int, int], score: float = 0.9, class_id: int = 0) -> Instances:
    """One instance whose mask is an ellipse filling its box."""
    x0, y0, x1, y1 = box
    crop = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.ellipse(crop, ((x1 - x0) // 2, (y1 - y0) // 2), ((x1 - x0) // 2, (y1 - y0) // 2), 0, 0, 360, 1, -1)
    return Instances(
        image_size=(HEIGHT, WIDTH),
        boxes=np.asarray([box], np.float32),
        scores=np.asarray([score], np.float32),
        class_ids=np.asarray([class_id], np.int32),
        class_names=CLASSES,
        masks=(crop.astype(bool),),
        mask_boxes=np.asarray([box], np.int32),
    )


def frame_result(frame_id: int, t: float, instances: Optional[Instances] = None) -> FrameResult:
    image = np.full((HEIGHT, WIDTH, 3), 40 + frame_id % 100, np.uint8)
    inst = instances if instances is not None else Instances.empty((HEIGHT, WIDTH), CLASSES)
    return FrameResult(Frame(image, frame_id, "test", t), inst, "model", (HEIGHT, WIDTH))


def view(
    tid: int = 1, state: str = "confirmed", *, score: float = 0.8, instance: Optional[int] = 0,
    stationary: bool = False, centroid: Tuple[float, float] = (50.0, 50.0), class_id: int = 0, t: float = 0.0,
    box: Tuple[float, float, float, float] = (40.0, 40.0, 60.0, 60.0),
) -> TrackView:
    return TrackView(
        track_id=tid, class_id=class_id, class_name=CLASSES[class_id], state=state,  # type: ignore[arg-type]
        box=box, score=score if instance is not None else 0.0, instance=instance, centroid=centroid,
        stationary=stationary, first_seen=0.0, last_seen=t, hits=1,
    )


class Driver:
    """Feeds an EventManager frame by frame at 10 fps and keeps every message (each validated)."""

    def __init__(self, config: Optional[EventsConfig] = None, **kwargs: Any):
        ids = count(1)
        kwargs.setdefault("event_ids", lambda camera, tid, start: f"{camera}-{tid}-{next(ids)}")
        self.manager = EventManager(config or EventsConfig(), "gate", CLASSES, **kwargs)
        self.frame_id = 0
        self.events: List[Event] = []

    @property
    def t(self) -> float:
        return 1000.0 + self.frame_id / 10.0

    def step(
        self, *views: TrackView, inside: Optional[Mapping[int, Iterable[str]]] = None,
        crossings: Sequence[Crossing] = (), instances: Optional[Instances] = None,
        since: Optional[Mapping[Tuple[int, str], float]] = None,
    ) -> Tuple[Event, ...]:
        t = self.t
        views = tuple(TrackView(**{**v.__dict__, "last_seen": t}) for v in views)
        tracks = TrackUpdate(self.frame_id, t, np.zeros((0,), np.int32), views)
        zones = ZoneUpdate(inside={k: frozenset(v) for k, v in (inside or {}).items()}, crossings=tuple(crossings),
                           since=dict(since or {}))
        out = self.manager.update(frame_result(self.frame_id, t, instances), tracks, zones)
        self.frame_id += 1
        self.record(out)
        return out

    def run(self, frames: int, *views: TrackView, **kwargs: Any) -> List[Event]:
        out: List[Event] = []
        for _ in range(frames):
            out.extend(self.step(*views, **kwargs))
        return out

    def finish(self) -> Tuple[Event, ...]:
        out = self.manager.finish(self.t)
        self.record(out)
        return out

    def record(self, events: Iterable[Event]) -> None:
        for event in events:
            VALIDATOR.validate(event.document)
            json.dumps(event.document)
            assert event.document["type"] == event.type and list(event.reasons) == event.document["reasons"]
            self.events.append(event)


def kinds(events: Iterable[Event]) -> List[Tuple[str, Tuple[str, ...]]]:
    return [(e.type, e.reasons) for e in events]


def one_instance() -> Instances:
    return instances_with_mask((40, 40, 60, 60))


# -- lifecycle -------------------------------------------------------------------------------


def test_new_once_then_end_once_on_removal() -> None:
    d = Driver()
    first = d.step(view(1), instances=one_instance())
    assert kinds(first) == [("new", ("new",))]
    assert d.run(5, view(1), instances=one_instance()) == []
    end = d.step(view(1, "removed", instance=None))
    assert kinds(end) == [("end", ("end", "removed"))]
    doc = end[0].document
    assert doc["end_reason"] == "removed" and doc["end_time"] == pytest.approx(d.t - 0.1)
    assert doc["event_id"] == first[0].event_id and doc["start_time"] == pytest.approx(1000.0)
    assert d.step(view(1, "removed", instance=None)) == ()  # removal reported twice: still one end
    assert d.finish() == ()


def test_tentative_and_lost_without_event_publish_nothing() -> None:
    d = Driver()
    assert d.step() == ()  # a tentative track is not in TrackUpdate.tracks
    assert d.step(view(2, "lost", instance=None)) == ()
    assert d.step(view(2, "removed", instance=None)) == ()
    assert d.finish() == ()


def test_lost_keeps_the_event_open_and_finish_ends_every_event_once() -> None:
    d = Driver()
    d.step(view(1), view(2, centroid=(90, 90)), instances=one_instance())
    assert d.step(view(1, "lost", instance=None), view(2, instance=None)) == ()
    ends = d.finish()
    assert sorted((e.track_id, e.reasons) for e in ends) == [(1, ("end", "stopped")), (2, ("end", "stopped"))]
    assert all(e.document["end_time"] == pytest.approx(d.t) for e in ends)
    assert d.finish() == ()
    assert d.manager.open_events == 0
    ids = [e.event_id for e in d.events if e.type == "new"]
    assert len(set(ids)) == 2


@pytest.mark.parametrize(
    ("before", "after", "reason"),
    [
        ({"inside": {}}, {"inside": {1: {"door"}}}, "entered_zone"),
        ({"inside": {1: {"door"}}}, {"inside": {}}, "left_zone"),
        ({}, {"crossings": [Crossing("gate", 1, "in", 0.0)]}, "crossed_line"),
        ({}, {"stationary": True}, "stationary"),
        ({"stationary": True}, {"stationary": False}, "moving"),
    ],
)
def test_update_on_each_reason(before: Dict[str, Any], after: Dict[str, Any], reason: str) -> None:
    d = Driver()
    stationary_before = before.pop("stationary", False)
    stationary_after = after.pop("stationary", stationary_before)
    d.step(view(1, stationary=stationary_before), **before)
    assert d.step(view(1, stationary=stationary_before), **before) == ()
    out = d.step(view(1, stationary=stationary_after), **after)
    assert kinds(out) == [("update", (reason,))]
    again = d.step(view(1, stationary=stationary_after), **after)
    assert kinds(again) == ([("update", (reason,))] if reason == "crossed_line" else [])


def test_reasons_of_one_frame_share_one_update_and_zone_times() -> None:
    d = Driver()
    d.step(view(1))
    t_enter = d.t
    out = d.step(view(1), inside={1: {"door", "yard"}}, crossings=[Crossing("gate", 1, "out", t_enter)])
    assert kinds(out) == [("update", ("entered_zone", "crossed_line"))]
    doc = out[0].document
    assert doc["current_zones"] == ["door", "yard"]
    assert doc["zones"]["door"] == {"entered_at": t_enter, "left_at": None, "dwell_s": 0.0, "visits": 1,
                                    "loitering": False}
    assert doc["crossings"] == [{"line": "gate", "direction": "out", "time": t_enter}]
    d.run(9, view(1), inside={1: {"door", "yard"}})
    t_leave = d.t
    out = d.step(view(1), inside={1: {"yard"}})
    assert kinds(out) == [("update", ("left_zone",))]
    door = out[0].document["zones"]["door"]
    assert door["left_at"] == t_leave and door["dwell_s"] == pytest.approx(1.0)
    assert out[0].document["zones"]["yard"]["dwell_s"] == pytest.approx(1.0)


def test_dwell_sums_two_visits_and_end_closes_the_open_visit() -> None:
    d = Driver()
    d.step(view(1))
    d.run(21, view(1), inside={1: {"door"}})  # entered at frame 1, left at frame 22: 2.1 s
    d.run(10, view(1))
    d.run(31, view(1), inside={1: {"door"}})  # entered at frame 32, closed by the removal at 63: 3.1 s
    end = d.step(view(1, "removed", instance=None), inside={})
    door = end[0].document["zones"]["door"]
    assert door["visits"] == 2 and door["dwell_s"] == pytest.approx(5.2)
    assert door["entered_at"] == pytest.approx(1003.2) and door["left_at"] == pytest.approx(1006.3)
    assert end[0].document["current_zones"] == []


def test_zone_times_are_when_the_visit_began_not_when_inertia_reported_it() -> None:
    """The zones report an enter (or leave) after their inertia frames, with when it began."""
    d = Driver()
    d.step(view(1))  # t 1000.0
    d.run(4, view(1))  # 1000.1 .. 1000.4
    out = d.step(view(1), inside={1: {"door"}}, since={(1, "door"): 1000.3})  # reported at 1000.5
    assert kinds(out) == [("update", ("entered_zone",))]
    assert out[0].document["zones"]["door"]["entered_at"] == pytest.approx(1000.3)
    d.run(4, view(1), inside={1: {"door"}})  # 1000.6 .. 1000.9
    out = d.step(view(1), inside={}, since={(1, "door"): 1000.8})  # left, reported at 1001.0
    door = out[0].document["zones"]["door"]
    assert door["left_at"] == pytest.approx(1000.8) and door["dwell_s"] == pytest.approx(0.5)


def test_entering_already_inside_at_confirmation_is_part_of_new() -> None:
    d = Driver()
    out = d.step(view(1), inside={1: {"door"}})
    assert kinds(out) == [("new", ("new",))]
    assert out[0].document["current_zones"] == ["door"]
    assert d.step(view(1), inside={1: {"door"}}) == ()


def test_loitering_once_per_visit_with_zone_threshold_first() -> None:
    config = EventsConfig(default_loiter_s={"*": 100.0})
    d = Driver(config, zones_loiter={"door": {"person": 1.0}})
    d.step(view(1))
    out = d.run(30, view(1), inside={1: {"door"}})  # 3 s in the door zone: loitering after 1 s, once
    assert kinds(out) == [("update", ("entered_zone",)), ("update", ("loitering",))]
    assert out[1].document["zones"]["door"]["loitering"] is True
    loiter_doc = out[1].document["zones"]["door"]
    assert loiter_doc["dwell_s"] == pytest.approx(1.0, abs=0.11)
    out = d.run(5, view(1))
    assert kinds(out) == [("update", ("left_zone",))]
    assert out[0].document["zones"]["door"]["loitering"] is True  # the latest visit's flag stays after it
    out = d.run(30, view(1), inside={1: {"door"}})  # a second visit: loitering again, once
    assert kinds(out) == [("update", ("entered_zone",)), ("update", ("loitering",))]
    assert d.manager.loiter_threshold("yard", "car") == 100.0
    assert d.manager.loiter_threshold("door", "car") == 100.0


def test_loitering_threshold_per_class() -> None:
    d = Driver(EventsConfig(default_loiter_s={"car": 0.5}))
    d.step(view(1), view(2, class_id=1, centroid=(90, 90)))
    out = d.run(10, view(1), view(2, class_id=1, centroid=(90, 90)), inside={1: {"lot"}, 2: {"lot"}})
    assert [(e.track_id, e.reasons) for e in out if "loitering" in e.reasons] == [(2, ("loitering",))]


def test_stationary_timeout_ends_and_no_new_event_until_moving() -> None:
    d = Driver(EventsConfig(stationary_end_s=2.0))
    new = d.step(view(7))
    out = d.run(25, view(7, stationary=True))  # stationary from 1000.1: ends after 2 s, near frame 21
    assert kinds(out) == [("update", ("stationary",)), ("end", ("end", "stationary_timeout"))]
    end = out[1].document
    assert end["stationary"] is True and end["end_reason"] == "stationary_timeout"
    assert end["end_time"] - 1000.1 == pytest.approx(2.0, abs=0.11)
    assert d.run(50, view(7, stationary=True)) == []  # parked: no event, however long
    again = d.step(view(7, stationary=False))
    assert kinds(again) == [("new", ("new",))]
    assert again[0].event_id != new[0].event_id and again[0].track_id == 7
    ends = d.finish()
    assert [e.event_id for e in ends] == [again[0].event_id]


def test_parked_track_removed_is_forgotten() -> None:
    d = Driver(EventsConfig(stationary_end_s=1.0))
    d.step(view(3))
    d.run(11, view(3, stationary=True))
    assert d.manager.open_events == 0
    assert d.step(view(3, "removed", instance=None)) == ()
    assert d.finish() == ()


def test_better_snapshot_needs_delta_and_interval_and_not_stationary() -> None:
    d = Driver(EventsConfig(better_snapshot_delta=0.1, snapshot_interval_s=1.0))
    inst = one_instance()
    d.step(view(1, score=0.5), instances=inst)
    assert d.step(view(1, score=0.55), instances=inst) == ()  # better, not clearly
    assert d.run(5, view(1, score=0.65), instances=inst) == []  # clearly better, within the interval
    out = d.run(5, view(1, score=0.65), instances=inst)
    assert kinds(out) == [("update", ("better_snapshot",))]
    assert out[0].document["best"]["score"] == pytest.approx(0.65)
    assert out[0].document["score"] == {"best": 0.65, "current": 0.65}
    d.step(view(1, score=0.65, stationary=True), instances=inst)
    assert d.run(20, view(1, score=0.99, stationary=True), instances=inst) == []  # stationary: no snapshots
    end = d.step(view(1, "removed", instance=None))
    assert end[0].document["best"]["score"] == pytest.approx(0.65)
    assert end[0].document["score"]["best"] == pytest.approx(0.99)


def test_sparse_path_is_bounded_and_spread() -> None:
    d = Driver(EventsConfig(path_points=5, min_path_px=10.0))
    d.step(view(1, centroid=(0.0, 50.0)))
    for x in range(1, 150):
        d.step(view(1, centroid=(float(x), 50.0)))
    end = d.finish()
    path = end[0].document["path"]
    assert len(path) == 5 and path[0][:2] == [0.0, 50.0]
    xs = [p[0] for p in path]
    assert xs == sorted(xs) and min(np.diff(xs)) >= 10.0
    assert xs[-1] >= 140.0 and all(p[2] >= 1000.0 for p in path)


def test_unknown_loiter_class_is_refused_naming_the_field() -> None:
    with pytest.raises(ConfigError, match=r"events\.default_loiter_s.*'bus'"):
        EventManager(EventsConfig(default_loiter_s={"bus": 5.0}), "gate", CLASSES)
    with pytest.raises(ConfigError, match=r"zone 'door'.*'bus'"):
        EventManager(EventsConfig(), "gate", CLASSES, zones_loiter={"door": {"bus": 5.0}})


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"default_loiter_s": {"person": -1}}, "default_loiter_s"),
        ({"path_points": 1}, "path_points"),
        ({"stationary_end_s": 0}, "stationary_end_s"),
        ({"snapshots": {"max_files": 0}}, "snapshots.max_files"),
        ({"snapshots": {"jpeg_quality": 101}}, "snapshots.jpeg_quality"),
        ({"mask": "bitmap"}, "mask"),
        ({"snapshot": {}}, "snapshot"),
    ],
)
def test_config_refuses_out_of_bounds_in_one_line(raw: Dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_events_config(raw)
    message = str(info.value)
    assert f"events.{field}" in message and "\n" not in message


def test_every_config_field_is_described() -> None:
    for model in (EventsConfig, SnapshotConfig):
        assert all(f.description for f in model.model_fields.values()), model.__name__


# -- documents and masks ---------------------------------------------------------------------


def test_schema_is_valid_and_refuses_a_broken_document() -> None:
    jsonschema.Draft202012Validator.check_schema(load_event_schema())
    d = Driver()
    doc = dict(d.step(view(1), instances=one_instance())[0].document)
    doc["event_id"] = "../x"
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate(doc)


@pytest.mark.parametrize("mask", ["rle", "polygon", "none"])
def test_best_mask_formats(mask: str) -> None:
    d = Driver(EventsConfig.model_validate({"mask": mask}))
    inst = instances_with_mask((30, 20, 70, 80))
    new = d.step(view(1, box=(30, 20, 70, 80)), instances=inst)
    best = new[0].document["best"]
    assert best["box"] == [30.0, 20.0, 70.0, 80.0] and best["frame_id"] == 0
    full = inst.full_mask(0)
    if mask == "none":
        assert best["mask"] is None
    elif mask == "rle":
        decoded = coco_mask.decode({"size": best["mask"]["size"], "counts": best["mask"]["counts"].encode()})
        assert np.array_equal(decoded.astype(bool), full)
    else:
        polygons = best["mask"]["polygons"]
        assert polygons and all(len(p) >= 6 for p in polygons)
        rles = coco_mask.frPyObjects(polygons, HEIGHT, WIDTH)
        drawn = coco_mask.decode(coco_mask.merge(rles)).astype(bool)
        assert (drawn & full).sum() / (drawn | full).sum() > 0.9


def test_best_without_masks_has_box_and_null_mask() -> None:
    d = Driver()
    inst = Instances(
        image_size=(HEIGHT, WIDTH), boxes=np.asarray([[1, 2, 30, 40]], np.float32),
        scores=np.asarray([0.7], np.float32), class_ids=np.asarray([1], np.int32), class_names=CLASSES,
    )
    new = d.step(view(4, class_id=1, box=(1, 2, 30, 40), score=0.7), instances=inst)
    doc = new[0].document
    assert doc["class"] == "car" and doc["class_id"] == 1
    assert doc["best"]["mask"] is None and doc["best"]["box"] == [1.0, 2.0, 30.0, 40.0]


# -- snapshots -------------------------------------------------------------------------------


def snapshot_config(tmp_path: Path, **kwargs: Any) -> EventsConfig:
    return EventsConfig(snapshots=SnapshotConfig(enabled=True, dir=str(tmp_path / "snaps"), **kwargs))


def test_snapshots_written_once_per_published_best(tmp_path: Path) -> None:
    d = Driver(snapshot_config(tmp_path))
    inst = one_instance()
    new = d.step(view(1, score=0.5), instances=inst)
    assert new[0].snapshot is not None and new[0].snapshot[:3] == b"\xff\xd8\xff"
    snap = new[0].document["snapshot"]
    root = tmp_path / "snaps"
    assert snap["file"] == f"gate/{new[0].event_id}.jpg" and (root / snap["file"]).read_bytes() == new[0].snapshot
    assert snap["crop"] == f"gate/{new[0].event_id}-crop.png" and (root / snap["crop"]).is_file()
    updates = d.run(20, view(1, score=0.5), instances=inst)
    assert updates == [] and len(list((root / "gate").iterdir())) == 2
    better = d.run(20, view(1, score=0.9), instances=inst)
    assert kinds(better) == [("update", ("better_snapshot",))] and better[0].snapshot is not None
    assert better[0].document["snapshot"]["score"] == pytest.approx(0.9)
    end = d.step(view(1, "removed", instance=None))
    assert end[0].snapshot is None  # the best frame was already written
    assert d.manager.snapshots is not None and d.manager.snapshots.file_count == 2


def test_snapshot_at_end_when_best_improved_slightly(tmp_path: Path) -> None:
    d = Driver(snapshot_config(tmp_path, crop=False))
    d.step(view(1, score=0.5), instances=one_instance())
    d.step(view(1, score=0.55), instances=one_instance())
    end = d.finish()
    assert end[0].snapshot is not None and end[0].document["snapshot"]["score"] == pytest.approx(0.55)
    assert end[0].document["snapshot"]["crop"] is None


def test_snapshot_drawing_and_transparent_crop() -> None:
    image = np.full((HEIGHT, WIDTH, 3), 200, np.uint8)
    inst = instances_with_mask((30, 20, 70, 80))
    source = SnapshotSource(image, (30.0, 20.0, 70.0, 80.0), 0.9, 0, CLASSES, inst.masks[0], (30, 20, 70, 80))
    png = cv2.imdecode(np.frombuffer(cutout_png(source, margin=5), np.uint8), cv2.IMREAD_UNCHANGED)
    assert png is not None and png.shape == (70, 50, 4)
    alpha = png[..., 3]
    assert alpha[0, 0] == 0 and alpha[35, 25] == 255  # the margin is transparent, the object opaque
    assert np.array_equal(alpha[5:65, 5:45] > 0, inst.masks[0])


def test_snapshot_directory_is_bounded_oldest_first(tmp_path: Path) -> None:
    config = SnapshotConfig(enabled=True, dir=str(tmp_path), max_files=3, crop=False)
    cam = tmp_path / "gate"
    cam.mkdir()
    for i, name in enumerate(["old-a.jpg", "old-b.jpg", ".x.jpg.123.tmp", "notes.txt"]):
        (cam / name).write_bytes(b"x" * 10)
        os.utime(cam / name, (1000 + i, 1000 + i))
    store = SnapshotStore(config, "gate")
    assert not (cam / ".x.jpg.123.tmp").exists() and (cam / "notes.txt").exists()  # only snapshots count
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    for i in range(3):
        store.write(f"ev{i}", SnapshotSource(image, (1.0, 1.0, 20.0, 20.0), 0.5, 0, CLASSES))
    names = sorted(p.name for p in cam.iterdir() if p.suffix == ".jpg")
    assert names == ["ev0.jpg", "ev1.jpg", "ev2.jpg"] and store.file_count == 3
    store.write("ev0", SnapshotSource(image, (1.0, 1.0, 20.0, 20.0), 0.6, 0, CLASSES))  # rewritten: newest
    store.write("ev3", SnapshotSource(image, (1.0, 1.0, 20.0, 20.0), 0.5, 0, CLASSES))
    assert sorted(p.name for p in cam.iterdir() if p.suffix == ".jpg") == ["ev0.jpg", "ev2.jpg", "ev3.jpg"]
    assert store.total_bytes == sum(p.stat().st_size for p in cam.iterdir() if p.suffix == ".jpg")
    with pytest.raises(ValueError, match="not safe"):
        store.write("../evil", SnapshotSource(image, (1.0, 1.0, 20.0, 20.0), 0.5, 0, CLASSES))


def test_snapshot_directory_bounded_by_bytes(tmp_path: Path) -> None:
    config = SnapshotConfig(enabled=True, dir=str(tmp_path), max_bytes=1024 * 1024, crop=False)
    cam = tmp_path / camera_dir_name("front door/../1")
    cam.mkdir()
    (cam / "big.jpg").write_bytes(b"x" * (1024 * 1024))
    os.utime(cam / "big.jpg", (1000, 1000))
    store = SnapshotStore(config, "front door/../1")
    assert store.directory == cam and cam.name == "front_door_.._1"
    store.write("ev", SnapshotSource(np.zeros((HEIGHT, WIDTH, 3), np.uint8), (1.0, 1.0, 9.0, 9.0), 0.5, 0, CLASSES))
    assert sorted(p.name for p in cam.iterdir()) == ["ev.jpg"]


def test_unwritable_snapshot_directory_refused_at_start(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SinkError, match="snapshot|directory"):
        EventManager(EventsConfig(snapshots=SnapshotConfig(enabled=True, dir=str(blocker))), "gate", CLASSES)


def test_failed_snapshot_write_keeps_events_going(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d = Driver(snapshot_config(tmp_path))
    store = d.manager.snapshots
    assert store is not None
    (store.directory / "gate-1-1.jpg" / "in-the-way").mkdir(parents=True)  # the rename cannot replace it
    new = d.step(view(1), instances=one_instance())
    assert new[0].event_id == "gate-1-1"
    assert new[0].snapshot is not None and new[0].document["snapshot"] is None
    assert "cannot write snapshot" in caplog.text
    assert not [p for p in store.directory.iterdir() if p.name.endswith(".tmp")]
    assert kinds(d.step(view(1, "removed", instance=None))) == [("end", ("end", "removed"))]


# -- the events sink --------------------------------------------------------------------------


def test_events_sink_writes_one_line_per_event(tmp_path: Path) -> None:
    assert "events" in sink_kinds()
    path = tmp_path / "out" / "events.jsonl"
    sink = create_sink(f"events:{path}")
    assert isinstance(sink, EventsSink)
    d = Driver()
    empty = TrackUpdate(0, 0.0, np.zeros((0,), np.int32), ())
    sink.write(frame_result(0, 0.0))  # no analytics: nothing
    written = 0
    for events in (d.step(view(1), view(2, centroid=(9, 9))), d.step(view(1), inside={1: {"door"}}), ()):
        result = FrameResult(**{**frame_result(1, 0.0).__dict__, "analytics": Analytics(empty, events=events)})
        sink.write(result)
        written += len(events)
    sink.write_events(d.finish())
    sink.close()
    sink.close()
    lines = path.read_text().splitlines()
    assert len(lines) == written + 2 == len(d.events) == sink.lines_written
    docs = [json.loads(line) for line in lines]
    for doc in docs:
        VALIDATOR.validate(doc)
    assert [doc["type"] for doc in docs] == ["new", "new", "update", "end", "end"]
    with pytest.raises(SinkError, match="closed"):
        sink.write_events(d.events)


def test_events_sink_appends_when_asked_and_refuses_a_second_writer(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"old": 1}\n')
    sink = create_sink(f"events:{path}", SinkOptions(append=True))
    with pytest.raises(SinkError, match="another"):
        create_sink(f"events:{path}")
    sink.close()
    assert path.read_text() == '{"old": 1}\n'
    create_sink(f"events:{path}").close()
    assert path.read_text() == ""
