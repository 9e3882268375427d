"""File sinks shared by several cameras: one JSONL file told apart by ``camera``, COCO image ids
that do not collide, one video (or image folder) per camera, so no camera's frames corrupt
another's file."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jsonschema
import pytest
from pycocotools.coco import COCO
from test_sinks import IMAGE_SIZE, make_instances, make_result
from test_sinks import count_frames as frames_of

from edgeseg.sinks import CocoResultsSink, ImageDirSink, JsonlSink, SinkOptions, VideoSink, create_sink
from edgeseg.sinks.coco import CAMERA_ID_STRIDE
from edgeseg.sinks.serialize import load_schema
from edgeseg.sinks.video import camera_path
from edgeseg.structures import FrameResult

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

V3 = jsonschema.Draft202012Validator(load_schema(3))


def result(camera: str, frame_id: int = 0, name: str = "", size: tuple[int, int] = IMAGE_SIZE,
           masks: bool = True) -> FrameResult:
    base = make_result(frame_id=frame_id, name=name, size=size,
                       instances=make_instances(with_masks=masks, size=size))
    return dataclasses.replace(base, camera=camera)


def test_camera_paths() -> None:
    assert camera_path(Path("out/clip.mp4"), "door") == Path("out/clip-door.mp4")
    assert camera_path(Path("out/frames"), "door", directory=True) == Path("out/frames-door")
    assert camera_path(Path("clip.mp4"), "") == Path("clip-camera.mp4")


def test_jsonl_holds_every_camera_s_results_told_apart_by_camera(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    with JsonlSink(path) as sink:
        for i in range(3):
            sink.write(result("door", i))
            sink.write(result("yard", i))
    docs = [json.loads(line) for line in path.read_text().splitlines()]
    for doc in docs:
        V3.validate(doc)
    assert [(d["camera"], d["frame_id"]) for d in docs] == [
        (c, i) for i in range(3) for c in ("door", "yard")]


def test_coco_image_ids_stay_unique_across_cameras_and_carry_the_camera(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    sink = CocoResultsSink(out)
    for i in range(2):
        sink.write(result("door", i, masks=False))
        sink.write(result("yard", i, masks=False))
        sink.write(result("gate", i, name=f"{i + 139:012d}.jpg", masks=False))
    sink.close()
    rows = json.loads(out.read_text())
    ids = {(r["camera"], r["image_id"]) for r in rows}
    assert ids == {("door", 0), ("door", 1), ("yard", CAMERA_ID_STRIDE), ("yard", CAMERA_ID_STRIDE + 1),
                   ("gate", 2 * CAMERA_ID_STRIDE + 139), ("gate", 2 * CAMERA_ID_STRIDE + 140)}
    assert len({image_id for _, image_id in ids}) == 6  # no two cameras share an image id


def test_coco_of_one_camera_is_as_before_and_loads(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    sink = CocoResultsSink(out)
    sink.write(result("door", 0, name="000000000139.jpg"))
    sink.close()
    rows = json.loads(out.read_text())
    assert {r["image_id"] for r in rows} == {139} and all("camera" not in r for r in rows)


def test_coco_with_a_dataset_s_image_ids_keeps_them_for_every_camera(tmp_path: Path) -> None:
    height, width = IMAGE_SIZE
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps({
        "images": [{"id": 7, "file_name": "a.jpg", "height": height, "width": width}],
        "annotations": [], "categories": [{"id": i, "name": n} for i, n in enumerate(("person", "car", "dog"))]}))
    out = tmp_path / "r.json"
    sink = CocoResultsSink(out, image_ids={"a.jpg": 7})
    sink.write(result("door", 0, name="a.jpg"))
    sink.write(result("yard", 5, name="a.jpg"))
    sink.close()
    rows = json.loads(out.read_text())
    assert {(r["camera"], r["image_id"]) for r in rows} == {("door", 7), ("yard", 7)}
    loaded = COCO(str(gt_path)).loadRes(str(out))  # the extra key does not trouble COCO's tools
    assert len(loaded.getAnnIds()) == len(rows)


def test_video_sink_writes_one_readable_video_per_camera(tmp_path: Path) -> None:
    path = tmp_path / "out.mp4"
    sink = create_sink(f"video:{path}", SinkOptions(fps=10))
    assert isinstance(sink, VideoSink)
    with sink:
        for i in range(4):
            sink.write(result("door", i))
            sink.write(result("yard", i, size=(96, 128)))  # another size: a video of its own size
        sink.write(result("door", 4, size=(96, 128)))  # a size change within a camera: resized
    assert sink.paths == {"door": path, "yard": tmp_path / "out-yard.mp4"}
    assert frames_of(path) == (5, IMAGE_SIZE)
    assert frames_of(tmp_path / "out-yard.mp4") == (4, (96, 128))
    assert sink.frames_written == 9 and sink.complete


def test_a_service_video_sink_starts_each_camera_s_file_beside_an_existing_one(tmp_path: Path) -> None:
    spec = f"video:{tmp_path / 'clip.mp4'}"
    for _ in range(2):
        with create_sink(spec, SinkOptions(append=True)) as sink:
            sink.write(result("door"))
            sink.write(result("yard"))
    made = sorted(p.name for p in tmp_path.glob("clip*.mp4"))
    assert len(made) == 4, made
    assert sum(name.endswith("-yard.mp4") for name in made) == 2  # clip-yard.mp4, clip.<time>-yard.mp4
    for name in made:
        assert frames_of(tmp_path / name)[0] == 1


def test_image_sink_writes_each_camera_into_its_own_folder(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    sink = create_sink(f"images:{folder}")
    assert isinstance(sink, ImageDirSink)
    with sink:
        for i in range(2):
            sink.write(result("door", i))
            sink.write(result("yard", i))
    assert sorted(p.name for p in folder.iterdir()) == ["frame_000000.jpg", "frame_000001.jpg"]
    assert sorted(p.name for p in (tmp_path / "frames-yard").iterdir()) == ["frame_000000.jpg", "frame_000001.jpg"]
    assert sink.directories == {"door": folder, "yard": tmp_path / "frames-yard"}
