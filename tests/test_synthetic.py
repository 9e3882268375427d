"""The synthetic shapes dataset and demo video: determinism, COCO consistency, occlusion, balance."""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from edgeseg.errors import ExportError
from export.data.cli import add_synth_parser
from export.data.coco_check import check_coco
from export.data.synthetic import (
    CLASSES,
    MIN_VISIBLE_FRACTION,
    MIN_VISIBLE_PIXELS,
    Distractor,
    Shape,
    compose,
    gaussian_noise,
    generate_image,
    rasterize,
    write_split,
    write_video,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools

SIZE = 96  # small images keep the tests fast; the generator is the same at any size
H = W = 200
BLACK = np.zeros((H, W, 3), np.uint8)
RED = (0, 0, 255)
GREEN = (0, 255, 0)


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- determinism ----------------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        write_split(tmp_path / name, "train", 4, SIZE, seed)
        write_split(tmp_path / name, "val", 2, SIZE, seed)
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert set(a) == {"instances_train.json", "instances_val.json", *(f"train/00000{i}.jpg" for i in range(1, 5)),
                      "val/000001.jpg", "val/000002.jpg"}
    assert a == b
    assert set(a) == set(c)
    assert all(a[k] != c[k] for k in a), "another seed must change every file"
    assert a["train/000001.jpg"] != a["val/000001.jpg"], "train and val draw from different streams"


def test_an_image_does_not_depend_on_how_many_are_generated(tmp_path: Path) -> None:
    write_split(tmp_path / "few", "train", 2, SIZE, 7)
    write_split(tmp_path / "more", "train", 5, SIZE, 7)
    assert (tmp_path / "few/train/000002.jpg").read_bytes() == (tmp_path / "more/train/000002.jpg").read_bytes()


# -- COCO consistency -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    write_split(out, "train", 30, 128, 11)
    return out


def test_json_loads_with_pycocotools_and_area_bbox_match_the_masks(dataset: Path) -> None:
    coco = COCO(str(dataset / "instances_train.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) >= 30
    assert sorted(a["id"] for a in anns) == list(range(1, len(anns) + 1))
    for ann in anns:
        mask = coco.annToMask(ann).astype(bool)
        assert mask.shape == (128, 128)
        assert ann["iscrowd"] == 0 and isinstance(ann["segmentation"], dict)
        assert int(mask.sum()) == ann["area"] > 0
        x, y, w, h = (int(v) for v in ann["bbox"])
        inside = np.zeros_like(mask)
        inside[y:y + h, x:x + w] = True
        assert not (mask & ~inside).any(), f"annotation {ann['id']} leaves its bbox"
        ys, xs = np.nonzero(mask)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h), "bbox is tight"
    for img in coco.loadImgs(coco.getImgIds()):
        assert img["file_name"] == f"{img['id']:06d}.jpg"
        assert cv2.imread(str(dataset / "train" / img["file_name"])).shape == (128, 128, 3)


def test_the_generated_dataset_passes_coco_check(dataset: Path) -> None:
    summary = check_coco(dataset / "instances_train.json", dataset / "train")
    assert summary.images == 30 and summary.rles == summary.annotations and summary.polygons == 0


def test_info_counts_the_dropped_instances(dataset: Path) -> None:
    data = json.loads((dataset / "instances_train.json").read_text())
    assert data["info"]["dropped_occluded"] == sum(generate_image(11, i, 128).dropped for i in range(30))


# -- occlusion: shapes placed explicitly ----------------------------------------------------------


def square(x: float, y: float, r: float = 30, colour: tuple[int, int, int] = RED) -> Shape:
    return Shape("square", (x, y), r, colour=colour)


def circle(x: float, y: float, r: float = 40, colour: tuple[int, int, int] = GREEN) -> Shape:
    return Shape("circle", (x, y), r, colour=colour)


@pytest.mark.parametrize(
    ("shapes", "kept", "dropped"),
    [
        ([square(100, 100), circle(140, 100)], ["square", "circle"], 0),  # partly covered: kept
        ([square(100, 100, 20), circle(100, 100, 60)], ["circle"], 1),  # wholly covered: dropped
        ([circle(100, 100, 60), square(100, 100, 20)], ["circle", "square"], 0),  # on top: both
        ([square(100, 100), square(97, 100, colour=GREEN)], ["square"], 1),  # a sliver left: under the threshold
        ([square(-200, -200), circle(100, 100)], ["circle"], 1),  # outside the image
    ],
)
def test_occlusion_keeps_visible_parts_and_drops_hidden_shapes(shapes: list[Shape], kept: list[str],
                                                               dropped: int) -> None:
    scene = compose(BLACK, shapes)
    assert [i.shape.kind for i in scene.instances] == kept
    assert scene.dropped == dropped


def test_a_partly_covered_instance_keeps_exactly_its_visible_pixels() -> None:
    below, above = square(100, 100), circle(140, 100)
    scene = compose(BLACK, [below, above])
    full_below, full_above = rasterize(below, H, W), rasterize(above, H, W)
    visible = full_below & ~full_above
    assert 0 < visible.sum() < full_below.sum()
    np.testing.assert_array_equal(scene.instances[0].mask, visible)
    np.testing.assert_array_equal(scene.instances[1].mask, full_above)
    assert scene.instances[0].full_area == int(full_below.sum())
    assert (scene.image[visible] == RED).all() and (scene.image[full_above] == GREEN).all()
    assert (scene.image[~(full_below | full_above)] == 0).all()


def test_a_sliver_is_dropped_by_the_visible_fraction_rule() -> None:
    below, above = square(100, 100), square(97, 100, colour=GREEN)
    visible = rasterize(below, H, W) & ~rasterize(above, H, W)
    assert MIN_VISIBLE_PIXELS <= visible.sum() < MIN_VISIBLE_FRACTION * rasterize(below, H, W).sum()


def test_a_foreground_distractor_cuts_the_mask_and_is_no_instance() -> None:
    line = Distractor(np.array([[0.0, 100.0], [199.0, 100.0]]), (255, 255, 255), thickness=3)
    scene = compose(BLACK, [circle(100, 100)], [line])
    full = rasterize(circle(100, 100), H, W)
    (inst,) = scene.instances
    cut = full & ~inst.mask
    assert cut.sum() > 0 and set(np.nonzero(cut)[0]) <= {98, 99, 100, 101, 102}
    assert (scene.image[cut] == 255).all()


def test_a_ring_has_a_hole_showing_the_background() -> None:
    ring = Shape("ring", (100, 100), 50, colour=RED, hole=0.5)
    (inst,) = compose(BLACK, [ring]).instances
    assert not inst.mask[100, 100] and inst.mask[100, 100 + 40]
    assert inst.mask.sum() == pytest.approx(math.pi * (50**2 - 25**2), rel=0.03)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "hexagon"}, "expected one of circle"),
        ({"texture": "plaid"}, "expected one of solid"),
        ({"radius": 0.0}, "positive"),
        ({"radius": float("nan")}, "positive"),
        ({"hole": 1.0}, "(0, 1)"),
    ],
)
def test_shape_refuses_bad_fields(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"kind": "circle", "center": (0.0, 0.0), "radius": 5.0, **kwargs}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Shape(**fields)  # type: ignore[arg-type]


