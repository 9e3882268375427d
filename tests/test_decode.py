"""Decoder of the yolov8-seg layout: selection, box conversion, multi-label, top-k."""

from __future__ import annotations

import numpy as np
import pytest

from edgeseg.decode.prototype import decode_prototype_outputs

NC, K = 3, 2


def _preds(columns: list[tuple[tuple[float, float, float, float], tuple[float, ...], tuple[float, ...]]]) -> np.ndarray:
    rows = [list(box) + list(scores) + list(coef) for box, scores, coef in columns]
    return np.asarray(rows, np.float32).T[None]


PROTOS = np.zeros((1, K, 8, 8), np.float32)


@pytest.mark.parametrize(
    "columns, conf, multi, expected",
    [
        # one anchor, best class 1
        ([((10, 20, 4, 6), (0.1, 0.9, 0.3), (1, 2))], 0.25, False, [(1, 0.9, (8, 17, 12, 23))]),
        # below threshold: nothing
        ([((10, 20, 4, 6), (0.1, 0.2, 0.1), (1, 2))], 0.25, False, []),
        # multi-label: two classes above the threshold
        (
            [((10, 20, 4, 6), (0.5, 0.9, 0.1), (1, 2))], 0.25, True,
            [(0, 0.5, (8, 17, 12, 23)), (1, 0.9, (8, 17, 12, 23))],
        ),
        # single-label keeps the best only
        ([((10, 20, 4, 6), (0.5, 0.9, 0.1), (1, 2))], 0.25, False, [(1, 0.9, (8, 17, 12, 23))]),
    ],
)
def test_decode_table(columns, conf, multi, expected) -> None:
    c = decode_prototype_outputs(_preds(columns), PROTOS, NC, conf, multi_label=multi)
    got = sorted((int(k), round(float(s), 3), tuple(np.round(b, 3))) for k, s, b in zip(c.class_ids, c.scores, c.boxes))
    assert got == sorted(expected)
    assert c.coefficients.shape == (len(expected), K)
    if expected:
        np.testing.assert_allclose(c.coefficients[0], [1, 2])


def test_top_k_keeps_the_highest_scores() -> None:
    columns = [((5, 5, 2, 2), (s, 0, 0), (0, 0)) for s in np.linspace(0.3, 0.9, 20)]
    c = decode_prototype_outputs(_preds(columns), PROTOS, NC, 0.25, max_candidates=5)
    assert len(c) == 5
    assert np.all(c.scores >= 0.74)


def test_wrong_row_count_is_refused() -> None:
    with pytest.raises(ValueError, match="expected 4 \\+ 4 classes \\+ 2 coefficients"):
        decode_prototype_outputs(_preds([((1, 1, 1, 1), (0.5, 0.5, 0.5), (0, 0))]), PROTOS, 4, 0.25)
