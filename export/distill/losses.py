"""Distillation terms: what a student pays for differing from its teacher.

All terms compare the student's training outputs with ``TeacherOutputs`` at the same anchors:

* class (``class_distillation``): per anchor and known class, the Bernoulli KL divergence
  between the teacher's sigmoid score and the student's (binary cross-entropy against the soft
  target minus the target's entropy, so that a perfect mimic costs 0), summed and divided by
  the sum of the teacher's scores (as the label loss is divided by the sum of its targets);
* box (``box_distillation``): 1 - GIoU between the student's and the teacher's box at the
  anchors where the teacher is confident (its best known-class score >= ``conf``), weighted
  by that confidence;
* mask (``mask_distillation``): at the ``max_instances`` most confident of those anchors per
  image, the teacher's assembled mask sigmoid(c_t . P_t) is the soft target of the student's
  sigmoid(c_s . P_s) (Bernoulli KL per pixel), inside the teacher's box and divided by its
  area, as the label mask loss; the prototypes need not agree, only the masks they assemble;
* features (``FeatureDistillation``, optional): per FPN level, the mean squared difference
  between the teacher's feature and the student's through a 1x1 adapter (identity when the
  channel counts agree), divided by the teacher feature's mean square.

Label-free mode (``pseudo_labels``): the teacher's confident detections after class-aware NMS
become the ground truth of the batch (boxes, classes, masks thresholded at 0.5) for the
student's ordinary loss, on top of the soft terms above.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeseg.errors import ExportError
from export.distill.teachers import TeacherOutputs
from export.models.edgeseg import PROTO_STRIDE
from export.train.assign import pairwise_iou
from export.train.dataset import MIN_BOX_PX, Batch
from export.train.losses import crop_to_boxes, giou_aligned

EPS = 1e-7
#: Candidates considered per image before NMS (pseudo-labels).
PRE_NMS_TOPK = 300
#: Mask probability above which a pseudo-label pixel belongs to the instance.
MASK_THRESHOLD = 0.5


@dataclass(frozen=True)
class DistillWeights:
    """Gains and thresholds of the distillation terms.

    Attributes:
        labels: gain of the student's own loss (on the labels, or on the pseudo-labels when label-free).
        cls, box, mask, feature: gains of the distillation terms (feature 0: off).
        conf: teacher confidence from which boxes and masks are distilled.
        max_instances: most anchors per image in the mask term, and most pseudo-labels per image.
        pseudo_conf: teacher confidence from which a detection becomes a pseudo-label (label-free).
        pseudo_iou: NMS IoU threshold among pseudo-labels of one class.
    """

    labels: float = 1.0
    cls: float = 1.0
    box: float = 5.0
    mask: float = 5.0
    feature: float = 0.0
    conf: float = 0.3
    max_instances: int = 64
    pseudo_conf: float = 0.5
    pseudo_iou: float = 0.6

    def check(self) -> DistillWeights:
        """ExportError naming the first value out of range."""
        for name in ("labels", "cls", "box", "mask", "feature"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1000.0:
                raise ExportError(f"distillation weight {name} {value}: expected 0 to 1000")
        for name in ("conf", "pseudo_conf", "pseudo_iou"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ExportError(f"distillation {name.replace('_', '-')} {value}: expected a value in (0, 1)")
        if not 1 <= self.max_instances <= 1000:
            raise ExportError(f"distillation max-instances {self.max_instances}: expected 1 to 1000")
        return self


def bernoulli_kl(logits: Tensor, target: Tensor) -> Tensor:
    """KL(target || sigmoid(logits)) per element: BCE against a soft target minus its entropy (>= 0)."""
    t = target.clamp(EPS, 1 - EPS)
    entropy = -(t * t.log() + (1 - t) * (1 - t).log())
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none") - entropy


def confidence(scores: Tensor, known: Tensor) -> Tensor:
    """The teacher's best score over the student's known classes, per anchor [B, N]."""
    return (scores * known).amax(-1)


def class_distillation(student_logits: Tensor, teacher_scores: Tensor, known: Tensor) -> Tensor:
    """Soft class targets: Bernoulli KL over anchors and known classes / sum of the teacher's scores."""
    kl = bernoulli_kl(student_logits.float(), teacher_scores) * known
    return kl.sum() / (teacher_scores * known).sum().clamp(min=1.0)


def box_distillation(student_boxes: Tensor, teacher_boxes: Tensor, conf: Tensor, threshold: float) -> Tensor:
    """1 - GIoU to the teacher's boxes where it is confident, weighted by its confidence."""
    sel = conf >= threshold
    if not bool(sel.any()):
        return student_boxes.new_zeros(())
    weight = conf[sel]
    loss = (1.0 - giou_aligned(student_boxes[sel].float(), teacher_boxes[sel])) * weight
    return loss.sum() / weight.sum()


