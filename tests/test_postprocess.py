"""Postprocessing: mask crops from prototypes, refinement, and the Postprocessor as a whole.

Mask accuracy is checked on real model outputs (../shared/realdata) against the naive recipe
(sigmoid, upsample to the input, crop to the box, strip the padding, resize to the original),
and on synthetic prototypes whose exact answer is known (linear ramps, edge clamping).
"""

from __future__ import annotations

import ast
import math
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from edgeseg.decode.candidates import Candidates
from edgeseg.decode.prototype import decode_prototype_outputs
from edgeseg.geometry import Letterbox
from edgeseg.postprocess import Postprocessor, crop_masks, logit, pixel_regions, refine_masks, suppress
from edgeseg.postprocess.masks import ProtoGrid
from edgeseg.postprocess.settings import PostprocessSettings, RefineSettings

#: Letterbox fill value of Ultralytics preprocessing.
PAD_VALUE = 114
#: Network input of the static real model.
INPUT_SIZE = (640, 640)
#: Real images: one with gain 1 (the resize path), one with gain 1.28 and odd padding (the
#: warpAffine path); each has an instance touching the image border.
ALIGNED_IMAGE = "000000005001.jpg"
UNALIGNED_IMAGE = "000000011813.jpg"
#: Confidence for the real-data checks: real objects only.
REAL_CONF = 0.25
#: Required agreement with the full-resolution reference.
MIN_INSTANCE_IOU = 0.9
MIN_MEAN_IOU = 0.97

BoolArray = npt.NDArray[np.bool_]


# --------------------------------------------------------------------------------------------
# Real model outputs


class RealFrame(NamedTuple):
    candidates: Candidates
    letterbox: Letterbox
    class_names: tuple[str, ...]


def _letterbox_tensor(image: npt.NDArray[np.uint8], letterbox: Letterbox) -> npt.NDArray[np.float32]:
    """Resize with the gain, pad with 114, RGB, /255, NCHW float32 (as Ultralytics does)."""
    rh, rw = letterbox.resized
    canvas = np.full((*letterbox.input_size, 3), PAD_VALUE, np.uint8)
    canvas[letterbox.pad_y : letterbox.pad_y + rh, letterbox.pad_x : letterbox.pad_x + rw] = cv2.resize(
        image, (rw, rh), interpolation=cv2.INTER_LINEAR
    )
    return np.ascontiguousarray(canvas[:, :, ::-1].transpose(2, 0, 1)[None], np.float32) / 255.0


@pytest.fixture(scope="module")
def real_frames(model_640: Path, val_images: Path) -> dict[str, RealFrame]:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(model_640), providers=["CPUExecutionProvider"])
    names_map = ast.literal_eval(session.get_modelmeta().custom_metadata_map["names"])
    names = tuple(names_map[i] for i in range(len(names_map)))
    frames = {}
    for name in (ALIGNED_IMAGE, UNALIGNED_IMAGE):
        raw = cv2.imread(str(val_images / name))
        assert raw is not None, f"cannot read {val_images / name}"
        image = np.asarray(raw, np.uint8)
        letterbox = Letterbox.fit(image.shape[:2], INPUT_SIZE)
        preds, protos = session.run(None, {session.get_inputs()[0].name: _letterbox_tensor(image, letterbox)})
        candidates = decode_prototype_outputs(preds, protos, len(names), REAL_CONF)
        frames[name] = RealFrame(candidates, letterbox, names)
    return frames


