"""The data that flows through the pipeline: a captured frame and the instances found in it.

``Instances`` is the one container for "the instances of one image", used from the decoder to
every sink (in the manner of detectron2's ``Instances`` and supervision's ``Detections``): every
per-instance field has the same length, a boolean or integer index selects from all of them at
once, and "nothing found" is an ordinary value of length 0 rather than a special case.

Masks are stored as crops: instance ``i`` owns a boolean array ``masks[i]`` covering the integer
pixel region ``mask_boxes[i]`` (x0, y0, x1, y1; exclusive right/bottom) of the original image.
Outside that region the mask is empty by construction (a prototype mask is cropped to its box),
so a crop holds the whole mask at a fraction of the memory of a full-frame array; 100 full
1080p masks would be 200 MB per frame. ``full_mask(i)`` materialises one when a caller needs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from edgeseg.analytics.types import Analytics

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int32]
ImageArray = npt.NDArray[np.uint8]


@dataclass(frozen=True, eq=False)
class Frame:
    """One captured image and where it came from.

    Attributes:
        image: HxWx3 uint8, BGR (OpenCV order).
        frame_id: position in the source, from 0; increases by one per frame read.
        source: the URI the frame was read from.
        timestamp: capture time, seconds since the epoch (``time.time()``); for a video file, media
            time (the file's open time plus the frame's position in it), so that recorded clips
            give the same tracks and events at any processing speed.
        name: the file name for image folders and files, otherwise empty.
    """

    image: ImageArray
    frame_id: int
    source: str
    timestamp: float
    name: str = ""

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the image."""
        return int(self.image.shape[0]), int(self.image.shape[1])


@dataclass(frozen=True, eq=False)
class Instances:
    """The instances found in one image, in original-image pixel coordinates.

    Attributes:
        image_size: (height, width) of the original image.
        boxes: (n, 4) float32, xyxy in original-image pixels.
        scores: (n,) float32 confidence in 0..1.
        class_ids: (n,) int32 index into ``class_names``.
        class_names: the model's class table (not per instance).
        masks: n boolean crops, ``masks[i]`` of shape (y1 - y0, x1 - x0) for
            ``mask_boxes[i]``; empty tuple with ``mask_boxes`` of shape (0, 4) when the model
            produced no masks.
        mask_boxes: (n, 4) int32 region x0, y0, x1, y1 (exclusive) that each crop covers.
    """

    image_size: tuple[int, int]
    boxes: FloatArray
    scores: FloatArray
    class_ids: IntArray
    class_names: tuple[str, ...]
    masks: tuple[BoolArray, ...] = ()
    mask_boxes: IntArray = field(default_factory=lambda: np.zeros((0, 4), np.int32))

    def __post_init__(self) -> None:
        """Refuse, in one line naming the field, any field of the wrong type, dtype or shape.

        Checked here, where instances are made, rather than three modules later where a sink
        trips over an int64 box or a float class id.
        """
        size = self.image_size
        if (
            not isinstance(size, tuple)
            or len(size) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in size)
        ):
            raise ValueError(f"Instances.image_size: expected (height, width) of two positive ints, found {size!r}")
        if not isinstance(self.class_names, tuple) or not all(isinstance(c, str) for c in self.class_names):
            raise ValueError(f"Instances.class_names: expected a tuple of str, found {self.class_names!r:.80}")
        n = _check_array("boxes", self.boxes, np.float32, "float32", None, 4)
        _check_array("scores", self.scores, np.float32, "float32", n)
        _check_array("class_ids", self.class_ids, np.int32, "int32", n)
        if not isinstance(self.masks, tuple):
            raise ValueError(f"Instances.masks: expected a tuple of boolean crops, found {type(self.masks).__name__}")
        if self.masks and len(self.masks) != n:
            raise ValueError(f"Instances.masks: expected 0 or {n} crops (one per instance), found {len(self.masks)}")
        _check_array("mask_boxes", self.mask_boxes, np.int32, "int32", len(self.masks), 4)
        for i, (crop, (x0, y0, x1, y1)) in enumerate(zip(self.masks, self.mask_boxes)):
            if not isinstance(crop, np.ndarray) or crop.dtype != np.bool_ or crop.ndim != 2:
                raise ValueError(f"Instances.masks[{i}]: expected a 2-D bool crop, found {_describe(crop)}")
            if crop.shape != (y1 - y0, x1 - x0):
                raise ValueError(
                    f"Instances.masks[{i}]: expected shape {(int(y1 - y0), int(x1 - x0))} for its region "
                    f"{(int(x0), int(y0), int(x1), int(y1))}, found {crop.shape}"
                )
        if n and (self.class_ids.min() < 0 or self.class_ids.max() >= len(self.class_names)):
            raise ValueError(
                f"Instances.class_ids: expected indices into the {len(self.class_names)} class names, found "
                f"{int(self.class_ids.min())}..{int(self.class_ids.max())}"
            )

    @classmethod
    def empty(cls, image_size: tuple[int, int], class_names: Sequence[str]) -> Instances:
        """No instances in an image of ``image_size`` (height, width)."""
        return cls(
            image_size=image_size,
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
            class_ids=np.zeros((0,), np.int32),
            class_names=tuple(class_names),
        )

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def has_masks(self) -> bool:
        return len(self.masks) == len(self) and len(self) > 0

    def __getitem__(self, index: npt.NDArray[np.bool_] | npt.NDArray[np.integer] | slice) -> Instances:
        """Select instances by boolean mask, integer indices or slice; all fields at once."""
        idx = np.arange(len(self))[index]
        masks = tuple(self.masks[i] for i in idx) if self.masks else ()
        mask_boxes = self.mask_boxes[idx] if self.masks else self.mask_boxes
        return Instances(
            image_size=self.image_size,
            boxes=self.boxes[idx],
            scores=self.scores[idx],
            class_ids=self.class_ids[idx],
            class_names=self.class_names,
            masks=masks,
            mask_boxes=mask_boxes,
        )

    @property
    def names(self) -> list[str]:
        """Class name of each instance."""
        return [self.class_names[c] for c in self.class_ids]

    @property
    def areas(self) -> npt.NDArray[np.int64]:
        """Mask pixel count per instance, or the rounded box area where there are no masks."""
        if self.has_masks:
            return np.array([int(np.count_nonzero(m)) for m in self.masks], np.int64)
        wh = np.clip(self.boxes[:, 2:] - self.boxes[:, :2], 0, None)
        return np.round(wh[:, 0] * wh[:, 1]).astype(np.int64)

    def full_mask(self, i: int) -> BoolArray:
        """Instance ``i``'s mask as a full (height, width) boolean image."""
        out = np.zeros(self.image_size, np.bool_)
        if self.masks:
            x0, y0, x1, y1 = self.mask_boxes[i]
            out[y0:y1, x0:x1] = self.masks[i]
        return out


