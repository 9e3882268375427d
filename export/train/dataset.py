"""COCO instance segmentation data for training: images plus an instances json.

Every sample is an ``imgsz`` x ``imgsz`` RGB image with its instances' boxes (xyxy, input
pixels), class indices and masks at the prototype resolution (imgsz/4, soft: area-averaged).

Geometry. The image is resized with ``cv2.resize(INTER_LINEAR)`` and pasted at an integer
offset into a canvas painted with the pad value, exactly as the runtime's letterbox does:

* validation (``augment=None``): the runtime's letterbox itself (``edgeseg.geometry.Letterbox``),
  deterministic, so that a validation sample is the tensor the deployed model will see;
* training (``augment`` given): scale jitter (the letterbox gain times U(scale)), a random
  offset (a larger image is cropped, a smaller one lands anywhere), a horizontal flip and an HSV
  colour jitter. The random draws come from a generator seeded by (seed, epoch, index), so a
  resumed run sees the same augmentations and data-loader workers do not repeat each other.

Masks are decoded at the original resolution (polygons or RLE, pycocotools), area-resized to
the prototype scale and moved by the same affine map as the image. A box is the annotation's
bbox mapped the same way; where the image was cropped it is recomputed from the visible mask
pixels. Crowd annotations, annotations without a segmentation and instances left with a box
under MIN_BOX_PX are dropped.

Layout of a dataset argument (``resolve_coco``): a json file, its images in ``images/`` beside
it, else in ``<split>/`` for ``instances_<split>.json`` (the synthetic generator's layout), else
beside it; or a folder holding one json (or ``annotations/<one json>``) and ``images/``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import torch
from pycocotools import mask as mask_utils
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from edgeseg.errors import ExportError
from edgeseg.geometry import Letterbox
from edgeseg.model import DEFAULT_PAD_VALUE
from edgeseg.sources.images import decode_image

log = logging.getLogger(__name__)

#: Masks and prototypes are at 1/4 of the input resolution.
MASK_STRIDE = 4
#: Instances whose box is narrower or lower than this (input pixels) after augmentation are dropped.
MIN_BOX_PX = 2.0
#: A COCO polygon needs at least three points.
MIN_POLYGON_COORDS = 6

FloatArray = npt.NDArray[np.float32]
ImageU8 = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class CocoFiles:
    """Where a COCO dataset's annotations and images are."""

    annotations: Path
    images: Path


