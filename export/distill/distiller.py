"""Distillation wired into the trainer: the student's loss plus the teacher's soft targets.

    distill(DistillConfig)
      1. checks weights, sparsity, the teacher (checkpoint or ONNX) and, label-free, the images,
         each with one line, before any long step
      2. Trainer(config.train): data, student model, optimiser, schedule, EMA, resume
      3. Distiller.attach(trainer): ``trainer.criterion`` becomes the Distiller (the student's
         own SegLoss on the labels, or on the teacher's pseudo-labels, plus the class, box and
         mask terms); feature distillation, when asked for, is an ``extra_losses`` term; BN
         sparsity (network slimming's first phase), when asked for, another
      4. trainer.fit(): the student's checkpoints (best.pt by validation mask mAP) and a summary

The 1x1 feature adapters are trained by an optimiser of their own (AdamW), stepped with the
gradients of the previous step, since the trainer's optimiser holds the student's parameters
only; they are not part of the student, not saved, and re-learned after a resume.

Label-free mode: the training "set" is a folder of images (frames from the deployment camera,
say), or a COCO dataset whose annotations are ignored. The images are listed in
``<out>/unlabelled/instances_unlabelled.json`` (no annotations; the student's classes as
categories), which the trainer reads as any dataset.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from edgeseg.errors import ExportError
from edgeseg.sources.uri import IMAGE_EXTENSIONS
from export.distill.losses import (
    DistillWeights,
    FeatureAdapters,
    box_distillation,
    class_distillation,
    confidence,
    feature_distillation,
    mask_distillation,
    pseudo_labels,
)
from export.distill.teachers import ClassMap, EdgeSegTeacher, Teacher, TeacherOutputs, load_teacher
from export.models.edgeseg import TrainOutputs, count_flops
from export.slim.sparsity import SCHEDULES, attach_sparsity, check_sparsity
from export.train.dataset import Batch, load_coco_json, resolve_coco
from export.train.losses import Criterion, LossResult, SegLoss
from export.train.trainer import TrainConfig, Trainer, TrainResult, select_device

log = logging.getLogger(__name__)

#: Learning rate of the feature adapters' own optimiser.
ADAPTER_LR = 1e-3
UNLABELLED = "unlabelled"


class Distiller:
    """The trainer's criterion during distillation (see the module notes).

    Args:
        teacher: the frozen teacher.
        student_classes: the student's class table (matched to the teacher's by name).
        weights: gains and thresholds.
        base: the student's own loss (``SegLoss``), applied to the labels or the pseudo-labels.
        label_free: use the teacher's confident detections as the labels.
        student_features: channels of the student's P3-P5 (feature distillation only).
    """

    def __init__(
        self,
        teacher: Teacher,
        student_classes: tuple[str, ...],
        weights: DistillWeights,
        base: Criterion,
        label_free: bool = False,
        student_features: tuple[int, ...] | None = None,
        device: torch.device | str = "cpu",
    ):
        self.teacher, self.weights, self.base, self.label_free = teacher, weights.check(), base, label_free
        self.classes = ClassMap.build(teacher.class_names, student_classes)
        if self.classes.known == 0:
            raise ExportError(f"teacher {teacher.name}: none of its {len(teacher.class_names)} classes "
                              f"({', '.join(teacher.class_names[:5])}...) is a student class "
                              f"({', '.join(student_classes[:5])}...); classes are matched by name")
        self.adapters: FeatureAdapters | None = None
        self.adapter_optimizer: torch.optim.Optimizer | None = None
        if weights.feature > 0:
            if not isinstance(teacher, EdgeSegTeacher):
                raise ExportError(f"feature distillation needs an EdgeSeg checkpoint teacher; {teacher.name} "
                                  "(ONNX) exposes no FPN features (set the feature weight to 0)")
            if student_features is None:
                raise ExportError("feature distillation needs the student's feature channels")
            self.adapters = FeatureAdapters(student_features, teacher.feature_channels).to(device)
            params = list(self.adapters.parameters())
            self.adapter_optimizer = torch.optim.AdamW(params, lr=ADAPTER_LR) if params else None
        self._cache: tuple[Batch, TeacherOutputs] | None = None

    def teacher_outputs(self, batch: Batch) -> TeacherOutputs:
        """The teacher's outputs for ``batch`` (computed once per batch)."""
        if self._cache is None or self._cache[0] is not batch:
            self._cache = (batch, self.teacher.predict(batch.images))
        return self._cache[1]

    def __call__(self, batch: Batch, outputs: TrainOutputs) -> LossResult:
        t = self.teacher_outputs(batch)
        scores, known = t.student_scores(self.classes)
        conf = confidence(scores, known)
        target_batch = pseudo_labels(batch, t, scores, self.weights) if self.label_free else batch
        own = self.base(target_batch, outputs)
        w = self.weights
        kd_cls = class_distillation(outputs.cls_logits, scores, known)
        kd_box = box_distillation(outputs.boxes(), t.boxes, conf, w.conf)
        kd_mask = mask_distillation(outputs.coefficients, outputs.protos, t, conf, w.conf, w.max_instances)
        total = w.labels * own.total + w.cls * kd_cls + w.box * kd_box + w.mask * kd_mask
        parts = dict(own.parts)
        parts.update({"kd_cls": kd_cls.detach(), "kd_box": kd_box.detach(), "kd_mask": kd_mask.detach()})
        if self.label_free:
            parts["pseudo"] = target_batch.valid.sum().float() / max(len(batch), 1)
        return LossResult(total, parts, own.assignment)

    def feature_loss(self, batch: Batch, outputs: TrainOutputs) -> Tensor:
        """The feature term (an ``ExtraLoss``), already multiplied by its gain."""
        assert self.adapters is not None
        if self.adapter_optimizer is not None:  # the previous step's gradients
            if any(p.grad is not None for p in self.adapters.parameters()):
                self.adapter_optimizer.step()
            self.adapter_optimizer.zero_grad(set_to_none=True)
        t = self.teacher_outputs(batch)
        assert t.features is not None
        return self.weights.feature * feature_distillation(outputs.features, t.features, self.adapters)

    def attach(self, trainer: Trainer) -> None:
        """Make this the trainer's criterion (and the feature term one of its extra losses)."""
        trainer.criterion = self
        if self.adapters is not None:
            trainer.extra_losses["kd_feat"] = self.feature_loss


