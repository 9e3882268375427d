"""``edgeseg train``: the parser and the command; torch is imported only when the command runs.

    edgeseg train --data DIR_OR_JSON [--val DIR_OR_JSON] --model-size tiny|small|medium|large
                  --imgsz 320 --epochs N [--batch B] [--device auto|cpu|cuda] [--out runs/NAME]
                  [--resume [CHECKPOINT]] [--weights CHECKPOINT] [...]

It ends with one line: the checkpoint written, the model (params, FLOPs), epochs and steps, and
the validation box and mask mAP. The training flags are defined here once; ``edgeseg distill``
adds its own to the same set (:func:`add_training_flags`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from edgeseg.errors import ExportError

#: Default run folder.
DEFAULT_OUT = "runs/train"


def add_training_flags(p: argparse.ArgumentParser, default_out: str, data_help: str) -> None:
    """The flags of any run that trains a model (``train``, and the student of ``distill``)."""
    p.add_argument("--data", required=True, metavar="DIR_OR_JSON", help=data_help)
    p.add_argument("--val", metavar="DIR_OR_JSON", help="validation set (scored through the runtime, COCO mAP)")
    p.add_argument("--model-size", default="tiny", choices=["tiny", "small", "medium", "large"],
                   help="model size (default tiny; ignored with --weights of a pruned model)")
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
                   help="torch CPU threads (default 0: one per core; 1 is faster on a busy machine)")
    p.add_argument("--seed", type=int, default=0, help="seed of data order, augmentation and init (default 0)")
    p.add_argument("--num-masks", type=int, default=32, help="prototypes / mask coefficients k (default 32)")
    p.add_argument("--max-steps", type=int, default=0, help="stop after N optimizer steps in total (smoke tests)")
    p.add_argument("--val-every", type=int, default=1, help="validate every N epochs (default 1)")
    p.add_argument("--no-ema", action="store_true", help="no EMA of the weights")
    p.add_argument("--no-augment", action="store_true", help="no train-time augmentation")
    p.add_argument("--no-amp", action="store_true", help="float32 on CUDA too")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="log verbosity")


def train_config_from_args(args: argparse.Namespace) -> Any:
    """The TrainConfig of :func:`add_training_flags`' flags (imports torch)."""
    from export.train.trainer import TrainConfig  # noqa: PLC0415

    if args.threads < 0:
        raise ExportError(f"--threads {args.threads}: expected 0 (all cores) or more")
    return TrainConfig(
        data=args.data, val=args.val, model_size=args.model_size, imgsz=args.imgsz, epochs=args.epochs,
        batch=args.batch, device=args.device, out=args.out, optimizer=args.optimizer, lr=args.lr,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, workers=args.workers, threads=args.threads,
        seed=args.seed, num_masks=args.num_masks, max_steps=args.max_steps, val_every=args.val_every,
        ema=not args.no_ema, augment=not args.no_augment, amp=not args.no_amp, weights=args.weights,
    )


def configure_logging(level: str | None) -> None:
    """Log to stderr at ``level`` (default info), unless the caller set logging up already."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=getattr(logging, (level or "info").upper()),
                            format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def add_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``train`` on the ``edgeseg`` parser's subparsers (no torch import here)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "train", help="train an EdgeSeg model on COCO-format data (needs edgeseg[export])",
        description="Train an EdgeSeg prototype-mask model on COCO instances data. Resumable: "
                    "RUN/last.pt is written every epoch, RUN/best.pt at the best validation mask mAP.",
    )
    add_training_flags(p, DEFAULT_OUT,
                       "training set: instances json (images in images/ or <split>/ beside it) or a folder")
    p.set_defaults(func=cmd_train)
    return p


def cmd_train(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    try:
        from export.train.trainer import train  # noqa: PLC0415
    except ImportError as exc:  # the export stage's own dependencies are an extra
        raise ExportError.missing_dependency("edgeseg train", exc) from None
    result = train(train_config_from_args(args), resume=args.resume)
    print(result.summary_line())
    return 0
