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
import logging
import sys
from typing import Any

from edgeseg.errors import ExportError

DEFAULT_OUT = "runs/distill"


def add_student_flags(p: argparse.ArgumentParser, default_out: str) -> None:
    """The flags a student run shares with ``edgeseg train``."""
    p.add_argument("--data", required=True, metavar="DIR_OR_JSON",
                   help="training set (COCO json or folder); with --label-free also a folder of plain images")
    p.add_argument("--val", metavar="DIR_OR_JSON", help="validation set (scored through the runtime, COCO mAP)")
    p.add_argument("--model-size", default="tiny", choices=["tiny", "small", "medium", "large"],
                   help="student size (default tiny; ignored with --weights of a pruned model)")
    p.add_argument("--imgsz", type=int, default=320, help="square training input size, multiple of 32 (default 320)")
    p.add_argument("--epochs", type=int, default=100, help="passes over the training set (default 100)")
    p.add_argument("--batch", type=int, default=16, help="images per step (default 16)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="torch device (default auto)")
    p.add_argument("--out", default=default_out, metavar="runs/NAME", help=f"run folder (default {default_out})")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                   help="continue the run in --out (its last.pt), or from CHECKPOINT")
    p.add_argument("--weights", metavar="CHECKPOINT", help="start from these weights (fine-tuning, pruned models)")
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"], help="optimizer (default adamw)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 2e-3 AdamW, 1e-2 SGD)")
    p.add_argument("--weight-decay", type=float, help="weight decay (default 0.05 AdamW, 5e-4 SGD)")
    p.add_argument("--warmup-steps", type=int, default=300, help="linear warm-up steps (default 300)")
    p.add_argument("--workers", type=int, default=2, help="data-loader processes (default 2; 0: in-process)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default 0: all cores; 1 is faster on a busy machine)")
    p.add_argument("--seed", type=int, default=0, help="seed of data order, augmentation and init (default 0)")
    p.add_argument("--num-masks", type=int, default=32, help="prototypes / mask coefficients k (default 32)")
    p.add_argument("--max-steps", type=int, default=0, help="stop after N optimizer steps in total (smoke tests)")
    p.add_argument("--val-every", type=int, default=1, help="validate every N epochs (default 1)")
    p.add_argument("--no-ema", action="store_true", help="no EMA of the weights")
    p.add_argument("--no-augment", action="store_true", help="no train-time augmentation")
    p.add_argument("--no-amp", action="store_true", help="float32 on CUDA too")
    p.add_argument("--sparsity", type=float, default=0.0, metavar="L1",
                   help="L1 strength on BN scales, network slimming's sparsity phase (e.g. 1e-4; default 0: off)")
    p.add_argument("--sparsity-schedule", default="constant", choices=["constant", "linear", "cosine"],
                   help="how the L1 strength varies over the run (default constant)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="log verbosity")


def train_config_from_args(args: argparse.Namespace) -> Any:
    """The TrainConfig of a student run's flags (imports torch)."""
    from export.train.trainer import TrainConfig  # noqa: PLC0415

    if args.threads < 0:
        raise ExportError(f"--threads {args.threads}: expected 0 (all cores) or more")

    return TrainConfig(
        data=args.data, val=args.val, model_size=args.model_size, imgsz=args.imgsz, epochs=args.epochs,
        batch=args.batch, device=args.device, out=args.out, optimizer=args.optimizer, lr=args.lr,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, workers=args.workers, threads=args.threads,
        seed=args.seed,
        num_masks=args.num_masks, max_steps=args.max_steps, val_every=args.val_every, ema=not args.no_ema,
        augment=not args.no_augment, amp=not args.no_amp, weights=args.weights,
    )


def configure_logging(level: str | None) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=getattr(logging, (level or "info").upper()),
                            format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


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
    add_student_flags(p, DEFAULT_OUT)
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
        raise ExportError(f"edgeseg distill needs the export stage's dependencies ({exc.name} is missing): "
                          "pip install 'edgeseg[export]'") from None
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