@dataclass(frozen=True)
class DistillConfig:
    """One distillation run; mirrors ``edgeseg distill``'s flags.

    Attributes:
        teacher: EdgeSeg checkpoint (.pt) or prototype-mask ONNX (.onnx).
        train: the student's run (data, validation, size, schedule, output folder, ``weights``
            to start from, e.g. a pruned checkpoint).
        weights: distillation gains and thresholds.
        label_free: train on the teacher's outputs alone; ``train.data`` is then a folder of
            images (or a COCO dataset whose annotations are ignored).
        classes: label-free: the student's classes (a subset of the teacher's); None: all of them.
        sparsity: L1 strength on the BatchNorm scales (network slimming's sparsity phase); 0: off.
        sparsity_schedule: how the strength varies over the run (``export.slim.sparsity.SCHEDULES``).
        teacher_threads: ONNX Runtime threads of an ONNX teacher (0: all cores).
    """

    teacher: str
    train: TrainConfig
    weights: DistillWeights = field(default_factory=DistillWeights)
    label_free: bool = False
    classes: tuple[str, ...] | None = None
    sparsity: float = 0.0
    sparsity_schedule: str = "constant"
    teacher_threads: int = 0


@dataclass
class DistillResult:
    """What a distillation run produced."""

    train: TrainResult
    teacher: str
    teacher_flops: int | None
    label_free: bool

    def summary_line(self) -> str:
        line = self.train.summary_line().replace("train: ", "distill: ", 1)
        flops = self.teacher_flops or 0
        ratio = (f", teacher {flops / 1e9:.2f} GFLOPs = {flops / max(self.train.flops, 1):.1f}x "
                 "the student's" if self.teacher_flops else "")
        mode = "label-free" if self.label_free else "with labels"
        return f"{line}; teacher {self.teacher} ({mode}{ratio})"


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def write_unlabelled(data: str | Path, classes: tuple[str, ...], out: Path) -> Path:
    """A COCO json listing the images of ``data`` with no annotations (label-free training)."""
    data = Path(data)
    if data.is_dir() and not list(data.glob("*.json")) and not (data / "annotations").is_dir():
        paths = _list_images(data)
    else:
        files = resolve_coco(data)
        doc = load_coco_json(files.annotations)
        paths = [files.images / str(im.get("file_name", "")) for im in doc["images"]]
        paths = [p for p in paths if p.is_file()]
    if not paths:
        raise ExportError(f"label-free data {data}: no images found")
    doc_out: dict[str, Any] = {
        "info": {"description": f"unlabelled images of {data} for label-free distillation"},
        "images": [{"id": i + 1, "file_name": str(p.resolve())} for i, p in enumerate(paths)],
        "annotations": [],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(classes)],
    }
    path = out / UNLABELLED / f"instances_{UNLABELLED}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc_out), encoding="utf-8")
    os.replace(tmp, path)
    return path