# -- statistics -----------------------------------------------------------------------------------


def test_classes_are_roughly_balanced_over_200_images() -> None:
    counts: Counter[str] = Counter()
    dropped = 0
    for index in range(200):
        image = generate_image(5, index, 128)
        counts.update(i.shape.kind for i in image.instances)
        dropped += image.dropped
        assert 0 <= len(image.instances) <= 8
    total = sum(counts.values())
    assert total > 600  # 1-8 instances per image, 4.5 on average, few dropped
    assert dropped < 0.15 * (total + dropped)
    shares = {c: counts[c] / total for c in CLASSES}
    assert all(0.14 < s < 0.26 for s in shares.values()), shares


def test_gaussian_noise_has_the_asked_deviation() -> None:
    noise = gaussian_noise(np.random.default_rng(0), (200, 300), 4.0)
    assert noise.shape == (200, 300)
    assert abs(float(noise.mean())) < 0.05 and float(noise.std()) == pytest.approx(4.0, rel=0.02)


# -- video ----------------------------------------------------------------------------------------


def test_video_opens_with_the_expected_frames_and_ground_truth(tmp_path: Path) -> None:
    summary = write_video(tmp_path / "demo.mp4", frames=12, seed=2)
    cap = cv2.VideoCapture(str(summary.video))
    assert cap.isOpened()
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    read = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        assert frame.shape == (360, 640, 3)
        read += 1
    cap.release()
    assert read == 12
    coco = COCO(str(tmp_path / "demo.json"))
    assert sorted(coco.getImgIds()) == list(range(12))
    assert {len(coco.getAnnIds(imgIds=i)) > 0 for i in range(12)} == {True}
    assert summary.instances == len(coco.getAnnIds())
    again = write_video(tmp_path / "again" / "demo.mp4", frames=12, seed=2)
    assert again.annotations.read_bytes() == summary.annotations.read_bytes()
    assert again.video.read_bytes() == summary.video.read_bytes()


# -- the command ----------------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="edgeseg")
    add_synth_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_synth_command_writes_the_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = parse(["synth", "--out", str(tmp_path / "d"), "--train", "3", "--val", "2", "--size", "64",
                  "--seed", "1", "--video", str(tmp_path / "v.mp4"), "--video-frames", "3"])
    assert args.func(args) == 0
    assert sorted(p.name for p in (tmp_path / "d" / "train").iterdir()) == ["000001.jpg", "000002.jpg", "000003.jpg"]
    assert len(list((tmp_path / "d" / "val").iterdir())) == 2
    assert (tmp_path / "d" / "instances_val.json").is_file() and (tmp_path / "v.json").is_file()
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and out[0].startswith("synth: 3 train images") and "v.mp4 (3 frames)" in out[2]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--size", "32"], "size 32: expected at least 64"),
        (["--video-frames", "5"], "--video-frames needs --video"),
        (["--video", "clip.avi"], "expected a .mp4 path"),
    ],
)
def test_synth_command_refuses_bad_values(tmp_path: Path, argv: list[str], message: str) -> None:
    args = parse(["synth", "--out", str(tmp_path), "--train", "1", "--val", "0", *argv])
    with pytest.raises(ExportError, match=message):
        args.func(args)


def test_synth_command_rejects_negative_counts() -> None:
    with pytest.raises(SystemExit):
        parse(["synth", "--out", "x", "--train", "-1"])
