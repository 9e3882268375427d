"""``edgeseg distill``: train a student against a teacher; torch is imported only when it runs.

    edgeseg distill --teacher TEACHER.pt|TEACHER.onnx --data DIR_OR_JSON [--val DIR_OR_JSON]
                    --model-size tiny --imgsz 256 --epochs N [--batch B] [--out runs/NAME]
                    [--resume [CHECKPOINT]] [--weights CHECKPOINT] [--label-free [--classes a,b]]
                    [--kd-cls 1 --kd-box 5 --kd-mask 5 --kd-feature 0 --teacher-conf 0.3]
                    [--sparsity 1e-4 [--sparsity-schedule constant|linear|cosine]] [...]

With labels, the student learns from the labels and from the teacher's soft targets; with
``--label-free`` it learns from the teacher alone, on a folder of unlabelled images. With
``--weights PRUNED.pt`` and the unpruned model as ``--teacher`` it is the fine-tuning step of
network slimming; ``--sparsity`` adds the L1 penalty on BN scales (the sparsity phase).
It ends with one line: the checkpoint, the student (params, FLOPs, and how many times fewer
than an EdgeSeg teacher's), epochs, steps and the validation box and mask mAP.
"""

from __future__ import annotations

import argparse
from typing import Any

from edgeseg.errors import ExportError
from export.train.cli import add_training_flags, configure_logging, train_config_from_args

DEFAULT_OUT = "runs/distill"


def add_distill_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``distill`` on the ``edgeseg`` parser's subparsers (no torch import here)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "distill", help="train a student EdgeSeg model against a teacher (needs edgeseg[export])",
        description="Knowledge distillation: a student learns the class scores, boxes and masks (and optionally "
                    "the FPN features) of a teacher: an EdgeSeg checkpoint or any prototype-mask ONNX model. "
                    "With labels or, with --label-free, from the teacher alone on unlabelled images. Resumable "
                    "like edgeseg train (RUN/last.pt every epoch, RUN/best.pt at the best validation mask mAP).",
    )
    p.add_argument("--teacher", required=True, metavar="MODEL",
                   help="teacher: an EdgeSeg checkpoint (.pt) or a prototype-mask ONNX model (.onnx)")
    add_training_flags(p, DEFAULT_OUT,
                       "training set (COCO json or folder); with --label-free also a folder of plain images")
    p.add_argument("--sparsity", type=float, default=0.0, metavar="L1",
                   help="L1 strength on BN scales, network slimming's sparsity phase (e.g. 1e-4; default 0: off)")
    p.add_argument("--sparsity-schedule", default="constant", choices=["constant", "linear", "cosine"],
                   help="how the L1 strength varies over the run (default constant)")
    p.add_argument("--label-free", action="store_true",
                   help="no labels: the teacher's confident detections are the targets (--data: a folder of images)")
    p.add_argument("--classes", metavar="A,B,...", help="label-free: the student's classes (default: the teacher's)")
    p.add_argument("--kd-labels", type=float, default=1.0, help="gain of the student's own loss (default 1)")
    p.add_argument("--kd-cls", type=float, default=1.0, help="gain of class-score distillation (default 1)")
    p.add_argument("--kd-box", type=float, default=5.0, help="gain of box distillation (default 5)")
    p.add_argument("--kd-mask", type=float, default=5.0, help="gain of mask distillation (default 5)")
    p.add_argument("--kd-feature", type=float, default=0.0,
                   help="gain of FPN feature distillation (EdgeSeg teachers; default 0: off)")
    p.add_argument("--teacher-conf", type=float, default=0.3,
                   help="teacher confidence from which boxes and masks are distilled (default 0.3)")
    p.add_argument("--pseudo-conf", type=float, default=0.5,
                   help="label-free: teacher confidence from which a detection is a pseudo-label (default 0.5)")
    p.add_argument("--pseudo-iou", type=float, default=0.6, help="label-free: NMS IoU among pseudo-labels (0.6)")
    p.add_argument("--max-instances", type=int, default=64, help="most distilled masks per image (default 64)")
    p.add_argument("--teacher-threads", type=int, default=0, help="ONNX Runtime threads of an ONNX teacher")
    p.set_defaults(func=cmd_distill)
    return p


def cmd_distill(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    try:
        from export.distill.distiller import DistillConfig, distill  # noqa: PLC0415
        from export.distill.losses import DistillWeights  # noqa: PLC0415
    except ImportError as exc:  # the export stage's own dependencies are an extra
        raise ExportError.missing_dependency("edgeseg distill", exc) from None
    if args.classes and not args.label_free:
        raise ExportError("distill: --classes applies to --label-free only (with labels the data names the classes)")
    weights = DistillWeights(
        labels=args.kd_labels, cls=args.kd_cls, box=args.kd_box, mask=args.kd_mask, feature=args.kd_feature,
        conf=args.teacher_conf, max_instances=args.max_instances, pseudo_conf=args.pseudo_conf,
        pseudo_iou=args.pseudo_iou,
    )
    classes = tuple(c.strip() for c in args.classes.split(",") if c.strip()) if args.classes else None
    config = DistillConfig(
        teacher=args.teacher, train=train_config_from_args(args), weights=weights, label_free=args.label_free,
        classes=classes, sparsity=args.sparsity, sparsity_schedule=args.sparsity_schedule,
        teacher_threads=args.teacher_threads,
    )
    result = distill(config, resume=args.resume)
    print(result.summary_line())
    return 0