def resolve_coco(path: str | Path) -> CocoFiles:
    """The annotations json and image folder of a dataset argument (see the module notes)."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() != ".json":
            raise ExportError(f"dataset {path}: expected a COCO instances .json or a folder holding one")
        folder = path.parent
        candidates = [folder / "images"]
        if path.stem.startswith("instances_"):
            candidates.append(folder / path.stem[len("instances_") :])
        return CocoFiles(path, next((c for c in candidates if c.is_dir()), folder))
    if not path.is_dir():
        raise ExportError(f"dataset not found: {path}")
    candidates = sorted(path.glob("*.json")) or sorted((path / "annotations").glob("*.json"))
    if len(candidates) != 1:
        found = ", ".join(p.name for p in candidates) or "none"
        raise ExportError(f"dataset {path}: expected one COCO instances .json (or annotations/*.json), found {found}")
    return CocoFiles(candidates[0], path / "images" if (path / "images").is_dir() else path)


@dataclass(frozen=True)
class Augment:
    """Train-time augmentation.

    Attributes:
        flip: probability of a horizontal flip.
        scale: range of the factor applied to the letterbox gain.
        hsv: hue, saturation, value jitter amplitudes (fractions, as YOLOv8's hsv_h/s/v).
    """

    flip: float = 0.5
    scale: tuple[float, float] = (0.5, 1.5)
    hsv: tuple[float, float, float] = (0.015, 0.7, 0.4)


@dataclass(frozen=True)
class _Annotation:
    label: int
    bbox: tuple[float, float, float, float]  # x, y, w, h in original pixels
    segmentation: Any


@dataclass(frozen=True)
class _Image:
    image_id: int
    path: Path
    annotations: tuple[_Annotation, ...]


@dataclass
class Sample:
    """One prepared image and its instances.

    Attributes:
        image: (S, S, 3) uint8, RGB.
        boxes: (n, 4) float32 xyxy, input pixels.
        labels: (n,) int64 class indices.
        masks: (n, S/4, S/4) float32 in 0..1.
        image_id: the COCO image id.
        letterbox: the image-to-input mapping (validation samples only; None when augmented).
    """

    image: ImageU8
    boxes: FloatArray
    labels: npt.NDArray[np.int64]
    masks: FloatArray
    image_id: int
    letterbox: Letterbox | None = None


@dataclass
class Batch:
    """A collated batch; ``to`` moves it to a device and makes ``images`` float 0..1.

    Attributes:
        images: [B, 3, S, S], uint8 after ``collate``, float32 0..1 after ``to``.
        boxes: [B, M, 4] xyxy input pixels, padded to the largest instance count M.
        labels: [B, M] int64.
        valid: [B, M] bool, False on padding.
        masks: per image [n_i, S/4, S/4] float32 (unpadded: n_i instances of image i).
        image_ids: COCO image ids.
    """

    images: Tensor
    boxes: Tensor
    labels: Tensor
    valid: Tensor
    masks: list[Tensor]
    image_ids: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def pin_memory(self) -> Batch:
        """Page-locked copies (the DataLoader calls this with ``pin_memory=True``, for CUDA)."""
        return Batch(self.images.pin_memory(), self.boxes.pin_memory(), self.labels.pin_memory(),
                     self.valid.pin_memory(), [m.pin_memory() for m in self.masks], list(self.image_ids))

    def to(self, device: torch.device | str) -> Batch:
        images = self.images.to(device, non_blocking=True)
        if images.dtype == torch.uint8:
            images = images.float().div_(255.0)
        return Batch(
            images=images,
            boxes=self.boxes.to(device, non_blocking=True),
            labels=self.labels.to(device, non_blocking=True),
            valid=self.valid.to(device, non_blocking=True),
            masks=[m.to(device, non_blocking=True) for m in self.masks],
            image_ids=list(self.image_ids),
        )


def collate(samples: Sequence[Sample]) -> Batch:
    """Stack samples into a Batch (instances padded per image to the largest count)."""
    m = max((len(s.labels) for s in samples), default=0)
    b = len(samples)
    boxes = torch.zeros(b, m, 4)
    labels = torch.zeros(b, m, dtype=torch.int64)
    valid = torch.zeros(b, m, dtype=torch.bool)
    for i, s in enumerate(samples):
        n = len(s.labels)
        boxes[i, :n] = torch.from_numpy(s.boxes)
        labels[i, :n] = torch.from_numpy(s.labels)
        valid[i, :n] = True
    images = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).contiguous()
    return Batch(images, boxes, labels, valid, [torch.from_numpy(s.masks) for s in samples],
                 [s.image_id for s in samples])


def load_coco_json(path: Path) -> dict[str, Any]:
    """The instances document, or a one-line ExportError."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"annotations {path}: not readable JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ExportError(f"annotations {path}: not a COCO instances file (top level is not an object)")
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(doc.get(k), list)]
    if missing:
        raise ExportError(f"annotations {path}: not a COCO instances file (no list {', '.join(missing)})")
    if not doc["categories"]:
        raise ExportError(f"annotations {path}: no categories")
    return doc


def category_names(doc: dict[str, Any]) -> tuple[str, ...]:
    """Class names in category-id order: class index i is the i-th category by id."""
    return tuple(str(c["name"]) for c in sorted(doc["categories"], key=lambda c: int(c["id"])))