def confident_anchors(conf: Tensor, threshold: float, limit: int) -> Tensor:
    """Indices of the (at most ``limit``) anchors of one image with confidence >= threshold, best first."""
    values, order = conf.sort(descending=True)
    return order[: min(limit, int((values >= threshold).sum()))]


def mask_distillation(
    coefficients: Tensor, protos: Tensor, teacher: TeacherOutputs, conf: Tensor, threshold: float, limit: int
) -> Tensor:
    """The teacher's assembled masks as soft targets of the student's, inside the teacher's boxes."""
    total = protos.new_zeros((), dtype=torch.float32)
    weight_sum = 0.0
    for i in range(protos.shape[0]):
        idx = confident_anchors(conf[i], threshold, limit)
        if idx.numel() == 0:
            continue
        target = teacher.masks(i, idx)  # [F, h, w] probabilities
        pred = torch.einsum("fk,khw->fhw", coefficients[i][idx].float(), protos[i].float())
        boxes = teacher.boxes[i][idx] / PROTO_STRIDE
        area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=1.0)
        per_instance = crop_to_boxes(bernoulli_kl(pred, target), boxes).sum((1, 2)) / area
        w = conf[i][idx]
        total = total + (per_instance * w).sum()
        weight_sum += float(w.sum())
    return total / max(weight_sum, EPS) if weight_sum else total


class FeatureAdapters(nn.Module):
    """One 1x1 convolution per level from the student's channels to the teacher's (identity where equal)."""

    def __init__(self, student: Sequence[int], teacher: Sequence[int]):
        super().__init__()
        if len(student) != len(teacher):
            raise ExportError(f"feature distillation: {len(student)} student levels, {len(teacher)} teacher levels")
        self.levels = nn.ModuleList(
            nn.Identity() if s == t else nn.Conv2d(s, t, 1, bias=False) for s, t in zip(student, teacher)
        )

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        return [adapter(f) for adapter, f in zip(self.levels, features)]


def feature_distillation(student: Sequence[Tensor], teacher: Sequence[Tensor], adapters: FeatureAdapters) -> Tensor:
    """Mean over levels of ||adapter(s) - t||^2 / ||t||^2 (per element means)."""
    terms = []
    for s, t in zip(adapters(student), teacher):
        if s.shape != t.shape:
            raise ExportError(f"feature distillation: student level {list(s.shape)} vs teacher {list(t.shape)}")
        terms.append(F.mse_loss(s.float(), t) / t.square().mean().clamp(min=EPS))
    return torch.stack(terms).mean()


def nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """Greedy class-aware NMS; indices of the kept boxes, best score first."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = scores.argsort(descending=True)
    b, lab = boxes[order], labels[order]
    iou = pairwise_iou(b[None], b[None])[0] * (lab[:, None] == lab[None, :])
    suppressed = torch.zeros(len(order), dtype=torch.bool, device=boxes.device)
    keep = []
    for i in range(len(order)):
        if bool(suppressed[i]):
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]


def pseudo_labels(batch: Batch, teacher: TeacherOutputs, scores: Tensor, weights: DistillWeights) -> Batch:
    """``batch`` with its instances replaced by the teacher's confident detections (label-free mode).

    Args:
        scores: the teacher's scores in the student's class table [B, N, nc] (``student_scores``).
    """
    height, width = int(batch.images.shape[2]), int(batch.images.shape[3])
    per_image: list[tuple[Tensor, Tensor, Tensor]] = []
    for i in range(scores.shape[0]):
        best, label = scores[i].max(-1)
        cand = confident_anchors(best, weights.pseudo_conf, PRE_NMS_TOPK)
        boxes = teacher.boxes[i][cand].clone()
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        wide = ((boxes[:, 2] - boxes[:, 0]) >= MIN_BOX_PX) & ((boxes[:, 3] - boxes[:, 1]) >= MIN_BOX_PX)
        cand, boxes = cand[wide], boxes[wide]
        keep = nms(boxes, best[cand], label[cand], weights.pseudo_iou)[: weights.max_instances]
        cand, boxes = cand[keep], boxes[keep]
        masks = crop_to_boxes((teacher.masks(i, cand) >= MASK_THRESHOLD).float(), boxes / PROTO_STRIDE)
        filled = masks.flatten(1).any(1)
        per_image.append((boxes[filled], label[cand][filled], masks[filled]))
    m = max((len(b) for b, _, _ in per_image), default=0)
    n = len(per_image)
    device = batch.images.device
    out_boxes = torch.zeros(n, m, 4, device=device)
    out_labels = torch.zeros(n, m, dtype=torch.long, device=device)
    valid = torch.zeros(n, m, dtype=torch.bool, device=device)
    for i, (b, lab, _) in enumerate(per_image):
        out_boxes[i, : len(b)] = b
        out_labels[i, : len(b)] = lab
        valid[i, : len(b)] = True
    return Batch(batch.images, out_boxes, out_labels, valid, [mk for _, _, mk in per_image], list(batch.image_ids))