def _describe(value: object) -> str:
    """dtype and shape of an array, or the type of anything else, for error messages."""
    if isinstance(value, np.ndarray):
        return f"{value.dtype} {value.shape}"
    return type(value).__name__


def _check_array(
    name: str, value: object, dtype: type[np.generic], dtype_name: str, n: int | None, width: int | None = None
) -> int:
    """Refuse ``Instances.<name>`` unless it is a ``dtype`` array of shape (n,) or (n, width);
    ``n`` None takes the length from the array. Returns n."""
    expected_shape = f"({'n' if n is None else n},{'' if width is None else f' {width}'})"
    ndim = 1 if width is None else 2
    if (
        not isinstance(value, np.ndarray)
        or value.dtype != dtype
        or value.ndim != ndim
        or (n is not None and value.shape[0] != n)
        or (width is not None and value.shape[1] != width)
    ):
        raise ValueError(f"Instances.{name}: expected {dtype_name} {expected_shape}, found {_describe(value)}")
    return int(value.shape[0])


@dataclass(frozen=True, eq=False)
class FrameResult:
    """What the pipeline publishes for one frame: the frame, its instances and its costs.

    Attributes:
        frame: the captured frame (image, id, source, capture timestamp, name).
        instances: the instances, in original-image pixels.
        model: the model's name (file stem or bundle name).
        resolution: (height, width) of the network input used for this frame.
        latency_ms: time spent per stage on this frame, stage name to milliseconds.
        analytics: track ids, zones, line crossings and events of this frame when tracking is on
            (``edgeseg.analytics``), else None.
        camera: the name of the camera the frame came from (MQTT-topic safe); "" where a code
            path has no camera (the self-test, bench's sequential loop).
    """

    frame: Frame
    instances: Instances
    model: str
    resolution: tuple[int, int]
    latency_ms: dict[str, float] = field(default_factory=dict)
    analytics: Optional[Analytics] = None
    camera: str = ""
