"""Target assignment: which anchors learn which ground-truth instance (task-aligned, as TOOD/YOLOv8).

For every (instance, anchor) pair the alignment metric is ``s**ALPHA * iou**BETA``: ``s`` the
anchor's predicted score for the instance's class, ``iou`` between its predicted box and the
instance's box. Per instance, the TOPK anchors with the highest metric among its candidates
become positives. Candidates are the anchors whose point lies inside the instance's box; an
instance that holds no anchor point (smaller than the finest stride) gets its nearest anchor,
so that no instance goes unlearned. An anchor claimed by several instances keeps the one its
box overlaps most.

Positives learn their instance's class with a soft target: the metric rescaled per instance so
that its best anchor gets that anchor's IoU (an IoU-aware classification score, which is what
NMS then ranks by). Every other anchor learns background. Assignment runs without gradients
on the detached predictions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: Weight of the class score and of the IoU in the alignment metric (YOLOv8's values).
ALPHA = 0.5
BETA = 6.0
#: Positives per instance at most.
TOPK = 10
EPS = 1e-9


@dataclass
class Assignment:
    """Per anchor, what it should predict.

    Attributes:
        foreground: [B, N] bool, the anchor is a positive.
        gt_index: [B, N] index of its instance in the batch's padded instance list (0 for background).
        target_boxes: [B, N, 4] xyxy of its instance.
        target_scores: [B, N, nc] soft class targets (0 for background).
    """

    foreground: Tensor
    gt_index: Tensor
    target_boxes: Tensor
    target_scores: Tensor

    @property
    def num_foreground(self) -> int:
        return int(self.foreground.sum())


def pairwise_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of xyxy boxes a [B, M, 4] and b [B, N, 4] -> [B, M, N]."""
    a = a.unsqueeze(2)
    b = b.unsqueeze(1)
    wh = (torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area_a + area_b - inter + EPS)


@torch.no_grad()
def assign(
    pred_scores: Tensor,
    pred_boxes: Tensor,
    anchors: Tensor,
    gt_labels: Tensor,
    gt_boxes: Tensor,
    gt_valid: Tensor,
    topk: int = TOPK,
) -> Assignment:
    """Task-aligned assignment (see the module notes).

    Args:
        pred_scores: [B, N, nc] class probabilities (after the sigmoid).
        pred_boxes: [B, N, 4] predicted xyxy boxes, input pixels.
        anchors: [N, 2] anchor points.
        gt_labels: [B, M] class indices; gt_boxes: [B, M, 4] xyxy; gt_valid: [B, M] (False on padding).
    """
    b, n, nc = pred_scores.shape
    m = gt_boxes.shape[1]
    device = pred_scores.device
    if m == 0 or not bool(gt_valid.any()):
        return Assignment(
            torch.zeros(b, n, dtype=torch.bool, device=device),
            torch.zeros(b, n, dtype=torch.long, device=device),
            torch.zeros(b, n, 4, device=device),
            torch.zeros(b, n, nc, device=device),
        )
    pred_scores, pred_boxes, gt_boxes = pred_scores.float(), pred_boxes.float(), gt_boxes.float()

    # Candidates: anchor points inside the box, or the nearest anchor for an instance holding none.
    lt = anchors.view(1, 1, n, 2) - gt_boxes[..., None, :2]
    rb = gt_boxes[..., None, 2:] - anchors.view(1, 1, n, 2)
    candidates = (torch.cat([lt, rb], -1).amin(-1) > EPS) & gt_valid[..., None]  # [B, M, N]
    lonely = gt_valid & ~candidates.any(-1)
    if bool(lonely.any()):
        centres = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2
        nearest = (centres[..., None, :] - anchors.view(1, 1, n, 2)).square().sum(-1).argmin(-1)  # [B, M]
        bi, mi = lonely.nonzero(as_tuple=True)
        candidates[bi, mi, nearest[bi, mi]] = True

    iou = pairwise_iou(gt_boxes, pred_boxes) * candidates  # [B, M, N]
    labels = gt_labels.clamp(0, nc - 1)
    scores = pred_scores.transpose(1, 2).gather(1, labels[..., None].expand(b, m, n))  # [B, M, N]
    metric = scores.pow(ALPHA) * iou.pow(BETA) * candidates

    # The top-k candidates per instance (a candidate with metric 0 still beats a non-candidate).
    k = min(topk, n)
    ranked = torch.where(candidates, metric, torch.full_like(metric, -1.0))
    top = ranked.topk(k, dim=-1).indices
    positive = torch.zeros_like(candidates).scatter_(-1, top, True) & candidates

    # An anchor claimed by several instances keeps the one with the highest IoU.
    claims = positive.sum(1)  # [B, N]
    if bool((claims > 1).any()):
        best = torch.where(positive, iou, torch.full_like(iou, -1.0)).argmax(1)  # among the claimants
        best_onehot = torch.nn.functional.one_hot(best, m).transpose(1, 2).bool()  # [B, M, N]
        positive = torch.where((claims > 1)[:, None, :], best_onehot, positive)
    foreground = positive.any(1)
    gt_index = positive.float().argmax(1)  # [B, N]

    batch_index = torch.arange(b, device=device)[:, None]
    target_boxes = gt_boxes[batch_index, gt_index]  # [B, N, 4]
    target_labels = labels[batch_index, gt_index]  # [B, N]

    metric = metric * positive
    best_metric = metric.amax(-1, keepdim=True)  # [B, M, 1]
    best_iou = (iou * positive).amax(-1, keepdim=True)
    quality = (metric * best_iou / (best_metric + EPS)).amax(1)  # [B, N]
    target_scores = torch.nn.functional.one_hot(target_labels, nc).float()
    target_scores = target_scores * (quality * foreground)[..., None]
    return Assignment(foreground, gt_index, target_boxes, target_scores)
