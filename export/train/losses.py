"""The training losses of a prototype-mask network: class, box and mask.

* class: binary cross-entropy of the logits against the assignment's soft, IoU-aware targets
  (positives: their instance's class at the aligned quality; all else background), summed and
  normalised by the sum of the targets, as YOLOv8;
* box: 1 - GIoU between the predicted and the assigned box of every positive, weighted by its
  target score; optionally an L1 term on the ltrb distances in stride units (off by default);
* mask: per positive, sigmoid(coefficients . prototypes) against its instance's mask at the
  prototype resolution: binary cross-entropy summed inside the instance's box (the decoder crops
  to the box, so nothing outside it matters) and divided by the box area, averaged over the
  positives. Small and large instances count alike.

A criterion is anything with ``__call__(batch, outputs) -> LossResult`` (``Criterion``);
``SegLoss`` is the default, and the trainer accepts another (a distiller wraps it) plus named
extra terms (``ExtraLoss``) added to its total.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from export.models.edgeseg import PROTO_STRIDE, TrainOutputs
from export.train.assign import TOPK, Assignment, assign
from export.train.dataset import Batch

EPS = 1e-7


@dataclass(frozen=True)
class LossWeights:
    """Gains of the loss terms (YOLOv8's box/cls gains; its seg gain equals the box gain)."""

    cls: float = 0.5
    box: float = 7.5
    mask: float = 7.5
    l1: float = 0.0


@dataclass
class LossResult:
    """A total to back-propagate and its named, detached parts for logging.

    ``assignment`` is the target assignment behind the total (distillation reuses it).
    """

    total: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)
    assignment: Assignment | None = None


class Criterion(Protocol):
    """The loss of a batch from the network's training outputs."""

    def __call__(self, batch: Batch, outputs: TrainOutputs) -> LossResult: ...


class ExtraLoss(Protocol):
    """An additional term (distillation, BN sparsity ...), added to the criterion's total as is."""

    def __call__(self, batch: Batch, outputs: TrainOutputs) -> Tensor: ...


def giou_aligned(a: Tensor, b: Tensor) -> Tensor:
    """Generalised IoU of matching xyxy boxes a [F, 4] and b [F, 4] -> [F]."""
    wh = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a + area_b - inter + EPS
    hull = torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])
    hull_area = hull[:, 0] * hull[:, 1] + EPS
    return inter / union - (hull_area - union) / hull_area


def crop_to_boxes(masks: Tensor, boxes: Tensor) -> Tensor:
    """Zero ``masks`` [F, h, w] outside ``boxes`` [F, 4] (xyxy, mask pixels; pixel centres tested)."""
    _, h, w = masks.shape
    x = torch.arange(w, device=masks.device, dtype=masks.dtype).view(1, 1, w) + 0.5
    y = torch.arange(h, device=masks.device, dtype=masks.dtype).view(1, h, 1) + 0.5
    x1, y1, x2, y2 = (boxes[:, i].view(-1, 1, 1) for i in range(4))
    return masks * ((x >= x1) & (x < x2) & (y >= y1) & (y < y2))


class SegLoss:
    """Class + box + mask loss with task-aligned assignment (see the module notes)."""

    def __init__(self, num_classes: int, weights: LossWeights = LossWeights(), topk: int = TOPK):
        self.num_classes, self.weights, self.topk = num_classes, weights, topk

    def __call__(self, batch: Batch, outputs: TrainOutputs) -> LossResult:
        cls_logits = outputs.cls_logits.float()
        distances = outputs.distances.float()
        anchors = outputs.anchors.float()
        pred_boxes = torch.cat([anchors - distances[..., :2], anchors + distances[..., 2:]], -1)
        a = assign(cls_logits.detach().sigmoid(), pred_boxes.detach(), anchors, batch.labels, batch.boxes,
                   batch.valid, self.topk)
        target_sum = a.target_scores.sum().clamp(min=1.0)

        loss_cls = F.binary_cross_entropy_with_logits(cls_logits, a.target_scores, reduction="sum") / target_sum

        fg = a.foreground
        zero = cls_logits.new_zeros(())
        loss_box, loss_l1, loss_mask = zero, zero, zero
        if bool(fg.any()):
            weight = a.target_scores.sum(-1)[fg]
            target = a.target_boxes[fg]
            loss_box = ((1.0 - giou_aligned(pred_boxes[fg], target)) * weight).sum() / target_sum
            if self.weights.l1:
                anchor_fg = anchors.expand_as(distances[..., :2])[fg]
                stride = outputs.strides.float().expand(distances.shape[0], -1, 1)[fg]
                target_dist = torch.cat([anchor_fg - target[:, :2], target[:, 2:] - anchor_fg], -1)
                loss_l1 = ((distances[fg] - target_dist).abs().sum(-1) / stride[:, 0] * weight).sum() / target_sum
            loss_mask = self._mask_loss(outputs, batch, a)
        w = self.weights
        total = w.cls * loss_cls + w.box * loss_box + w.mask * loss_mask
        parts = {"cls": loss_cls.detach(), "box": loss_box.detach(), "mask": loss_mask.detach()}
        if w.l1:
            total = total + w.l1 * loss_l1
            parts["l1"] = loss_l1.detach()
        return LossResult(total, parts, a)

    def _mask_loss(self, outputs: TrainOutputs, batch: Batch, a: Assignment) -> Tensor:
        protos = outputs.protos.float()
        coefficients = outputs.coefficients.float()
        total = protos.new_zeros(())
        count = 0
        for i in range(protos.shape[0]):
            fg = a.foreground[i]
            if not bool(fg.any()):
                continue
            gt = batch.masks[i][a.gt_index[i][fg]].float()  # [F, h, w]
            if gt.shape[-2:] != protos.shape[-2:]:
                raise ValueError(f"masks of {tuple(gt.shape[-2:])} do not match prototypes of "
                                 f"{tuple(protos.shape[-2:])}")
            pred = torch.einsum("fk,khw->fhw", coefficients[i][fg], protos[i])
            boxes = a.target_boxes[i][fg] / PROTO_STRIDE
            bce = F.binary_cross_entropy_with_logits(pred, gt, reduction="none")
            area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=1.0)
            total = total + (crop_to_boxes(bce, boxes).sum((1, 2)) / area).sum()
            count += int(fg.sum())
        return total / max(count, 1)
