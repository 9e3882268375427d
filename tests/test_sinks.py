"""Sinks: the frame-result schema, JSONL, COCO results, annotated video/images, the registry."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import pytest
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from edgeseg.errors import SinkError
from edgeseg.sinks import (
    CocoResultsSink,
    ImageDirSink,
    JsonlSink,
    SinkOptions,
    VideoSink,
    create_sink,
    register_sink,
    sink_kinds,
    sink_usage,
)
from edgeseg.sinks.annotate import annotate, class_color
from edgeseg.sinks.base import Sink
from edgeseg.sinks.images import annotated_file_name
from edgeseg.sinks.serialize import frame_result_to_dict, load_schema
from edgeseg.structures import Frame, FrameResult, Instances

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

IMAGE_SIZE = (48, 64)  # (height, width)
CLASS_NAMES = ("person", "car", "dog")
VALIDATOR = jsonschema.Draft202012Validator(load_schema())


def make_instances(with_masks: bool = True, size: tuple[int, int] = IMAGE_SIZE) -> Instances:
    """Three instances: a square person, a disc car (touching the image edge), a small dog."""
    height, width = size
    yy, xx = np.mgrid[:20, :20]
    disc = (xx - 10) ** 2 + (yy - 10) ** 2 < 81
    masks = (
        np.ones((10, 12), bool),
        disc,
        np.pad(np.ones((4, 4), bool), 1),
    )
    mask_boxes = np.array(
        [[4, 5, 16, 15], [width - 20, height - 20, width, height], [30, 2, 36, 8]], np.int32
    )
    return Instances(
        image_size=size,
        boxes=np.array(
            [[4.04, 5.06, 16.0, 15.0], [width - 19.5, height - 19.5, width, height], [31.0, 3.0, 35.0, 7.0]],
            np.float32,
        ),
        scores=np.array([0.912345, 0.5, 0.333333], np.float32),
        class_ids=np.array([0, 1, 2], np.int32),
        class_names=CLASS_NAMES,
        masks=masks if with_masks else (),
        mask_boxes=mask_boxes if with_masks else np.zeros((0, 4), np.int32),
    )


def make_result(
    frame_id: int = 0,
    name: str = "",
    instances: Instances | None = None,
    size: tuple[int, int] = IMAGE_SIZE,
) -> FrameResult:
    image = np.full((*size, 3), 40 + frame_id * 10 % 200, np.uint8)
    return FrameResult(
        frame=Frame(
            image=image, frame_id=frame_id, source="file://clip.mp4", timestamp=1.7e9 + frame_id, name=name
        ),
        instances=make_instances(size=size) if instances is None else instances,
        model="yolov8n-seg",
        resolution=(320, 320),
        latency_ms={"preprocess": 1.23456, "infer": 10.0},
    )


# ---------------------------------------------------------------------------- schema / serialize


def test_schema_is_valid_draft_2020_12() -> None:
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"].endswith("2020-12/schema")
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize(
    "mask_format,instances,expected_mask_format",
    [
        ("rle", make_instances(), "rle"),
        ("polygon", make_instances(), "polygon"),
        ("none", make_instances(), None),
        ("rle", make_instances(with_masks=False), None),
        ("rle", Instances.empty(IMAGE_SIZE, CLASS_NAMES), None),
    ],
    ids=["rle", "polygon", "none", "no masks", "empty frame"],
)
def test_serialized_result_validates(mask_format, instances, expected_mask_format) -> None:
    payload = frame_result_to_dict(make_result(instances=instances), mask_format)
    VALIDATOR.validate(payload)
    assert json.loads(json.dumps(payload)) == payload  # plain JSON types only
    assert len(payload["instances"]) == len(instances)
    for item in payload["instances"]:
        mask = item["mask"]
        assert (mask["format"] if mask else None) == expected_mask_format


def test_serialized_fields_and_rounding() -> None:
    payload = frame_result_to_dict(make_result(frame_id=7, name="a.jpg"), "rle")
    assert payload["schema"] == "edgeseg/frame-result" and payload["version"] == 3
    assert payload["camera"] == "" and all("track_id" not in i for i in payload["instances"])
    assert (payload["frame_id"], payload["name"], payload["model"]) == (7, "a.jpg", "yolov8n-seg")
    assert payload["resolution"] == [320, 320] and payload["image_size"] == list(IMAGE_SIZE)
    assert payload["latency_ms"] == {"preprocess": 1.235, "infer": 10.0}
    first = payload["instances"][0]
    assert first["box"] == [4.0, 5.1, 16.0, 15.0]
    assert first["score"] == 0.9123
    assert first["area"] == 120
    assert (first["class_id"], first["class_name"]) == (0, "person")


def test_serialized_rle_decodes_to_the_instance_mask() -> None:
    instances = make_instances()
    payload = frame_result_to_dict(make_result(instances=instances), "rle")
    for i, item in enumerate(payload["instances"]):
        rle = {"size": item["mask"]["size"], "counts": item["mask"]["counts"].encode()}
        np.testing.assert_array_equal(coco_mask.decode(rle).astype(bool), instances.full_mask(i))
        assert item["area"] == int(instances.full_mask(i).sum())


def test_serialize_is_pure() -> None:
    result = make_result()
    assert frame_result_to_dict(result, "polygon") == frame_result_to_dict(result, "polygon")


def _with(payload: dict, path: tuple, value: object) -> dict:
    out = copy.deepcopy(payload)
    target = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return out


BASE_PAYLOAD = frame_result_to_dict(make_result(), "rle")
SHORT_POLYGON = {"format": "polygon", "polygons": [[1, 2, 3, 4]]}


@pytest.mark.parametrize(
    "payload,raises",
    [
        (BASE_PAYLOAD, False),
        (_with(BASE_PAYLOAD, ("extra",), 1), True),
        (_with(BASE_PAYLOAD, ("instances", 0, "extra"), 1), True),
        (_with(BASE_PAYLOAD, ("instances", 0, "mask", "extra"), 1), True),
        (_with(BASE_PAYLOAD, ("version",), 2), True),
        (_with(BASE_PAYLOAD, ("frame_id",), -1), True),
        (_with(BASE_PAYLOAD, ("instances", 0, "score"), 1.5), True),
        (_with(BASE_PAYLOAD, ("instances", 0, "box"), [1, 2, 3]), True),
        (_with(BASE_PAYLOAD, ("instances", 0, "mask"), SHORT_POLYGON), True),
        (_with(BASE_PAYLOAD, ("latency_ms", "infer"), -1.0), True),
        ({k: v for k, v in BASE_PAYLOAD.items() if k != "model"}, True),
        ({k: v for k, v in BASE_PAYLOAD.items() if k != "camera"}, True),
        (_with(BASE_PAYLOAD, ("camera",), "door/1"), True),
        (_with(BASE_PAYLOAD, ("camera",), "door-1"), False),
        (_with(BASE_PAYLOAD, ("instances", 0, "track_id"), 4), True),
    ],
    ids=[
        "valid", "extra top-level key", "extra instance key", "extra mask key", "wrong version",
        "negative frame id", "score above 1", "short box", "polygon under 3 points",
        "negative latency", "missing model", "missing camera", "camera not topic-safe", "camera named",
        "track id on some instances only",
    ],
)  # fmt: skip
def test_schema_rejects_malformed_payloads(payload: dict, raises: bool) -> None:
    assert bool(list(VALIDATOR.iter_errors(payload))) is raises


# ---------------------------------------------------------------------------- jsonl


def test_jsonl_lines_parse_and_validate(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "results.jsonl"
    with JsonlSink(path, mask_format="polygon") as sink:
        for frame_id in range(3):
            sink.write(make_result(frame_id=frame_id))
        # flushed per line: readable before close
        assert len(path.read_text().splitlines()) == 3
    lines = path.read_text().splitlines()
    payloads = [json.loads(line) for line in lines]
    for payload in payloads:
        VALIDATOR.validate(payload)
    assert [p["frame_id"] for p in payloads] == [0, 1, 2]
    assert payloads[0]["instances"][0]["mask"]["format"] == "polygon"


def test_jsonl_write_after_close_raises(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "r.jsonl")
    sink.close()
    sink.close()  # idempotent
    with pytest.raises(SinkError, match="closed"):
        sink.write(make_result())


# ---------------------------------------------------------------------------- coco


def _coco_ground_truth(path: Path, instances: Instances, image_id: int, category_ids: dict[str, int]) -> COCO:
    """A one-image COCO ground truth whose annotations are exactly ``instances``."""
    height, width = instances.image_size
    annotations = []
    for i, name in enumerate(instances.names):
        rle = coco_mask.encode(np.asfortranarray(instances.full_mask(i).astype(np.uint8)))
        annotations.append(
            {
                "id": i + 1,
                "image_id": image_id,
                "category_id": category_ids[name],
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                "area": float(coco_mask.area(rle)),
                "bbox": coco_mask.toBbox(rle).tolist(),
                "iscrowd": 0,
            }
        )
    gt = {
        "images": [{"id": image_id, "file_name": f"{image_id:012d}.jpg", "height": height, "width": width}],
        "annotations": annotations,
        "categories": [{"id": cid, "name": name} for name, cid in category_ids.items()],
    }
    path.write_text(json.dumps(gt))
    return COCO(str(path))


def test_coco_results_load_and_score_perfectly(tmp_path: Path) -> None:
    category_ids = {"person": 1, "car": 3, "dog": 18}
    instances = make_instances()
    gt = _coco_ground_truth(tmp_path / "gt.json", instances, 139, category_ids)
    out = tmp_path / "results.json"
    sink = CocoResultsSink(out, category_ids=category_ids)
    sink.write(make_result(name="000000000139.jpg", instances=instances))
    assert not out.exists()  # written at close only
    sink.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gt.json", "results.json"]  # no temp left
    detections = gt.loadRes(str(out))
    assert len(detections.getAnnIds()) == 3
    assert {a["category_id"] for a in detections.loadAnns(detections.getAnnIds())} == {1, 3, 18}
    evaluator = COCOeval(gt, detections, "segm")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


def test_coco_skips_unmapped_classes_and_frames(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    sink = CocoResultsSink(out, image_ids={"b.jpg": 5}, category_ids={"person": 1})
    sink.write(make_result(name="imgs/b.jpg"))  # matched by base name
    sink.write(make_result(name="c.jpg"))  # not in image_ids: skipped
    sink.close()
    results = json.loads(out.read_text())
    assert [(r["image_id"], r["category_id"]) for r in results] == [(5, 1)]
    assert (sink.skipped_instances, sink.skipped_frames) == (2, 1)
    assert results[0]["bbox"] == pytest.approx([4.04, 5.06, 11.96, 9.94])


@pytest.mark.parametrize(
    "name,frame_id,expected",
    [("000000000139.jpg", 3, 139), ("dir/42.png", 3, 42), ("street.jpg", 3, 3), ("", 9, 9)],
)
def test_coco_default_image_ids(tmp_path: Path, name: str, frame_id: int, expected: int) -> None:
    sink = CocoResultsSink(tmp_path / "r.json")
    sink.write(make_result(frame_id=frame_id, name=name, instances=make_instances(with_masks=False)))
    sink.close()
    results = json.loads((tmp_path / "r.json").read_text())
    assert {r["image_id"] for r in results} == {expected}
    assert {r["category_id"] for r in results} == {0, 1, 2}
    assert all("segmentation" not in r for r in results)


# ---------------------------------------------------------------------------- video / images


def count_frames(path: Path) -> tuple[int, tuple[int, int]]:
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened()
    count, shape = 0, (0, 0)
    while True:
        ok, image = capture.read()
        if not ok:
            break
        count, shape = count + 1, image.shape[:2]
    capture.release()
    return count, shape


@pytest.mark.parametrize("suffix", [".mp4", ".avi", ".mkv"])
def test_video_sink_writes_all_frames(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / "out" / f"annotated{suffix}"
    sink = create_sink(f"video:{path}", SinkOptions(fps=10))
    assert isinstance(sink, VideoSink)
    with sink:
        for frame_id in range(4):
            sink.write(make_result(frame_id=frame_id))
        sink.write(make_result(frame_id=4, size=(96, 128)))  # another size: resized
    assert count_frames(path) == (5, IMAGE_SIZE)


@pytest.mark.parametrize(
    "name,frame_id,expected",
    [("000139.png", 0, "000139.jpg"), ("dir/cat.jpeg", 1, "cat.jpg"), ("", 7, "frame_000007.jpg")],
)
def test_annotated_file_names(name: str, frame_id: int, expected: str) -> None:
    frame = Frame(
        image=np.zeros((2, 2, 3), np.uint8), frame_id=frame_id, source="s", timestamp=0.0, name=name
    )
    assert annotated_file_name(frame) == expected


def test_image_dir_sink_writes_named_jpegs(tmp_path: Path) -> None:
    directory = tmp_path / "annotated"
    with create_sink(f"images:{directory}") as sink:
        sink.write(make_result(frame_id=0, name="a.png"))
        sink.write(make_result(frame_id=1))
    assert sorted(p.name for p in directory.iterdir()) == ["a.jpg", "frame_000001.jpg"]
    image = cv2.imread(str(directory / "a.jpg"))
    assert image is not None and image.shape == (*IMAGE_SIZE, 3)


# ---------------------------------------------------------------------------- annotate


def test_annotate_tints_masks_and_leaves_input_alone() -> None:
    result = make_result()
    original = result.frame.image.copy()
    out = annotate(result.frame.image, result.instances, alpha=0.5)
    np.testing.assert_array_equal(result.frame.image, original)
    assert out.shape == original.shape and out.dtype == np.uint8
    color = np.array(class_color(1), np.float32)
    car_centre = (IMAGE_SIZE[0] - 10, IMAGE_SIZE[1] - 10)  # inside the disc, away from its box lines
    expected = np.round(original[car_centre] * 0.5 + color * 0.5)
    np.testing.assert_allclose(out[car_centre], expected, atol=1)
    assert np.array_equal(out[30, 10], original[30, 10])  # far from every instance


def test_annotate_clips_regions_outside_the_image() -> None:
    instances = Instances(
        image_size=(10, 10),
        boxes=np.array([[5, 5, 12, 12]], np.float32),
        scores=np.array([0.9], np.float32),
        class_ids=np.array([0], np.int32),
        class_names=("a",),
        masks=(np.ones((7, 7), bool),),
        mask_boxes=np.array([[5, 5, 12, 12]], np.int32),
    )
    out = annotate(np.zeros((10, 10, 3), np.uint8), instances)
    assert out[9, 9].any()


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_annotate_rejects_bad_alpha(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        annotate(np.zeros((4, 4, 3), np.uint8), Instances.empty((4, 4), ("a",)), alpha=alpha)


# ---------------------------------------------------------------------------- registry


@pytest.mark.parametrize(
    "spec,expected_type,raises",
    [
        ("jsonl:{tmp}/r.jsonl", JsonlSink, None),
        ("coco:{tmp}/r.json", CocoResultsSink, None),
        ("video:{tmp}/v.mp4", VideoSink, None),
        ("video:{tmp}/V.AVI", VideoSink, None),
        ("video:{tmp}/frames", ImageDirSink, None),
        ("images:{tmp}/frames", ImageDirSink, None),
        ("ftp:{tmp}/x", None, "unknown kind 'ftp'; valid kinds: coco, events, images, jsonl, mqtt, video"),
        ("results.jsonl", None, "must be KIND:PATH with KIND one of coco, events, images, jsonl, mqtt, video"),
        ("jsonl:", None, "must be KIND:PATH"),
        ("", None, "must be KIND:PATH"),
        ("jsonl:{tmp}/afile/r.jsonl", None, "afile"),  # a directory that is a file
        ("coco:{tmp}/afile/r.json", None, "afile"),
        ("images:{tmp}/afile", None, "afile"),
        ("jsonl:{tmp}", None, "is a directory"),
    ],
)
def test_create_sink(tmp_path: Path, spec: str, expected_type: type | None, raises: str | None) -> None:
    (tmp_path / "afile").write_text("not a directory")
    spec = spec.replace("{tmp}", str(tmp_path))
    if raises:
        with pytest.raises(SinkError, match=raises.replace("(", r"\(")) as info:
            create_sink(spec)
        assert "\n" not in str(info.value)
    else:
        sink = create_sink(spec)
        sink.close()
        assert type(sink) is expected_type


def test_create_sink_passes_options(tmp_path: Path) -> None:
    sink = create_sink(f"jsonl:{tmp_path}/r.jsonl", SinkOptions(mask_format="none"))
    assert isinstance(sink, JsonlSink) and sink.mask_format == "none"
    sink.close()


def test_register_sink_adds_a_kind(tmp_path: Path) -> None:
    class Collect(Sink):
        def __init__(self, path: str) -> None:
            self.path = path

        def write(self, result: FrameResult) -> None:
            raise AssertionError("not called")

    register_sink("collect-test", lambda path, options: Collect(path), "collect-test:X  test only")
    try:
        sink = create_sink("collect-test:abc")
        assert isinstance(sink, Collect) and sink.path == "abc"
        assert "collect-test" in sink_kinds()
        assert "collect-test:X  test only" in sink_usage()
    finally:
        from edgeseg.sinks import _KINDS

        del _KINDS["collect-test"]
    with pytest.raises(ValueError, match="kind"):
        register_sink("bad:kind", lambda path, options: Collect(path), "")
