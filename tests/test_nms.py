"""Class-aware hard NMS and Soft-NMS (edgeseg.postprocess.nms), as tables of hand-computed cases."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from edgeseg.postprocess.nms import suppress
from edgeseg.postprocess.settings import PostprocessSettings

#: Scores are compared to this relative tolerance: boxes enter OpenCV's Soft-NMS at 1/16 px.
SCORE_RTOL = 1e-3

HARD = PostprocessSettings(conf_threshold=0.01, nms="hard", iou_threshold=0.5)
GAUSS = PostprocessSettings(conf_threshold=0.01, nms="gaussian", soft_sigma=0.5)
LINEAR = PostprocessSettings(conf_threshold=0.01, nms="linear", iou_threshold=0.3)

UNKNOWN_METHOD = replace(GAUSS, nms="greedy")  # type: ignore[arg-type]

# Three boxes in a row: A-B and B-C overlap with IoU 50/150 = 1/3, A-C do not overlap.
ROW = [[0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 20, 10]]
ROW_SCORES = [0.9, 0.8, 0.7]
# Gaussian, sigma 0.5: B decays by exp(-(1/3)^2 / 0.5) = 0.800737 after A and again after C.
G = math.exp(-(1 / 9) / 0.5)


def _case(
    boxes: Sequence[Sequence[float]], scores: Sequence[float], classes: Sequence[int]
) -> dict[str, Any]:
    return {
        "boxes": np.array(boxes, np.float32).reshape(-1, 4),
        "scores": np.array(scores, np.float32),
        "class_ids": np.array(classes, np.int32),
    }


@pytest.mark.parametrize(
    ("case", "settings", "keep", "scores"),
    [
        # Hard NMS: same class, IoU 0.81 > 0.5: the lower one goes.
        (_case([[0, 0, 10, 10], [1, 1, 10, 10]], [0.9, 0.8], [0, 0]), HARD, [0], [0.9]),
        # Class-aware: the same two boxes in different classes both stay.
        (_case([[0, 0, 10, 10], [1, 1, 10, 10]], [0.9, 0.8], [0, 1]), HARD, [0, 1], [0.9, 0.8]),
        # IoU 1/3 < 0.5: both stay; output is by score, not by input order.
        (_case(ROW[:2], [0.3, 0.8], [2, 2]), HARD, [1, 0], [0.8, 0.3]),
        # Negative coordinates (objects cut by the input border), different classes, boxes that
        # OpenCV's own class offset would make coincide: both stay.
        (_case([[590, 590, 640, 640], [-51, -51, -1, -1]], [0.9, 0.8], [0, 1]), HARD, [0, 1], [0.9, 0.8]),
        # Below conf_threshold: dropped before NMS.
        (_case(ROW, [0.9, 0.005, 0.7], [0, 0, 0]), HARD, [0, 2], [0.9, 0.7]),
        # Gaussian: A keeps 0.9, C (untouched by A) 0.7 is picked before the twice-decayed B.
        (_case(ROW, ROW_SCORES, [0, 0, 0]), GAUSS, [0, 2, 1], [0.9, 0.7, 0.8 * G * G]),
        # Gaussian, identical boxes in different classes: no decay at all.
        (_case([ROW[0], ROW[0]], [0.9, 0.8], [3, 4]), GAUSS, [0, 1], [0.9, 0.8]),
        # Gaussian decay below conf_threshold drops: 0.3 * exp(-1 / 0.5) = 0.0406 < 0.1.
        (_case([ROW[0], ROW[0]], [0.9, 0.3], [0, 0]), replace(GAUSS, conf_threshold=0.1), [0], [0.9]),
        # Sub-pixel boxes: IoU 3/5 (not what whole-pixel rounding gives): 0.8 * exp(-0.36 / 0.5).
        (
            _case([[0, 0, 2, 2], [0.5, 0, 2.5, 2]], [0.9, 0.8], [0, 0]),
            GAUSS,
            [0, 1],
            [0.9, 0.8 * math.exp(-0.72)],
        ),
        # Linear, IoU 1/3 > 0.3: B * (1 - 1/3) after A and again after C.
        (_case(ROW, ROW_SCORES, [0, 0, 0]), LINEAR, [0, 2, 1], [0.9, 0.7, 0.8 * (2 / 3) ** 2]),
        # Linear, IoU 1/3 <= 0.5: no decay, plain score order.
        (_case(ROW, ROW_SCORES, [0, 0, 0]), replace(LINEAR, iou_threshold=0.5), [0, 1, 2], ROW_SCORES),
    ],
)
def test_suppress_table(
    case: dict[str, Any], settings: PostprocessSettings, keep: list[int], scores: list[float]
) -> None:
    got_keep, got_scores = suppress(case["boxes"], case["scores"], case["class_ids"], settings)
    assert got_keep.tolist() == keep
    assert got_scores.dtype == np.float32
    assert got_scores == pytest.approx(scores, rel=SCORE_RTOL)


@pytest.mark.parametrize("method", ["hard", "gaussian", "linear"])
def test_max_detections_keeps_the_best(method: str) -> None:
    boxes = np.array([[20 * i, 0, 20 * i + 10, 10] for i in range(6)], np.float32)
    scores = np.array([0.2, 0.9, 0.4, 0.8, 0.3, 0.6], np.float32)
    settings = PostprocessSettings(conf_threshold=0.01, nms=method, max_detections=3)  # type: ignore[arg-type]
    keep, new_scores = suppress(boxes, scores, np.zeros(6, np.int32), settings)
    assert keep.tolist() == [1, 3, 5]
    assert new_scores == pytest.approx([0.9, 0.8, 0.6])


@pytest.mark.parametrize("method", ["hard", "gaussian", "linear"])
def test_max_candidates_limits_the_input(method: str) -> None:
    boxes = np.array([[20 * i, 0, 20 * i + 10, 10] for i in range(4)], np.float32)
    scores = np.array([0.5, 0.9, 0.7, 0.8], np.float32)
    settings = PostprocessSettings(conf_threshold=0.01, nms=method, max_candidates=2)  # type: ignore[arg-type]
    keep, _ = suppress(boxes, scores, np.zeros(4, np.int32), settings)
    assert keep.tolist() == [1, 3]


@pytest.mark.parametrize("method", ["hard", "gaussian", "linear"])
def test_empty_input_gives_empty_output(method: str) -> None:
    settings = PostprocessSettings(nms=method)  # type: ignore[arg-type]
    keep, scores = suppress(
        np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32), settings
    )
    assert keep.shape == (0,) and scores.shape == (0,)
    assert keep.dtype == np.intp and scores.dtype == np.float32


@pytest.mark.parametrize(
    ("boxes", "scores", "settings", "message"),
    [
        (np.zeros((2, 4), np.float32), np.zeros(3, np.float32), GAUSS, "must be"),
        (np.zeros((1, 4), np.float32), np.ones(1, np.float32), replace(GAUSS, soft_sigma=0.0), "soft_sigma"),
        (np.zeros((1, 4), np.float32), np.ones(1, np.float32), UNKNOWN_METHOD, "nms must be"),
    ],
)
def test_suppress_refuses_bad_input(
    boxes: npt.NDArray[np.float32],
    scores: npt.NDArray[np.float32],
    settings: PostprocessSettings,
    message: str,
) -> None:
    with pytest.raises(ValueError, match=message):
        suppress(boxes, scores, np.zeros(len(scores), np.int32), settings)


def _naive_soft_nms(
    boxes: npt.NDArray[np.float64],
    scores: npt.NDArray[np.float64],
    classes: npt.NDArray[np.int32],
    settings: PostprocessSettings,
) -> tuple[list[int], list[float]]:
    """Textbook Soft-NMS, one pick at a time, in float64: the reference for random inputs."""
    current = scores.astype(np.float64).copy()
    alive = current >= settings.conf_threshold
    keep: list[int] = []
    kept_scores: list[float] = []
    while alive.any() and len(keep) < settings.max_detections:
        best = int(np.argmax(np.where(alive, current, -np.inf)))
        keep.append(best)
        kept_scores.append(float(current[best]))
        alive[best] = False
        lt = np.maximum(boxes[best, :2], boxes[:, :2])
        rb = np.minimum(boxes[best, 2:], boxes[:, 2:])
        inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
        area = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
        iou = inter / (area[best] + area - inter)
        same = alive & (classes == classes[best])
        if settings.nms == "gaussian":
            current[same] *= np.exp(-(iou[same] ** 2) / settings.soft_sigma)
        else:
            decay = same & (iou > settings.iou_threshold)
            current[decay] *= 1 - iou[decay]
        alive &= current >= settings.conf_threshold
    return keep, kept_scores


@pytest.mark.parametrize("settings", [GAUSS, LINEAR, replace(GAUSS, conf_threshold=0.3, max_detections=20)])
def test_soft_nms_matches_textbook_on_random_boxes(settings: PostprocessSettings) -> None:
    rng = np.random.default_rng(7)
    xy = rng.uniform(-20, 600, (80, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(2, 120, (80, 2))], axis=1)
    scores = rng.uniform(0.05, 1.0, 80)
    classes = rng.integers(0, 3, 80).astype(np.int32)
    keep, new_scores = suppress(boxes.astype(np.float32), scores.astype(np.float32), classes, settings)
    ref_keep, ref_scores = _naive_soft_nms(boxes, scores, classes, settings)
    assert keep.tolist() == ref_keep
    assert new_scores == pytest.approx(ref_scores, rel=SCORE_RTOL)