def _student_classes(config: DistillConfig, teacher: Teacher) -> tuple[str, ...]:
    if not config.classes:
        return teacher.class_names
    known = ClassMap.build(teacher.class_names, config.classes)
    missing = [n for n, i in zip(config.classes, known.index) if i < 0]
    if missing:
        raise ExportError(f"classes {', '.join(missing)}: not classes of the teacher {teacher.name}")
    return tuple(config.classes)


def build_distiller(trainer: Trainer, teacher: Teacher, config: DistillConfig) -> Distiller:
    """A Distiller for ``trainer``'s student, attached to it (with BN sparsity when asked for)."""
    model = trainer.model
    channels = tuple(int(seq[0].conv.in_channels) for seq in model.head.box)  # type: ignore[index]
    base = SegLoss(trainer.model_config.num_classes, config.train.loss_weights)
    distiller = Distiller(teacher, trainer.model_config.class_names, config.weights, base,
                          config.label_free, channels, trainer.device)
    distiller.attach(trainer)
    if config.sparsity > 0:
        attach_sparsity(trainer, config.sparsity, SCHEDULES[config.sparsity_schedule])
    return distiller


def distill(config: DistillConfig, resume: bool | str | Path | None = None, progress: bool = True) -> DistillResult:
    """Check everything, then train the student against the teacher (see the module notes)."""
    t0 = time.perf_counter()
    config.weights.check()
    check_sparsity(config.sparsity, config.sparsity_schedule)
    device = select_device(config.train.device)
    teacher = load_teacher(config.teacher, device, config.teacher_threads)
    train_config = config.train
    if config.label_free:
        classes = _student_classes(config, teacher)
        data = write_unlabelled(train_config.data, classes, Path(train_config.out))
        train_config = TrainConfig(**{**train_config.to_dict(), "data": str(data),
                                      "loss_weights": train_config.loss_weights})
    trainer = Trainer(train_config, resume, progress)
    distiller = build_distiller(trainer, teacher, config)
    log.info("distilling %s from %s: %s", trainer.model_config.describe(), teacher.name,
             distiller.classes.describe(trainer.model_config.class_names))
    teacher_flops = None
    if isinstance(teacher, EdgeSegTeacher):
        teacher_flops = count_flops(teacher.model, trainer.model_config.imgsz)
    result = trainer.fit()
    result.seconds = time.perf_counter() - t0
    return DistillResult(result, teacher.name, teacher_flops, config.label_free)
