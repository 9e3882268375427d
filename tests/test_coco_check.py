"""COCO dataset checks before training: refusals are one line naming the file and id, good data passes."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import REALDATA, need_realdata
from pycocotools import mask as coco_mask

from edgeseg.errors import ExportError
from export.data.coco_check import check_coco, decode_rle_string

W, H = 40, 30
Data = dict[str, Any]
Mutation = Callable[[Data, Path], None]


def rle(mask: np.ndarray[Any, Any]) -> dict[str, Any]:
    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def valid_data() -> Data:
    blob = np.zeros((H, W), bool)
    blob[5:20, 10:30] = True
    crowd = [int(v) for v in (W * H - 100, 100)]
    return {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": W, "height": H},
            {"id": 2, "file_name": "b.png", "width": W, "height": H},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 20, 1, 20, 20, 1, 20]],
             "area": 361.0, "bbox": [1, 1, 19, 19], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "segmentation": rle(blob),
             "area": 300, "bbox": [10, 5, 20, 15], "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 1, "segmentation": {"size": [H, W], "counts": crowd},
             "area": 100, "bbox": [37, 20, 3, 10], "iscrowd": 1},
        ],
        "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "ring"}],
    }


def write(folder: Path, data: Data | str) -> Path:
    path = folder / "instances.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.jpg"), np.full((H, W, 3), 128, np.uint8))
    cv2.imwrite(str(images / "b.png"), np.full((H, W), 50, np.uint8))
    write(tmp_path, valid_data())
    return tmp_path


def test_a_valid_dataset_passes_with_its_summary(dataset: Path) -> None:
    s = check_coco(dataset / "instances.json", dataset / "images")
    assert (s.images, s.annotations, s.polygons, s.rles, s.crowd, s.empty_images) == (2, 3, 1, 2, 1, 0)
    assert s.categories == {1: "circle", 2: "ring"} and s.per_category == {1: 2, 2: 1}
    assert "2 images, 3 annotations" in s.line() and "\n" not in s.line()


def edit(fn: Callable[[Data], None]) -> Mutation:
    """A mutation of the json only."""

    def mutate(data: Data, folder: Path) -> None:
        fn(data)

    return mutate


def ann(index: int, **fields: Any) -> Mutation:
    return edit(lambda d: d["annotations"][index].update(fields))


def poly(coords: list[Any]) -> Mutation:
    return ann(0, segmentation=[coords])


def drop_key(key: str) -> Mutation:
    return edit(lambda d: d.pop(key))


def raw_json(text: str) -> Mutation:
    def mutate(data: Data, folder: Path) -> None:
        data.clear()
        data["__raw__"] = text

    return mutate


def damage_file(name: str, content: bytes | None) -> Mutation:
    def mutate(data: Data, folder: Path) -> None:
        if content is None:
            (folder / "images" / name).unlink()
        else:
            (folder / "images" / name).write_bytes(content)

    return mutate


def image_field(index: int, **fields: Any) -> Mutation:
    return edit(lambda d: d["images"][index].update(fields))


REFUSALS: list[tuple[Any, ...]] = [
    # (case, mutation, expected text(s) in the one-line message)
    ("missing image file", damage_file("a.jpg", None), "image 1 'a.jpg': file missing"),
    ("undecodable image", damage_file("b.png", b"not an image at all"),
     "image 2 'b.png': ", "images/b.png is not a decodable image"),
    ("empty image file", damage_file("a.jpg", b""), "is not a decodable image"),
    ("size mismatch", damage_file("a.jpg", cv2.imencode(".jpg", np.zeros((30, 50, 3), np.uint8))[1].tobytes()),
     "image 1 'a.jpg': ", "is 50x30, the json says 40x30"),
    ("odd-length polygon", poly([1, 1, 20, 1, 20, 20, 1]), "annotation 1: polygon 0 has 7 coordinates"),
    ("polygon with 2 points", poly([1, 1, 20, 20]), "annotation 1: polygon 0 has 2 points, expected at least 3"),
    ("NaN coordinate", poly([1, 1, float("nan"), 1, 20, 20]), "annotation 1: polygon 0: coordinate 2 is nan"),
    ("string coordinate", poly([1, 1, "2", 1, 20, 20]), "coordinate 2 is '2', expected a finite number"),
    ("polygon outside the image", poly([1, 1, 60, 1, 20, 20]), "annotation 1: polygon 0 spans x 1..60"),
    ("polygon not a list", ann(0, segmentation=[{"x": 1}]), "polygon 0 must be a flat list"),
    ("no polygon", ann(0, segmentation=[]), "annotation 1: 'segmentation' is an empty list"),
    ("unknown category id", ann(0, category_id=99), "annotation 1: category_id 99 is not a known category"),
    ("unknown image id", ann(2, image_id=7), "annotation 3: image_id 7 is not an image"),
    ("duplicate annotation id", ann(1, id=1), "annotation id 1 appears 2 times"),
    ("duplicate image id", image_field(1, id=1), "image id 1 appears 2 times"),
    ("iscrowd not 0/1", ann(0, iscrowd=2), "annotation 1: 'iscrowd' must be 0 or 1"),
    ("negative bbox size", ann(0, bbox=[1, 1, -3, 4]), "annotation 1: 'bbox' must be"),
    ("NaN area", ann(0, area=float("nan")), "annotation 1: 'area' must be a finite number"),
    ("annotation without bbox", edit(lambda d: d["annotations"][1].pop("bbox")), "annotation 2: missing key 'bbox'"),
    ("RLE of another size", ann(1, segmentation={"size": [W, H], "counts": "PP"}), "annotation 2: RLE size [40, 30]"),
    ("RLE counts do not cover the image", ann(2, segmentation={"size": [H, W], "counts": [5, 10]}),
     "annotation 3: RLE runs cover 15 pixels, expected 30 x 40 = 1200"),
    ("RLE negative count", ann(2, segmentation={"size": [H, W], "counts": [1300, -100]}), "integers >= 0"),
    ("RLE string outside the code", ann(1, segmentation={"size": [H, W], "counts": "0<~~"}),
     "annotation 2: RLE counts string is corrupt: character '~'"),
    ("RLE string cut mid-count", ann(1, segmentation={"size": [H, W], "counts": "0<P"}), "ends in the middle"),
    ("RLE without counts", ann(1, segmentation={"size": [H, W]}), "needs 'size' and 'counts'"),
    ("segmentation of a wrong type", ann(0, segmentation="x"), "'segmentation' must be a list of polygons or"),
    ("unknown width type", image_field(0, width="40"), "image 1 'a.jpg': 'width' must be a positive integer"),
    ("category without name", edit(lambda d: d["categories"][0].pop("name")), "category 1: missing key 'name'"),
    ("json not JSON", raw_json("{'images': [}"), "not valid JSON: "),
    ("json not an object", raw_json("[1, 2]"), "expected a JSON object"),
    ("missing 'annotations' key", drop_key("annotations"), "missing key 'annotations'"),
    ("'images' not a list", edit(lambda d: d.update(images={})), "'images' must be a list"),
]


@pytest.mark.parametrize(("mutate", "expected"), [(r[1], r[2:]) for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_refusals_are_one_line_naming_the_file_and_id(dataset: Path, mutate: Mutation,
                                                      expected: tuple[str, ...]) -> None:
    data = copy.deepcopy(valid_data())
    mutate(data, dataset)
    path = write(dataset, data.get("__raw__", data))
    with pytest.raises(ExportError) as info:
        check_coco(path, dataset / "images")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    for text in expected:
        assert text in message


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="instances.json: annotations file not found"):
        check_coco(tmp_path / "instances.json", tmp_path)
    write(tmp_path, valid_data())
    with pytest.raises(ExportError, match="image folder .*nowhere not found"):
        check_coco(tmp_path / "instances.json", tmp_path / "nowhere")


def test_annotation_errors_come_before_any_image_is_opened(dataset: Path) -> None:
    """A broken polygon is reported even when the images are broken too: structure is checked first."""
    (dataset / "images" / "a.jpg").unlink()
    data = valid_data()
    data["annotations"][0]["segmentation"] = [[1, 1, 2]]
    with pytest.raises(ExportError, match="polygon 0 has 3 coordinates"):
        check_coco(write(dataset, data), dataset / "images")


def test_without_decoding_only_existence_is_checked(dataset: Path) -> None:
    (dataset / "images" / "b.png").write_bytes(b"garbage")
    assert check_coco(dataset / "instances.json", dataset / "images", decode=False).decoded is False
    with pytest.raises(ExportError, match="not a decodable image"):
        check_coco(dataset / "instances.json", dataset / "images")


def test_polygon_tolerance_is_a_parameter(dataset: Path) -> None:
    data = valid_data()
    data["annotations"][0]["segmentation"] = [[-0.5, 0, W + 0.9, 0, 10, H]]
    path = write(dataset, data)
    check_coco(path, dataset / "images")
    with pytest.raises(ExportError, match="tolerance 0 px"):
        check_coco(path, dataset / "images", tolerance=0)


def masks() -> list[np.ndarray[Any, Any]]:
    rng = np.random.default_rng(0)
    full, first, last = np.ones((7, 5), bool), np.zeros((7, 5), bool), np.zeros((7, 5), bool)
    first[0, 0] = True
    last[-1, -1] = True
    big = np.zeros((300, 400), bool)
    big[20:280, 30:370] = True  # runs longer than 2^10: several characters per count
    return [np.zeros((7, 5), bool), full, first, last, big, *(rng.random((23, 17)) < p for p in (0.1, 0.5, 0.9))]


@pytest.mark.parametrize("mask", masks(), ids=["empty", "full", "first", "last", "big", "p.1", "p.5", "p.9"])
def test_decode_rle_string_matches_pycocotools(mask: np.ndarray[Any, Any]) -> None:
    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    counts = decode_rle_string(encoded["counts"].decode("ascii"))
    assert counts.sum() == mask.size and (counts >= 0).all()
    h, w = mask.shape
    again = coco_mask.frPyObjects({"size": [h, w], "counts": counts.tolist()}, h, w)
    assert again["counts"] == encoded["counts"]


REAL_SETS = [
    ("coco_val2017_subset", "instances_val2017_subset.json", 158, 1424),
    ("coco_train2017_subset", "instances_train2017_subset.json", 80, 739),
]


@pytest.mark.realdata
@pytest.mark.parametrize(("folder", "name", "images", "annotations"), REAL_SETS, ids=[r[0] for r in REAL_SETS])
def test_real_coco_subsets_pass(folder: str, name: str, images: int, annotations: int) -> None:
    path = need_realdata(REALDATA / folder / name)
    s = check_coco(path, need_realdata(REALDATA / folder / "images"))
    assert (s.images, s.annotations, len(s.categories)) == (images, annotations, 80)
    assert s.crowd == s.rles > 0 and s.polygons == annotations - s.rles
