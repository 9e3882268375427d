"""Decoder for prototype-mask models (YOLACT family) in the yolov8-seg output layout.

``preds`` is [1, 4 + nc + k, N]: per candidate (column) a box cx, cy, w, h in input pixels,
``nc`` class scores already in 0..1 and ``k`` mask coefficients; ``protos`` is [1, k, H/4, W/4].
The decoder only selects and reshapes: confidence filter, optional multi-label expansion, top-k.
It works on the class-score rows first so that the full (N, 4 + nc + k) transpose, 3.9 MB at
640, is never made; only the few hundred survivors are gathered.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from edgeseg.decode.candidates import Candidates

#: Rows of the box in the prediction tensor (cx, cy, w, h).
BOX_ROWS = 4


def decode_prototype_outputs(
    preds: npt.NDArray[np.float32],
    protos: npt.NDArray[np.float32],
    num_classes: int,
    conf_threshold: float,
    multi_label: bool = False,
    max_candidates: int = 30000,
) -> Candidates:
    """Candidates whose class score exceeds ``conf_threshold``, in network-input pixels.

    Args:
        preds: [1, 4 + num_classes + k, N] prediction tensor.
        protos: [1, k, ph, pw] prototype tensor.
        num_classes: nc; the remaining rows after the box and scores are mask coefficients.
        conf_threshold: minimum class score.
        multi_label: one candidate per (anchor, class) above the threshold rather than per
            anchor with its best class; COCO evaluation protocols use this.
        max_candidates: keep at most this many, highest scores first.
    """
    if preds.ndim != 3 or preds.shape[0] != 1 or protos.ndim != 4 or protos.shape[0] != 1:
        raise ValueError(f"expected preds [1, C, N] and protos [1, k, h, w], got {preds.shape}, {protos.shape}")
    k = protos.shape[1]
    rows = preds.shape[1]
    if rows != BOX_ROWS + num_classes + k:
        raise ValueError(f"preds has {rows} rows, expected 4 + {num_classes} classes + {k} coefficients")
    p = preds[0]
    class_scores = p[BOX_ROWS : BOX_ROWS + num_classes]
    if multi_label:
        cls_idx, anchor_idx = np.nonzero(class_scores > conf_threshold)
        scores = class_scores[cls_idx, anchor_idx]
    else:
        # A max-reduction over all anchors is cheap; argmax only over the survivors.
        anchor_idx = np.flatnonzero(class_scores.max(axis=0) > conf_threshold)
        survivors = class_scores[:, anchor_idx]
        cls_idx = survivors.argmax(axis=0)
        scores = survivors[cls_idx, np.arange(len(anchor_idx))]
    if len(scores) > max_candidates:
        top = np.argpartition(-scores, max_candidates - 1)[:max_candidates]
        anchor_idx, cls_idx, scores = anchor_idx[top], cls_idx[top], scores[top]

    cxcywh = p[:BOX_ROWS, anchor_idx].T
    half = cxcywh[:, 2:] / 2
    boxes = np.concatenate([cxcywh[:, :2] - half, cxcywh[:, :2] + half], axis=1)
    coefficients = np.ascontiguousarray(p[BOX_ROWS + num_classes :, anchor_idx].T)
    return Candidates(
        boxes=boxes.astype(np.float32, copy=False),
        scores=scores.astype(np.float32, copy=False),
        class_ids=cls_idx.astype(np.int32),
        coefficients=coefficients.astype(np.float32, copy=False),
        protos=protos[0].astype(np.float32, copy=False),
    )