def _has_segmentation(seg: Any) -> bool:
    if isinstance(seg, list):
        return any(isinstance(p, list) and len(p) >= MIN_POLYGON_COORDS for p in seg)
    return isinstance(seg, dict) and "counts" in seg and "size" in seg


def decode_mask(segmentation: Any, height: int, width: int) -> npt.NDArray[np.uint8]:
    """A polygon list, uncompressed RLE or compressed RLE -> (height, width) uint8 0/1."""
    if isinstance(segmentation, list):
        polys = [p for p in segmentation if isinstance(p, list) and len(p) >= MIN_POLYGON_COORDS]
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    m = mask_utils.decode(rle)
    if m.shape != (height, width):  # an RLE sized for another image size
        m = cv2.resize(m, (width, height), interpolation=cv2.INTER_NEAREST)
    return np.ascontiguousarray(m, dtype=np.uint8)


def _cv_affine(a: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """A continuous-coordinate affine map (pixel centres at +0.5) as OpenCV's (centres at integers)."""
    out = a.copy()
    out[:, 2] = a[:, 2] + a[:, :2].sum(1) * 0.5 - 0.5
    return out


def _hsv_jitter(image: ImageU8, gains: tuple[float, float, float], rng: np.random.Generator) -> None:
    """YOLOv8's HSV augmentation, in place on a BGR image."""
    r = rng.uniform(-1, 1, 3) * np.asarray(gains) + 1
    hue, sat, val = cv2.split(cv2.cvtColor(image, cv2.COLOR_BGR2HSV))
    x = np.arange(256, dtype=np.float64)
    lut_hue = ((x * r[0]) % 180).astype(np.uint8)
    lut_sat = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_val = np.clip(x * r[2], 0, 255).astype(np.uint8)
    merged = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    cv2.cvtColor(merged, cv2.COLOR_HSV2BGR, dst=image)


class CocoSegmentation(Dataset[Sample]):
    """A COCO instances dataset as ``Sample``s of one input size.

    Args:
        files: annotations json and image folder (``resolve_coco``).
        imgsz: square input size (a multiple of 32).
        class_names: the model's class table; categories are matched to it by name. None: the
            dataset's own categories in id order (a training set defines the classes).
        augment: train-time augmentation; None for validation (the runtime's letterbox only).
        seed: base of the per-sample augmentation seeds.
        pad_value: letterbox border colour.
    """

    def __init__(
        self,
        files: CocoFiles,
        imgsz: int,
        class_names: Sequence[str] | None = None,
        augment: Augment | None = None,
        seed: int = 0,
        pad_value: int = DEFAULT_PAD_VALUE,
    ):
        if imgsz <= 0 or imgsz % 32:
            raise ExportError(f"imgsz {imgsz}: expected a positive multiple of 32")
        if not files.images.is_dir():
            raise ExportError(f"image folder not found: {files.images}")
        self.files, self.imgsz, self.augment, self.seed, self.pad_value = files, imgsz, augment, seed, pad_value
        doc = load_coco_json(files.annotations)
        own = category_names(doc)
        self.class_names = tuple(class_names) if class_names is not None else own
        index = {n: i for i, n in enumerate(self.class_names)}
        cat_to_label = {int(c["id"]): index[str(c["name"])] for c in doc["categories"] if str(c["name"]) in index}
        if not cat_to_label:
            raise ExportError(f"annotations {files.annotations}: none of its categories ({', '.join(own[:5])}...) "
                              f"is a class of the model ({', '.join(self.class_names[:5])}...)")
        self.images = self._index(doc, cat_to_label)
        if not self.images:
            raise ExportError(f"annotations {files.annotations}: none of its {len(doc['images'])} images is in "
                              f"{files.images}")

    def _index(self, doc: dict[str, Any], cat_to_label: dict[int, int]) -> list[_Image]:
        by_image: dict[int, list[_Annotation]] = {}
        dropped = 0
        for a in doc["annotations"]:
            try:
                label = cat_to_label.get(int(a["category_id"]))
                x, y, w, h = (float(v) for v in a["bbox"])
            except (KeyError, TypeError, ValueError):
                raise ExportError(f"annotations {self.files.annotations}: annotation {a.get('id')} lacks a "
                                  "category_id or a 4-number bbox") from None
            if label is None or a.get("iscrowd", 0) or w <= 0 or h <= 0 or not _has_segmentation(a.get("segmentation")):
                dropped += 1
                continue
            by_image.setdefault(int(a["image_id"]), []).append(_Annotation(label, (x, y, w, h), a["segmentation"]))
        images, missing = [], 0
        for im in sorted(doc["images"], key=lambda im: int(im["id"])):
            path = self.files.images / str(im.get("file_name", ""))
            if not path.is_file():
                missing += 1
                continue
            images.append(_Image(int(im["id"]), path, tuple(by_image.get(int(im["id"]), ()))))
        if missing and images:
            log.warning("%d of %d images of %s are missing from %s; using the %d present", missing,
                        len(doc["images"]), self.files.annotations, self.files.images, len(images))
        if dropped:
            log.info("%s: %d crowd, unlabelled or mask-less annotations not used", self.files.annotations, dropped)
        return images

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_instances(self) -> int:
        return sum(len(im.annotations) for im in self.images)

    def __getitem__(self, key: int | tuple[int, int]) -> Sample:
        """Sample ``key`` (an index, or (index, epoch) from ``EpochSampler`` for the augmentation seed)."""
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        entry = self.images[index]
        image, why = decode_image(entry.path)
        if image is None:  # the index was built from existing files; a file damaged since is skipped
            log.warning("image %s: %s; using an empty canvas", entry.path, why)
            image = np.full((self.imgsz, self.imgsz, 3), self.pad_value, np.uint8)
            entry = _Image(entry.image_id, entry.path, ())
        rng = np.random.default_rng([self.seed, epoch, index]) if self.augment is not None else None
        return self._prepare(image, entry, rng)

    def _prepare(self, image: ImageU8, entry: _Image, rng: np.random.Generator | None) -> Sample:
        s = self.imgsz
        h, w = image.shape[:2]
        letterbox = Letterbox.fit((h, w), (s, s))
        flip = False
        if rng is None or self.augment is None:
            (rh, rw), tx, ty = letterbox.resized, letterbox.pad_x, letterbox.pad_y
        else:
            gain = letterbox.gain * rng.uniform(*self.augment.scale)
            rh, rw = max(1, int(round(h * gain))), max(1, int(round(w * gain)))
            tx = int(rng.integers(min(0, s - rw), max(0, s - rw) + 1))
            ty = int(rng.integers(min(0, s - rh), max(0, s - rh) + 1))
            flip = bool(rng.random() < self.augment.flip)
        canvas = np.full((s, s, 3), self.pad_value, np.uint8)
        resized = image if (rh, rw) == (h, w) else cv2.resize(image, (rw, rh), interpolation=cv2.INTER_LINEAR)
        x0, y0, x1, y1 = max(tx, 0), max(ty, 0), min(tx + rw, s), min(ty + rh, s)
        canvas[y0:y1, x0:x1] = resized[y0 - ty : y1 - ty, x0 - tx : x1 - tx]
        if flip:
            canvas = np.ascontiguousarray(canvas[:, ::-1])
        if rng is not None and self.augment is not None and any(self.augment.hsv):
            _hsv_jitter(canvas, self.augment.hsv, rng)
        # The image's map, original pixels -> input pixels (continuous coordinates).
        sx, sy = rw / w, rh / h
        affine = np.array([[sx, 0.0, tx], [0.0, sy, ty]])
        if flip:
            affine = np.array([[-sx, 0.0, s - tx], [0.0, sy, ty]])
        cropped = tx < 0 or ty < 0 or tx + rw > s or ty + rh > s
        visible = ((x0 - tx) / sx, (y0 - ty) / sy, (x1 - tx) / sx, (y1 - ty) / sy)  # in original pixels
        boxes, labels, masks = self._instances(entry, (h, w), affine, cropped, visible)
        return Sample(
            image=np.ascontiguousarray(canvas[:, :, ::-1]),
            boxes=boxes, labels=labels, masks=masks, image_id=entry.image_id,
            letterbox=letterbox if rng is None else None,
        )

    def _instances(
        self,
        entry: _Image,
        size: tuple[int, int],
        affine: npt.NDArray[np.float64],
        cropped: bool,
        visible: tuple[float, float, float, float],
    ) -> tuple[FloatArray, npt.NDArray[np.int64], FloatArray]:
        """Boxes, labels and prototype-scale masks of ``entry`` under ``affine``.

        ``visible`` is the part of the original image inside the canvas (original pixels); used
        for the boxes of a ``cropped`` image.
        """
        s, ms = self.imgsz, self.imgsz // MASK_STRIDE
        h, w = size
        sx, sy = abs(affine[0, 0]), affine[1, 1]
        # Masks: area-resize to the prototype scale, then the remaining affine map (offset, flip).
        mh, mw = max(1, int(round(h * sy / MASK_STRIDE))), max(1, int(round(w * sx / MASK_STRIDE)))
        to_proto = affine / MASK_STRIDE
        to_proto[:, :2] = to_proto[:, :2] @ np.diag([w / mw, h / mh])
        m_cv = _cv_affine(to_proto)
        boxes, labels, masks = [], [], []
        for ann in entry.annotations:
            full = decode_mask(ann.segmentation, h, w)
            if cropped:
                c0, c1 = max(int(np.floor(visible[0])), 0), min(int(np.ceil(visible[2])), w)
                r0, r1 = max(int(np.floor(visible[1])), 0), min(int(np.ceil(visible[3])), h)
                window = full[r0:r1, c0:c1]
                cols, rows = np.flatnonzero(window.any(0)), np.flatnonzero(window.any(1))
                if not len(cols):
                    continue
                x, y = c0 + cols[0], r0 + rows[0]
                bw, bh = cols[-1] + 1 - cols[0], rows[-1] + 1 - rows[0]
            else:
                x, y, bw, bh = ann.bbox
            corners = affine @ np.array([[x, x + bw], [y, y + bh], [1.0, 1.0]])
            box = np.array([corners[0].min(), corners[1].min(), corners[0].max(), corners[1].max()])
            box = np.clip(box, 0, s)
            if box[2] - box[0] < MIN_BOX_PX or box[3] - box[1] < MIN_BOX_PX:
                continue
            small: npt.NDArray[Any] = full.astype(np.float32)  # float: INTER_AREA on uint8 rounds edges
            if (mh, mw) != (h, w):
                small = cv2.resize(small, (mw, mh), interpolation=cv2.INTER_AREA)
            warped = cv2.warpAffine(small, m_cv, (ms, ms), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
            if not warped.any():
                continue
            boxes.append(box)
            labels.append(ann.label)
            masks.append(warped)
        if not boxes:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros((0, ms, ms), np.float32)
        return (np.asarray(boxes, np.float32), np.asarray(labels, np.int64),
                np.clip(np.stack(masks), 0.0, 1.0).astype(np.float32))


class EpochSampler(Sampler[tuple[int, int]]):
    """Indices in a per-epoch order seeded by (seed, epoch), paired with the epoch.

    ``set_epoch(epoch, start)`` skips the first ``start`` samples of that epoch's order, which
    is how a run resumed mid-epoch continues with exactly the batches it had not seen.
    """

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True):
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        return [int(i) for i in np.random.default_rng([self.seed, epoch]).permutation(self.size)]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for i in self.order(self.epoch)[self.start :]:
            yield i, self.epoch

    def __len__(self) -> int:
        return max(self.size - self.start, 0)
