"""Mask codec: RLE from crops must equal pycocotools on the full mask; polygons must cover the mask."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from edgeseg.sinks.mask_codec import polygons_from_crop, rle_counts_from_crop, rle_from_crop

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

FUZZ_CASES = 600
MIN_BLOB_IOU = 0.9


def full_mask(crop: np.ndarray, region: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    out = np.zeros(size, np.uint8)
    x0, y0, x1, y1 = region
    out[y0:y1, x0:x1] = crop
    return out


def reference_rle(full: np.ndarray) -> dict:
    return coco_mask.encode(np.asfortranarray(full.astype(np.uint8)))


def assert_matches_pycocotools(
    crop: np.ndarray, region: tuple[int, int, int, int], size: tuple[int, int]
) -> None:
    full = full_mask(crop, region, size)
    ours = rle_from_crop(crop, region, size)
    ref = reference_rle(full)
    assert ours["size"] == [size[0], size[1]] == list(ref["size"])
    assert isinstance(ours["counts"], str)
    assert ours["counts"] == ref["counts"].decode("ascii")
    decoded = coco_mask.decode({"size": ours["size"], "counts": ours["counts"].encode("ascii")})
    np.testing.assert_array_equal(decoded, full)


def _checker(h: int, w: int) -> np.ndarray:
    return (np.add.outer(np.arange(h), np.arange(w)) % 2).astype(bool)


# (image size (H, W), region, crop) covering the edge cases by name.
EDGE_CASES = {
    "empty crop": ((10, 12), (2, 3, 7, 8), np.zeros((5, 5), bool)),
    "full crop": ((10, 12), (2, 3, 7, 8), np.ones((5, 5), bool)),
    "full image all set": ((6, 4), (0, 0, 4, 6), np.ones((6, 4), bool)),
    "full image empty": ((6, 4), (0, 0, 4, 6), np.zeros((6, 4), bool)),
    "full-height region (runs join across columns)": ((5, 8), (2, 0, 6, 5), np.ones((5, 4), bool)),
    "full-height checker": ((5, 8), (1, 0, 7, 5), _checker(5, 6)),
    "touches right and bottom border": ((9, 7), (4, 6, 7, 9), np.ones((3, 3), bool)),
    "touches left and top border": ((9, 7), (0, 0, 3, 2), np.ones((2, 3), bool)),
    "last pixel set": ((4, 4), (3, 3, 4, 4), np.ones((1, 1), bool)),
    "first pixel set": ((4, 4), (0, 0, 1, 1), np.ones((1, 1), bool)),
    "one-pixel region unset": ((4, 4), (2, 1, 3, 2), np.zeros((1, 1), bool)),
    "one-pixel image": ((1, 1), (0, 0, 1, 1), np.ones((1, 1), bool)),
    "zero-width region": ((5, 5), (2, 1, 2, 4), np.zeros((3, 0), bool)),
    "zero-height region": ((5, 5), (1, 2, 4, 2), np.zeros((0, 3), bool)),
    "single column": ((7, 5), (2, 1, 3, 6), np.array([[1], [0], [1], [1], [0]], bool)),
    "single row": ((7, 5), (0, 3, 5, 4), np.array([[1, 0, 1, 1, 0]], bool)),
    "checker (many runs)": ((20, 30), (3, 4, 23, 17), _checker(13, 20)),
}


@pytest.mark.parametrize("size,region,crop", EDGE_CASES.values(), ids=EDGE_CASES.keys())
def test_rle_edge_cases_match_pycocotools(size, region, crop) -> None:
    assert_matches_pycocotools(crop, region, size)


@pytest.mark.parametrize(
    "size,region,crop,expected",
    [
        # Column-major over a 3x2 image: (0,0) (1,0) (2,0) (0,1) (1,1) (2,1).
        ((3, 2), (0, 0, 2, 3), np.zeros((3, 2), bool), [6]),
        ((3, 2), (0, 0, 2, 3), np.ones((3, 2), bool), [0, 6]),
        ((3, 2), (1, 1, 2, 3), np.ones((2, 1), bool), [4, 2]),
        ((3, 2), (0, 1, 2, 2), np.ones((1, 2), bool), [1, 1, 2, 1, 1]),
        ((3, 2), (0, 2, 2, 3), np.ones((1, 2), bool), [2, 1, 2, 1]),
        ((3, 2), (0, 0, 1, 1), np.ones((1, 1), bool), [0, 1, 5]),
    ],
)
def test_rle_counts_table(size, region, crop, expected) -> None:
    assert rle_counts_from_crop(crop, region, size).tolist() == expected


@pytest.mark.parametrize(
    "size,region,crop",
    [
        ((10, 10), (0, 0, 3, 3), np.ones((2, 3), bool)),  # crop shape disagrees with region
        ((10, 10), (8, 0, 12, 2), np.ones((2, 4), bool)),  # region past the right edge
        ((10, 10), (0, -1, 2, 1), np.ones((2, 2), bool)),  # region above the top
        ((10, 10), (0, 0, 2, 2), np.ones((2, 2, 1), bool)),  # not 2-D
    ],
)
def test_rle_rejects_bad_regions(size, region, crop) -> None:
    with pytest.raises(ValueError, match="region"):
        rle_from_crop(crop, region, size)


def test_rle_random_crops_match_pycocotools() -> None:
    rng = np.random.default_rng(1234)
    for case in range(FUZZ_CASES):
        height, width = (int(v) for v in rng.integers(1, 48, size=2))
        x0 = int(rng.integers(0, width))
        x1 = int(rng.integers(x0, width + 1))
        y0 = int(rng.integers(0, height))
        y1 = int(rng.integers(y0, height + 1))
        if case % 5 == 0:  # full-height regions exercise the run merge between columns
            y0, y1 = 0, height
        density = (0.0, 0.1, 0.5, 0.9, 1.0)[case % 5 if case % 7 else 2]
        crop = rng.random((y1 - y0, x1 - x0)) < density
        assert_matches_pycocotools(crop, (x0, y0, x1, y1), (height, width))


def test_rle_accepts_numpy_region_and_uint8_crop() -> None:
    crop = np.array([[0, 3], [1, 0]], np.uint8)  # any non-zero counts as set
    region = np.array([5, 6, 7, 8], np.int32)
    assert_matches_pycocotools(crop.astype(bool), (5, 6, 7, 8), (1080, 1920))
    assert rle_from_crop(crop, region, (1080, 1920)) == rle_from_crop(
        crop.astype(bool), (5, 6, 7, 8), (1080, 1920)
    )


def _blob(size: int = 80) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    disc = (xx - 40) ** 2 + (yy - 38) ** 2 < 30**2
    bar = (np.abs(xx - 60) < 8) & (yy > 50)
    return disc | bar


def _rasterise(polygons: list[list[float]], size: tuple[int, int]) -> np.ndarray:
    rles = coco_mask.frPyObjects(polygons, size[0], size[1])
    return coco_mask.decode(coco_mask.merge(rles)).astype(bool)


@pytest.mark.parametrize("epsilon", [0.0, 1.0, 2.0])
def test_polygons_cover_blob(epsilon: float) -> None:
    crop = _blob()
    region = (100, 50, 180, 130)
    size = (200, 300)
    polygons = polygons_from_crop(crop, region, epsilon=epsilon)
    assert len(polygons) == 1
    assert all(len(p) >= 6 and len(p) % 2 == 0 for p in polygons)
    raster = _rasterise(polygons, size)
    truth = full_mask(crop, region, size).astype(bool)
    iou = (raster & truth).sum() / (raster | truth).sum()
    assert iou > MIN_BLOB_IOU
    xs, ys = np.array(polygons[0][0::2]), np.array(polygons[0][1::2])
    assert xs.min() >= region[0] and xs.max() <= region[2]
    assert ys.min() >= region[1] and ys.max() <= region[3]


def test_polygons_simplify_with_epsilon() -> None:
    crop, region = _blob(), (0, 0, 80, 80)
    exact = polygons_from_crop(crop, region, epsilon=0.0)
    simple = polygons_from_crop(crop, region, epsilon=2.0)
    assert len(simple[0]) < len(exact[0])


def _two_squares() -> np.ndarray:
    crop = np.zeros((20, 40), bool)
    crop[2:10, 2:10] = True
    crop[5:18, 20:35] = True
    return crop


@pytest.mark.parametrize(
    "crop,expected_count",
    [
        (np.zeros((10, 10), bool), 0),
        (np.zeros((0, 0), bool), 0),
        (np.pad(np.ones((1, 1), bool), 3), 0),  # single pixel: degenerate
        (np.pad(np.ones((1, 6), bool), 2), 0),  # one-pixel line: no area
        (np.pad(np.ones((4, 4), bool), 2), 1),
        (_two_squares(), 2),
    ],
    ids=["empty", "zero-size", "single pixel", "thin line", "square", "two squares"],
)
def test_polygon_counts(crop: np.ndarray, expected_count: int) -> None:
    region = (3, 4, 3 + crop.shape[1], 4 + crop.shape[0])
    assert len(polygons_from_crop(crop, region)) == expected_count


def test_polygons_min_points_drops_small_polygons() -> None:
    crop = np.pad(np.ones((4, 4), bool), 2)  # a square: 4 vertices
    assert polygons_from_crop(crop, (0, 0, 8, 8), min_points=5) == []


def test_polygons_reject_mismatched_region() -> None:
    with pytest.raises(ValueError, match="region"):
        polygons_from_crop(np.ones((3, 3), bool), (0, 0, 4, 3))
