"""Check a COCO instances dataset before training, so that a bad one fails in a second, not an hour in.

:func:`check_coco` reads the json and the image folder and either returns a :class:`CocoSummary`
or raises :class:`edgeseg.errors.ExportError` with ONE line that names the json, the image or
annotation id and what was expected instead of what was found. The cheap checks (structure,
ids, geometry) run over the whole file before any image is opened, so a broken annotation is
reported without waiting for the images to be decoded. What is checked:

- the file: it exists, is JSON, is an object holding the lists ``images``, ``annotations`` and
  ``categories``;
- categories: integer ``id`` (unique) and string ``name``;
- images: integer ``id`` (unique), ``file_name``, positive integer ``width`` and ``height``;
- annotations: integer ``id`` (unique), an ``image_id`` and a ``category_id`` that exist,
  ``iscrowd`` 0 or 1, ``area`` a finite number >= 0, ``bbox`` four finite numbers with
  width and height >= 0, and a ``segmentation`` that is either
  - polygons: a non-empty list of lists of numbers, each of even length, at least three points,
    every coordinate finite and inside the image up to ``tolerance`` pixels, or
  - RLE: ``{"size": [H, W], "counts": ...}`` with the image's size, counts either a list of
    non-negative integers (uncompressed) or COCO's compressed string, decoded here (not by
    pycocotools, whose C decoder does not bound-check) to non-negative runs summing to H * W;
- images on disk: every file exists under the image folder, decodes with OpenCV, and has the
  width and height the json gives it (``decode=False`` checks existence only, for huge sets).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NoReturn

import cv2
import numpy as np

from edgeseg.errors import ExportError

REQUIRED_LISTS: Final = ("images", "annotations", "categories")
IMAGE_KEYS: Final = ("id", "file_name", "width", "height")
ANNOTATION_KEYS: Final = ("id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd")
CATEGORY_KEYS: Final = ("id", "name")

POLYGON_TOLERANCE: Final = 1.0
"""Polygon coordinates may lie this many pixels outside [0, W] x [0, H] (vertices on the border
of an outermost pixel sit at W or H exactly; annotation tools round a little further)."""
MIN_POLYGON_POINTS: Final = 3
RLE_ASCII_OFFSET: Final = 48
"""COCO compressed counts: 6-bit groups stored as chr(48 + value)."""
RLE_MAX_GROUPS: Final = 12
"""5 payload bits per character: more than 12 characters for one count overflows 64 bits."""


@dataclass(frozen=True)
class CocoSummary:
    """What a checked dataset holds.

    Attributes:
        annotations_path: the json.
        images_dir: the folder the ``file_name`` entries are relative to.
        images: number of images.
        annotations: number of annotations.
        categories: category id to name.
        per_category: annotations per category id (every category listed, zeros included).
        polygons: annotations whose mask is polygons.
        rles: annotations whose mask is RLE.
        crowd: annotations with ``iscrowd`` 1.
        empty_images: images without any annotation.
        decoded: whether every image was decoded (otherwise only found on disk).
    """

    annotations_path: Path
    images_dir: Path
    images: int
    annotations: int
    categories: dict[int, str]
    per_category: dict[int, int]
    polygons: int
    rles: int
    crowd: int
    empty_images: int
    decoded: bool

    def line(self) -> str:
        """One line for logs and the CLI."""
        files = "present and decodable" if self.decoded else "present (not decoded)"
        return (
            f"{self.annotations_path.name}: {self.images} images, {self.annotations} annotations "
            f"({self.polygons} polygon, {self.rles} RLE, {self.crowd} crowd) in {len(self.categories)} "
            f"categories, {self.empty_images} images without annotations; image files {files}"
        )


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def decode_rle_string(counts: str) -> np.ndarray[Any, np.dtype[np.int64]]:
    """The run lengths of a COCO compressed RLE string (``pycocotools``' ``rleFrString``).

    Raises ``ValueError`` for a character outside the code, a count longer than 64 bits or a
    string that ends in the middle of a count.
    """
    try:
        raw = np.frombuffer(counts.encode("ascii"), np.uint8).astype(np.int64) - RLE_ASCII_OFFSET
    except UnicodeEncodeError as exc:
        raise ValueError("non-ASCII character in the counts string") from exc
    if raw.size == 0:
        return np.zeros(0, np.int64)
    bad = np.flatnonzero((raw < 0) | (raw > 0x3F))
    if bad.size:
        raise ValueError(f"character {counts[int(bad[0])]!r} at {int(bad[0])} is outside the RLE code")
    last = (raw & 0x20) == 0  # no continuation bit: the last character of a count
    if not last[-1]:
        raise ValueError("the counts string ends in the middle of a count")
    ends = np.flatnonzero(last)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if int(lengths.max()) > RLE_MAX_GROUPS:
        raise ValueError(f"a count of {int(lengths.max())} characters overflows 64 bits")
    position = np.arange(raw.size) - np.repeat(starts, lengths)
    values = np.add.reduceat((raw & 0x1F) << (5 * position), starts)
    negative = (raw[ends] & 0x10) != 0
    values[negative] -= np.left_shift(np.int64(1), 5 * lengths[negative])
    # Counts from the third on are stored as differences to the count two before.
    out = values.copy()
    out[1::2] = np.cumsum(values[1::2])
    out[2::2] = np.cumsum(values[2::2])
    return out


class _Checker:
    def __init__(self, path: Path, images_dir: Path, tolerance: float) -> None:
        self.path = path
        self.images_dir = images_dir
        self.tolerance = tolerance

    def fail(self, what: str) -> NoReturn:
        raise ExportError(_one_line(f"{self.path}: {what}"))

    def load(self) -> dict[str, Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            self.fail("annotations file not found (expected a COCO instances json)")
        except IsADirectoryError:
            self.fail("is a folder, expected a COCO instances json file")
        except (OSError, UnicodeDecodeError) as exc:
            self.fail(f"cannot read the annotations file ({exc})")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            self.fail(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
        if not isinstance(data, dict):
            self.fail(f"expected a JSON object with {', '.join(REQUIRED_LISTS)}, found {type(data).__name__}")
        for key in REQUIRED_LISTS:
            if key not in data:
                self.fail(f"missing key '{key}' (a COCO instances file has {', '.join(REQUIRED_LISTS)})")
            if not isinstance(data[key], list):
                self.fail(f"'{key}' must be a list, found {type(data[key]).__name__}")
        return data

    def entries(self, items: list[Any], kind: str, keys: tuple[str, ...]) -> list[Mapping[str, Any]]:
        """The items, after checking each is an object holding ``keys`` and an integer id."""
        for index, item in enumerate(items):
            label = f"{kind} #{index}"
            if not isinstance(item, dict):
                self.fail(f"{label}: expected an object, found {type(item).__name__}")
            if "id" in item:
                label = f"{kind} {_describe(item['id'])}"
            for key in keys:
                if key not in item:
                    self.fail(f"{label}: missing key '{key}'")
            if not _is_int(item["id"]):
                self.fail(f"{label}: 'id' must be an integer, found {_describe(item['id'])}")
        return items

    def unique_ids(self, items: list[Mapping[str, Any]], kind: str) -> None:
        counts = Counter(int(item["id"]) for item in items)
        repeated = [i for i, n in counts.items() if n > 1]
        if repeated:
            self.fail(f"{kind} id {repeated[0]} appears {counts[repeated[0]]} times (ids must be unique)")

    def categories(self, items: list[Any]) -> dict[int, str]:
        cats = self.entries(items, "category", CATEGORY_KEYS)
        self.unique_ids(cats, "category")
        for cat in cats:
            if not isinstance(cat["name"], str) or not cat["name"]:
                self.fail(f"category {cat['id']}: 'name' must be a non-empty string, found {_describe(cat['name'])}")
        if not cats:
            self.fail("'categories' is empty (expected at least one category)")
        return {int(c["id"]): str(c["name"]) for c in cats}

    def images(self, items: list[Any]) -> dict[int, Mapping[str, Any]]:
        imgs = self.entries(items, "image", IMAGE_KEYS)
        self.unique_ids(imgs, "image")
        for img in imgs:
            label = f"image {img['id']}"
            if not isinstance(img["file_name"], str) or not img["file_name"]:
                self.fail(f"{label}: 'file_name' must be a non-empty string, found {_describe(img['file_name'])}")
            for key in ("width", "height"):
                if not _is_int(img[key]) or img[key] <= 0:
                    self.fail(f"{label} '{img['file_name']}': '{key}' must be a positive integer, "
                              f"found {_describe(img[key])}")
        return {int(img["id"]): img for img in imgs}

    def annotations(
        self, items: list[Any], images: Mapping[int, Mapping[str, Any]], categories: Mapping[int, str]
    ) -> tuple[list[Mapping[str, Any]], int, int, int]:
        anns = self.entries(items, "annotation", ANNOTATION_KEYS)
        self.unique_ids(anns, "annotation")
        polygons = rles = crowd = 0
        for ann in anns:
            label = f"annotation {ann['id']}"
            image_id, category_id = ann["image_id"], ann["category_id"]
            if not _is_int(image_id) or image_id not in images:
                self.fail(f"{label}: image_id {_describe(image_id)} is not an image of this file")
            if not _is_int(category_id) or category_id not in categories:
                known = ", ".join(str(c) for c in sorted(categories))
                self.fail(f"{label}: category_id {_describe(category_id)} is not a known category (known: {known})")
            if ann["iscrowd"] not in (0, 1) or isinstance(ann["iscrowd"], bool):
                self.fail(f"{label}: 'iscrowd' must be 0 or 1, found {_describe(ann['iscrowd'])}")
            crowd += ann["iscrowd"]
            area = ann["area"]
            if not _is_number(area) or not math.isfinite(area) or area < 0:
                self.fail(f"{label}: 'area' must be a finite number >= 0, found {_describe(area)}")
            self.bbox(label, ann["bbox"])
            image = images[image_id]
            seg = ann["segmentation"]
            if isinstance(seg, list):
                self.polygons(label, seg, int(image["width"]), int(image["height"]))
                polygons += 1
            elif isinstance(seg, dict):
                self.rle(label, seg, int(image["width"]), int(image["height"]))
                rles += 1
            else:
                self.fail(f"{label}: 'segmentation' must be a list of polygons or an RLE object, "
                          f"found {type(seg).__name__}")
        return anns, polygons, rles, crowd

    def bbox(self, label: str, box: Any) -> None:
        if (not isinstance(box, list) or len(box) != 4
                or not all(_is_number(v) and math.isfinite(v) for v in box) or box[2] < 0 or box[3] < 0):
            self.fail(f"{label}: 'bbox' must be [x, y, width, height] of finite numbers with width, height >= 0, "
                      f"found {_describe(box)}")

    def polygons(self, label: str, seg: list[Any], width: int, height: int) -> None:
        if not seg:
            self.fail(f"{label}: 'segmentation' is an empty list (expected at least one polygon)")
        tol = self.tolerance
        for k, poly in enumerate(seg):
            where = f"{label}: polygon {k}"
            if not isinstance(poly, list):
                self.fail(f"{where} must be a flat list [x0, y0, x1, y1, ...], found {type(poly).__name__}")
            if len(poly) % 2:
                self.fail(f"{where} has {len(poly)} coordinates, expected an even number (x, y pairs)")
            if len(poly) < 2 * MIN_POLYGON_POINTS:
                self.fail(f"{where} has {len(poly) // 2} points, expected at least {MIN_POLYGON_POINTS}")
            for j, v in enumerate(poly):
                if not _is_number(v) or not math.isfinite(v):
                    self.fail(f"{where}: coordinate {j} is {_describe(v)}, expected a finite number")
            xs, ys = poly[0::2], poly[1::2]
            if min(xs) < -tol or max(xs) > width + tol or min(ys) < -tol or max(ys) > height + tol:
                self.fail(f"{where} spans x {min(xs):g}..{max(xs):g}, y {min(ys):g}..{max(ys):g}: "
                          f"outside the {width}x{height} image (tolerance {tol:g} px)")

    def rle(self, label: str, seg: Mapping[str, Any], width: int, height: int) -> None:
        if "size" not in seg or "counts" not in seg:
            self.fail(f"{label}: RLE segmentation needs 'size' and 'counts', found keys {sorted(seg)}")
        if seg["size"] != [height, width]:
            self.fail(f"{label}: RLE size {_describe(seg['size'])} does not match the image (expected "
                      f"[{height}, {width}], [height, width])")
        counts = seg["counts"]
        if isinstance(counts, list):
            if not all(_is_int(c) and c >= 0 for c in counts):
                self.fail(f"{label}: uncompressed RLE counts must be integers >= 0")
            runs = np.asarray(counts, np.int64)
        elif isinstance(counts, str):
            try:
                runs = decode_rle_string(counts)
            except ValueError as exc:
                self.fail(f"{label}: RLE counts string is corrupt: {exc}")
            if (runs < 0).any():
                self.fail(f"{label}: RLE counts string decodes to a negative run length")
        else:
            self.fail(f"{label}: RLE 'counts' must be a string or a list of integers, found {type(counts).__name__}")
        total = int(runs.sum())
        if total != height * width:
            self.fail(f"{label}: RLE runs cover {total} pixels, expected {height} x {width} = {height * width}")

    def files(self, images: Mapping[int, Mapping[str, Any]], decode: bool) -> None:
        if not self.images_dir.is_dir():
            self.fail(f"image folder {self.images_dir} not found")
        for image_id, img in images.items():
            name = str(img["file_name"])
            path = self.images_dir / name
            label = f"image {image_id} '{name}'"
            if not path.is_file():
                self.fail(f"{label}: file missing (expected {path})")
            if not decode:
                continue
            try:
                data = np.fromfile(str(path), np.uint8)
            except OSError as exc:
                self.fail(f"{label}: cannot read {path} ({exc.strerror})")
            pixels = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
            if pixels is None:
                self.fail(f"{label}: {path} is not a decodable image")
            h, w = pixels.shape[:2]
            if (w, h) != (img["width"], img["height"]):
                self.fail(f"{label}: {path} is {w}x{h}, the json says {img['width']}x{img['height']} (width x height)")


def check_coco(
    annotations: Path | str,
    images_dir: Path | str,
    tolerance: float = POLYGON_TOLERANCE,
    decode: bool = True,
) -> CocoSummary:
    """Check a COCO instances json and its image folder; see the module docstring for what.

    Raises:
        ExportError: one line naming the json, the image or annotation and what was expected.
    """
    checker = _Checker(Path(annotations), Path(images_dir), float(tolerance))
    data = checker.load()
    categories = checker.categories(data["categories"])
    images = checker.images(data["images"])
    anns, polygons, rles, crowd = checker.annotations(data["annotations"], images, categories)
    checker.files(images, decode)
    per_category = Counter(int(a["category_id"]) for a in anns)
    annotated = {int(a["image_id"]) for a in anns}
    return CocoSummary(
        annotations_path=Path(annotations),
        images_dir=Path(images_dir),
        images=len(images),
        annotations=len(anns),
        categories=categories,
        per_category={c: per_category[c] for c in categories},
        polygons=polygons,
        rles=rles,
        crowd=crowd,
        empty_images=len(images) - len(annotated),
        decoded=decode,
    )
