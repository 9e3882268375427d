"""``Instances`` refuses wrong dtypes and shapes where it is made, in one line naming the field.

The producers (the postprocessor, ``Instances.empty``, selection by index) make float32 boxes and
scores, int32 class ids, int32 mask regions and boolean crops; anything else is refused on
construction rather than three modules later in a sink.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edgeseg.decode.candidates import Candidates
from edgeseg.geometry import Letterbox
from edgeseg.postprocess import Postprocessor, PostprocessSettings
from edgeseg.structures import Instances

NAMES = ("a", "b", "c")
SIZE = (40, 60)


def _fields(n: int = 2, with_masks: bool = True) -> dict[str, Any]:
    """Valid keyword arguments for ``n`` instances, each with a 4x5 crop at (x0, y0) = (i, i)."""
    regions = np.array([[i, i, i + 5, i + 4] for i in range(n)], np.int32).reshape(n, 4)
    return {
        "image_size": SIZE,
        "boxes": regions.astype(np.float32),
        "scores": np.linspace(0.9, 0.5, n).astype(np.float32),
        "class_ids": (np.arange(n) % len(NAMES)).astype(np.int32),
        "class_names": NAMES,
        "masks": tuple(np.ones((4, 5), np.bool_) for _ in range(n)) if with_masks else (),
        "mask_boxes": regions if with_masks else np.zeros((0, 4), np.int32),
    }


VALID = {
    "two with masks": _fields(2),
    "two without masks": _fields(2, with_masks=False),
    "one": _fields(1),
    "empty, right dtypes": _fields(0, with_masks=False),
    "empty crop of an empty region": {
        **_fields(1),
        "masks": (np.zeros((0, 0), np.bool_),),
        "mask_boxes": np.array([[3, 3, 3, 3]], np.int32),
    },
    "numpy ints as image size": {**_fields(1), "image_size": (np.int64(40), np.int32(60))},
}


@pytest.mark.parametrize("fields", VALID.values(), ids=VALID.keys())
def test_valid_constructions_are_accepted(fields: dict[str, Any]) -> None:
    instances = Instances(**fields)
    n = len(fields["boxes"])
    assert len(instances) == n
    assert instances[np.arange(n) >= 0].boxes.dtype == np.float32  # selection keeps the dtypes
    assert instances[:0].class_ids.dtype == np.int32


def test_empty_has_the_right_dtypes_and_selects() -> None:
    empty = Instances.empty(SIZE, ["a"])
    assert (empty.boxes.dtype, empty.scores.dtype, empty.class_ids.dtype) == (np.float32, np.float32, np.int32)
    assert empty.boxes.shape == (0, 4) and empty.mask_boxes.shape == (0, 4) and empty.masks == ()
    assert len(empty[np.zeros(0, np.bool_)]) == 0


def _with(**changes: Any) -> dict[str, Any]:
    return {**_fields(2), **changes}


INVALID = {
    # field: the message names the field, the expected and the found dtype/shape
    "int64 boxes": (
        _with(boxes=np.zeros((2, 4), np.int64)),
        "Instances.boxes: expected float32 (n, 4), found int64 (2, 4)",
    ),
    "float64 boxes": (_with(boxes=np.zeros((2, 4))), "Instances.boxes: expected float32 (n, 4), found float64 (2, 4)"),
    "boxes (n, 5)": (
        _with(boxes=np.zeros((2, 5), np.float32)),
        "Instances.boxes: expected float32 (n, 4), found float32 (2, 5)",
    ),
    "flat boxes": (
        _with(boxes=np.zeros(8, np.float32)),
        "Instances.boxes: expected float32 (n, 4), found float32 (8,)",
    ),
    "boxes as a list": (
        _with(boxes=[[0.0, 0.0, 1.0, 1.0]] * 2),
        "Instances.boxes: expected float32 (n, 4), found list",
    ),
    "float64 scores": (
        _with(scores=np.array([0.9, 0.5])),
        "Instances.scores: expected float32 (2,), found float64 (2,)",
    ),
    "scores of another n": (
        _with(scores=np.zeros(3, np.float32)),
        "Instances.scores: expected float32 (2,), found float32 (3,)",
    ),
    "float class ids": (
        _with(class_ids=np.array([0.0, 1.0], np.float32)),
        "Instances.class_ids: expected int32 (2,), found float32 (2,)",
    ),
    "int64 class ids": (
        _with(class_ids=np.array([0, 1], np.int64)),
        "Instances.class_ids: expected int32 (2,), found int64 (2,)",
    ),
    "class ids (n, 1)": (
        _with(class_ids=np.zeros((2, 1), np.int32)),
        "Instances.class_ids: expected int32 (2,), found int32 (2, 1)",
    ),
    "class id out of range": (
        _with(class_ids=np.array([0, 3], np.int32)),
        "Instances.class_ids: expected indices into the 3 class names",
    ),
    "negative class id": (_with(class_ids=np.array([-1, 0], np.int32)), "found -1..0"),
    "masks for another n": (
        _with(masks=(np.ones((4, 5), np.bool_),)),
        "Instances.masks: expected 0 or 2 crops (one per instance), found 1",
    ),
    "masks as a list": (_with(masks=[np.ones((4, 5), np.bool_)] * 2), "Instances.masks: expected a tuple"),
    "uint8 crop": (
        _with(masks=(np.ones((4, 5), np.uint8), np.ones((4, 5), np.bool_))),
        "Instances.masks[0]: expected a 2-D bool crop, found uint8 (4, 5)",
    ),
    "3-D crop": (
        _with(masks=(np.ones((4, 5), np.bool_), np.ones((1, 4, 5), np.bool_))),
        "Instances.masks[1]: expected a 2-D bool crop, found bool (1, 4, 5)",
    ),
    "full-frame masks array": (_with(masks=np.ones((2, *SIZE), np.bool_)), "Instances.masks: expected a tuple"),
    "crop of another shape than its region": (
        _with(masks=(np.ones((4, 5), np.bool_), np.ones((5, 4), np.bool_))),
        "Instances.masks[1]: expected shape (4, 5) for its region (1, 1, 6, 5), found (5, 4)",
    ),
    "float mask_boxes": (
        _with(mask_boxes=np.zeros((2, 4), np.float32)),
        "Instances.mask_boxes: expected int32 (2, 4), found float32 (2, 4)",
    ),
    "mask_boxes of another n": (
        _with(mask_boxes=np.zeros((1, 4), np.int32)),
        "Instances.mask_boxes: expected int32 (2, 4), found int32 (1, 4)",
    ),
    "mask_boxes without masks": (
        _with(masks=(), mask_boxes=np.zeros((2, 4), np.int32)),
        "Instances.mask_boxes: expected int32 (0, 4), found int32 (2, 4)",
    ),
    "image size of three": (_with(image_size=(40, 60, 3)), "Instances.image_size: expected (height, width)"),
    "float image size": (_with(image_size=(40.0, 60.0)), "Instances.image_size: expected (height, width)"),
    "zero image size": (_with(image_size=(0, 60)), "Instances.image_size: expected (height, width)"),
    "class names as a list": (_with(class_names=list(NAMES)), "Instances.class_names: expected a tuple of str"),
}


@pytest.mark.parametrize("fields, message", INVALID.values(), ids=INVALID.keys())
def test_invalid_constructions_are_refused_in_one_line(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        Instances(**fields)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_empty_instances_with_wrong_dtypes_are_refused() -> None:
    fields = _fields(0, with_masks=False)
    with pytest.raises(ValueError, match=r"Instances.class_ids: expected int32 \(0,\), found int64 \(0,\)"):
        Instances(**{**fields, "class_ids": np.zeros(0, np.int64)})
    with pytest.raises(ValueError, match=r"Instances.boxes: expected float32 \(n, 4\), found float64 \(0, 4\)"):
        Instances(**{**fields, "boxes": np.zeros((0, 4))})


def _candidates(class_dtype: type[np.generic]) -> Candidates:
    """Two well-separated candidates with prototypes, in the dtypes a decoder might hand over."""
    k, ph, pw = 4, 8, 8
    return Candidates(
        boxes=np.array([[2, 2, 12, 12], [20, 20, 30, 30]], np.float32),
        scores=np.array([0.9, 0.8], np.float32),
        class_ids=np.array([0, 2], class_dtype),
        coefficients=np.ones((2, k), np.float32),
        protos=np.ones((k, ph, pw), np.float32),
    )


@pytest.mark.parametrize("nms", ["hard", "gaussian"])
@pytest.mark.parametrize("masks", [True, False])
@pytest.mark.parametrize("class_dtype", [np.int32, np.int64])
def test_the_postprocessor_produces_conforming_instances(nms: str, masks: bool, class_dtype: type[np.generic]) -> None:
    """Whatever integer width the decoder gives, the producer hands on the documented dtypes."""
    post = Postprocessor(PostprocessSettings(nms=nms, masks=masks), NAMES)  # type: ignore[arg-type]
    letterbox = Letterbox.fit((24, 32), (32, 32))
    out = post(_candidates(class_dtype), letterbox)
    assert len(out) == 2
    assert (out.boxes.dtype, out.scores.dtype, out.class_ids.dtype) == (np.float32, np.float32, np.int32)
    assert out.mask_boxes.dtype == np.int32
    assert all(m.dtype == np.bool_ for m in out.masks) and out.has_masks is masks