def _reference_masks(candidates: Candidates, letterbox: Letterbox) -> list[BoolArray]:
    """The naive recipe, one full-resolution mask per candidate."""
    k, ph, pw = candidates.protos.shape
    input_h, input_w = letterbox.input_size
    centres_x = np.arange(input_w) + 0.5
    centres_y = np.arange(input_h) + 0.5
    rh, rw = letterbox.resized
    h, w = letterbox.image_size
    masks = []
    for coefficients, (bx0, by0, bx1, by1) in zip(candidates.coefficients, candidates.boxes):
        probability = 1.0 / (1.0 + np.exp(-(coefficients @ candidates.protos.reshape(k, -1)).reshape(ph, pw)))
        upsampled = cv2.resize(probability, (input_w, input_h), interpolation=cv2.INTER_LINEAR)
        inside = ((centres_x >= bx0) & (centres_x < bx1))[None, :] & ((centres_y >= by0) & (centres_y < by1))[:, None]
        unpadded = (upsampled * inside)[letterbox.pad_y : letterbox.pad_y + rh, letterbox.pad_x : letterbox.pad_x + rw]
        masks.append(cv2.resize(unpadded, (w, h), interpolation=cv2.INTER_LINEAR) > 0.5)
    return masks


def _iou(a: BoolArray, b: BoolArray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


@pytest.mark.realdata
@pytest.mark.parametrize("image_name", [ALIGNED_IMAGE, UNALIGNED_IMAGE])
def test_real_masks_match_full_resolution_reference(real_frames: dict[str, RealFrame], image_name: str) -> None:
    frame = real_frames[image_name]
    settings = PostprocessSettings(conf_threshold=REAL_CONF, nms="gaussian")
    instances = Postprocessor(settings, frame.class_names)(frame.candidates, frame.letterbox)
    keep, _ = suppress(frame.candidates.boxes, frame.candidates.scores, frame.candidates.class_ids, settings)
    kept = frame.candidates.select(keep)
    assert len(instances) == len(kept) > 0 and instances.has_masks
    np.testing.assert_allclose(instances.boxes, frame.letterbox.boxes_to_image(kept.boxes))

    ious = [_iou(instances.full_mask(i), ref) for i, ref in enumerate(_reference_masks(kept, frame.letterbox))]
    assert min(ious) > MIN_INSTANCE_IOU, ious
    assert float(np.mean(ious)) > MIN_MEAN_IOU, ious


@pytest.mark.realdata
@pytest.mark.parametrize("image_name", [ALIGNED_IMAGE, UNALIGNED_IMAGE])
def test_real_masks_stay_inside_their_boxes(real_frames: dict[str, RealFrame], image_name: str) -> None:
    frame = real_frames[image_name]
    instances = Postprocessor(PostprocessSettings(conf_threshold=REAL_CONF), frame.class_names)(
        frame.candidates, frame.letterbox
    )
    h, w = frame.letterbox.image_size
    assert instances.mask_boxes.dtype == np.int32
    regions = instances.mask_boxes.astype(np.float64)
    # Every pixel of a region has its centre inside the box, and the region is inside the image.
    assert np.all(regions[:, :2] + 0.5 >= instances.boxes[:, :2])
    assert np.all(regions[:, 2:] - 0.5 <= instances.boxes[:, 2:])
    assert np.all(regions[:, :2] >= 0) and np.all(regions[:, 2] <= w) and np.all(regions[:, 3] <= h)
    assert any(crop.any() for crop in instances.masks)


@pytest.mark.realdata
@pytest.mark.parametrize("image_name", [ALIGNED_IMAGE, UNALIGNED_IMAGE])
def test_real_instance_touching_the_border(real_frames: dict[str, RealFrame], image_name: str) -> None:
    frame = real_frames[image_name]
    settings = PostprocessSettings(conf_threshold=REAL_CONF)
    instances = Postprocessor(settings, frame.class_names)(frame.candidates, frame.letterbox)
    h, w = frame.letterbox.image_size
    regions = instances.mask_boxes
    touching = np.flatnonzero((regions[:, 0] == 0) | (regions[:, 1] == 0) | (regions[:, 2] == w) | (regions[:, 3] == h))
    assert len(touching) > 0, "the test image was chosen for an instance at the image border"
    keep, _ = suppress(frame.candidates.boxes, frame.candidates.scores, frame.candidates.class_ids, settings)
    references = _reference_masks(frame.candidates.select(keep), frame.letterbox)
    for i in touching:
        mask = instances.full_mask(int(i))
        assert _iou(mask, references[i]) > MIN_INSTANCE_IOU
        edges = (mask[:, 0], mask[0, :], mask[:, -1], mask[-1, :])
        assert any(edge.any() for edge in edges), "a border instance's mask reaches the border"


@pytest.mark.realdata
def test_one_postprocessor_over_many_frames(real_frames: dict[str, RealFrame]) -> None:
    """Its reused workspace carries nothing from one frame into the next."""
    settings = PostprocessSettings(conf_threshold=REAL_CONF)
    names = real_frames[ALIGNED_IMAGE].class_names
    shared = Postprocessor(settings, names)
    for name in (ALIGNED_IMAGE, UNALIGNED_IMAGE, ALIGNED_IMAGE):
        frame = real_frames[name]
        got = shared(frame.candidates, frame.letterbox)
        fresh = Postprocessor(settings, names)(frame.candidates, frame.letterbox)
        assert len(got) == len(fresh) > 0
        assert all(np.array_equal(a, b) for a, b in zip(got.masks, fresh.masks))


@pytest.mark.realdata
def test_resize_and_warp_paths_agree(real_frames: dict[str, RealFrame]) -> None:
    frame = real_frames[ALIGNED_IMAGE]
    c = frame.candidates
    assert ProtoGrid.of(frame.letterbox, c.protos.shape[1:]).phase is not None
    regions = pixel_regions(frame.letterbox.boxes_to_image(c.boxes), frame.letterbox.image_size)
    fast = crop_masks(c.coefficients, c.protos, regions, frame.letterbox, 0.5, resize=True)
    general = crop_masks(c.coefficients, c.protos, regions, frame.letterbox, 0.5, resize=False)
    differing = sum(np.count_nonzero(a != b) for a, b in zip(fast, general))
    total = sum(a.size for a in fast)
    assert total > 0 and differing <= 1e-3 * total


# --------------------------------------------------------------------------------------------
# Synthetic prototypes with a known answer


#: The ramps below cross zero at prototype coordinate 80, i.e. input pixel (80 + 0.5) * 4 = 322.
RAMP_ZERO_INPUT = 322.0
PROTO_SIZE = 160


def _ramp_protos() -> npt.NDArray[np.float32]:
    """Two prototypes: cell value i - 80 along x, and along y. Bilinear sampling of a linear
    ramp is exact, so the expected mask is input coordinate > 322 wherever it is sampled."""
    ramp = np.arange(PROTO_SIZE, dtype=np.float32) - 80.0
    return np.stack([np.tile(ramp, (PROTO_SIZE, 1)), np.tile(ramp[:, None], (1, PROTO_SIZE))])


@pytest.mark.parametrize(
    ("image_size", "resize"),
    [
        ((480, 640), True),  # gain 1, pad_y 80: resize path
        ((720, 1280), True),  # gain 1/2
        ((1080, 1920), True),  # gain 1/3
        ((500, 333), True),  # gain 1.28, pad_x 107: no aligned start, warpAffine
        ((100, 100), True),  # gain 6.4: enlarged beyond what resize windows cover, warpAffine
        ((480, 640), False),  # warpAffine forced
    ],
)
def test_mask_boundary_of_a_linear_ramp(image_size: tuple[int, int], resize: bool) -> None:
    letterbox = Letterbox.fit(image_size, INPUT_SIZE)
    h, w = image_size
    regions = np.array([[0, 0, w, h], [0, 0, w, h]], np.int32)
    crops = crop_masks(np.eye(2, dtype=np.float32), _ramp_protos(), regions, letterbox, 0.5, resize=resize)
    expected_x = (np.arange(w) + 0.5) * letterbox.gain + letterbox.pad_x > RAMP_ZERO_INPUT
    expected_y = (np.arange(h) + 0.5) * letterbox.gain + letterbox.pad_y > RAMP_ZERO_INPUT
    np.testing.assert_array_equal(crops[0], np.broadcast_to(expected_x, (h, w)))
    np.testing.assert_array_equal(crops[1], np.broadcast_to(expected_y[:, None], (h, w)))


@pytest.mark.parametrize("resize", [True, False])
@pytest.mark.parametrize("side", ["left", "right"])
def test_mask_at_the_image_border_clamps_like_resize(resize: bool, side: str) -> None:
    """Edge cell 0.2, its neighbour 1.0, mask threshold at logit 0.15. The border pixel samples
    3/8 cell outside the outermost cell centre: clamping (what cv2.resize does) gives 0.2, set;
    extrapolation would give -0.1 and a zero border 0.125, both unset."""
    profile = np.ones(PROTO_SIZE, np.float32)
    profile[0 if side == "left" else -1] = 0.2
    protos = np.tile(profile, (PROTO_SIZE, 1))[None]
    letterbox = Letterbox.fit((640, 640), INPUT_SIZE)
    region = [[0, 100, 8, 108]] if side == "left" else [[632, 100, 640, 108]]
    threshold = 1 / (1 + math.exp(-0.15))
    regions = np.array(region, np.int32)
    (crop,) = crop_masks(np.ones((1, 1), np.float32), protos, regions, letterbox, threshold, resize=resize)
    assert crop.shape == (8, 8) and crop.all()


@pytest.mark.parametrize(
    ("boxes", "image_size", "expected"),
    [
        ([[0, 0, 10, 10]], (20, 20), [[0, 0, 10, 10]]),
        ([[0.4, 0.4, 0.6, 0.6]], (20, 20), [[0, 0, 1, 1]]),  # tiny box around pixel 0's centre
        ([[0.6, 0.6, 1.4, 1.4]], (20, 20), [[1, 1, 1, 1]]),  # between centres: empty region
        ([[2.5, 3.2, 7.5, 7.6]], (20, 20), [[2, 3, 7, 8]]),  # centre on the left edge is inside
        ([[-5, -5, 700, 500]], (480, 640), [[0, 0, 640, 480]]),  # clipped to the image
    ],
)
def test_pixel_regions(boxes: list[list[float]], image_size: tuple[int, int], expected: list[list[int]]) -> None:
    regions = pixel_regions(np.array(boxes, np.float32), image_size)
    assert regions.dtype == np.int32
    assert regions.tolist() == expected


@pytest.mark.parametrize(
    ("probability", "expected", "raises"),
    [
        (0.5, 0.0, None),
        (1 / (1 + math.exp(-1.5)), 1.5, None),
        (0.0, -math.inf, None),
        (1.0, math.inf, None),
        (1.5, None, ValueError),
    ],
)
def test_logit(probability: float, expected: float | None, raises: type[Exception] | None) -> None:
    if raises is not None:
        with pytest.raises(raises):
            logit(probability)
    else:
        assert logit(probability) == pytest.approx(expected)


def test_mask_threshold_moves_the_boundary() -> None:
    """At t = sigmoid(8) the ramp must reach 8, i.e. the boundary moves 8 cells = 32 pixels."""
    letterbox = Letterbox.fit((640, 640), INPUT_SIZE)
    regions = np.array([[0, 0, 640, 4]], np.int32)
    threshold = 1 / (1 + math.exp(-8.0))
    (crop,) = crop_masks(np.array([[1.0, 0.0]], np.float32), _ramp_protos(), regions, letterbox, threshold)
    expected = np.arange(640) + 0.5 > RAMP_ZERO_INPUT + 8 * 4
    np.testing.assert_array_equal(crop[0], expected)


# --------------------------------------------------------------------------------------------
# Refinement


def _speck_and_pinhole() -> BoolArray:
    crop = np.zeros((40, 40), np.bool_)
    crop[10:30, 10:30] = True
    crop[20, 20] = False  # pinhole
    crop[2, 2] = True  # speck
    return crop


@pytest.mark.parametrize(
    ("settings", "speck", "pinhole", "raises"),
    [
        (RefineSettings(), True, False, None),
        (RefineSettings(open_px=1), False, False, None),
        (RefineSettings(close_px=1), True, True, None),
        (RefineSettings(min_area=5), False, False, None),
        (RefineSettings(open_px=1, close_px=1), False, True, None),
        (RefineSettings(close_px=1, min_area=5), False, True, None),
        (RefineSettings(open_px=-1), None, None, ValueError),
    ],
)
def test_refine(
    settings: RefineSettings, speck: bool | None, pinhole: bool | None, raises: type[Exception] | None
) -> None:
    crops = (_speck_and_pinhole(), np.zeros((0, 5), np.bool_))
    if raises is not None:
        with pytest.raises(raises):
            refine_masks(crops, settings)
        return
    refined, empty = refine_masks(crops, settings)
    assert refined.dtype == np.bool_ and refined.shape == (40, 40) and empty.shape == (0, 5)
    assert bool(refined[2, 2]) is speck
    assert bool(refined[20, 20]) is pinhole
    assert refined[12:18, 12:18].all(), "the object itself survives"
    if not settings.enabled:
        assert refined is crops[0], "refinement off is a no-op"


# --------------------------------------------------------------------------------------------
# Postprocessor

NAMES = ("a", "b", "c")


def _candidates(boxes: list[list[float]], scores: list[float], classes: list[int]) -> Candidates:
    """Candidates over positive-everywhere prototypes: every mask fills its box."""
    n = len(boxes)
    return Candidates(
        boxes=np.array(boxes, np.float32).reshape(n, 4),
        scores=np.array(scores, np.float32),
        class_ids=np.array(classes, np.int32),
        coefficients=np.ones((n, 2), np.float32),
        protos=np.ones((2, 160, 160), np.float32),
    )


LETTERBOX_480 = Letterbox.fit((480, 640), INPUT_SIZE)  # pad_y 80


def test_postprocessor_zero_candidates() -> None:
    instances = Postprocessor(PostprocessSettings(), NAMES)(_candidates([], [], []), LETTERBOX_480)
    assert len(instances) == 0
    assert instances.image_size == (480, 640) and instances.class_names == NAMES
    assert instances.boxes.shape == (0, 4) and not instances.has_masks


def test_postprocessor_end_to_end() -> None:
    candidates = _candidates(
        [[100, 180, 200, 280], [105, 185, 200, 280], [300, 300, 420, 400], [10, 0, 50, 60]],
        [0.9, 0.8, 0.7, 0.95],
        [0, 0, 2, 1],
    )
    settings = PostprocessSettings(conf_threshold=0.3, nms="hard", iou_threshold=0.5)
    instances = Postprocessor(settings, NAMES)(candidates, LETTERBOX_480)
    # The duplicate goes (hard NMS); the box inside the top padding (y < 80) covers no pixel.
    assert instances.scores.tolist() == pytest.approx([0.9, 0.7])
    assert instances.names == ["a", "c"]
    np.testing.assert_allclose(instances.boxes, [[100, 100, 200, 200], [300, 220, 420, 320]])
    assert instances.mask_boxes.tolist() == [[100, 100, 200, 200], [300, 220, 420, 320]]
    assert all(crop.all() for crop in instances.masks)


def test_postprocessor_settings_are_swappable() -> None:
    candidates = _candidates([[100, 180, 200, 280], [300, 300, 420, 400]], [0.9, 0.4], [0, 1])
    postprocessor = Postprocessor(PostprocessSettings(conf_threshold=0.3), NAMES)
    assert len(postprocessor(candidates, LETTERBOX_480)) == 2
    postprocessor.settings = replace(postprocessor.settings, conf_threshold=0.5, masks=False)
    instances = postprocessor(candidates, LETTERBOX_480)
    assert len(instances) == 1 and not instances.has_masks
    # A per-call override wins over the attribute.
    assert len(postprocessor(candidates, LETTERBOX_480, PostprocessSettings(conf_threshold=0.1))) == 2


def test_postprocessor_applies_refinement() -> None:
    candidates = _candidates([[100, 180, 104, 184]], [0.9], [0])  # a 4 x 4 pixel mask
    settings = PostprocessSettings(refine=RefineSettings(min_area=17))
    (crop,) = Postprocessor(settings, NAMES)(candidates, LETTERBOX_480).masks
    assert crop.shape == (4, 4) and not crop.any()
