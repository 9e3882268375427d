"""``edgeseg train``: the parser and the command; torch is imported only when the command runs.

    edgeseg train --data DIR_OR_JSON [--val DIR_OR_JSON] --model-size tiny|small|medium|large
                  --imgsz 320 --epochs N [--batch B] [--device auto|cpu|cuda] [--out runs/NAME]
                  [--resume [CHECKPOINT]] [--weights CHECKPOINT] [...]

It ends with one line: the checkpoint written, the model (params, FLOPs), epochs and steps, and
the validation box and mask mAP.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from edgeseg.errors import ExportError

#: Default run folder.
DEFAULT_OUT = "runs/train"


def add_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``train`` on the ``edgeseg`` parser's subparsers (no torch import here)."""
    p = subparsers.add_parser(
        "train", help="train an EdgeSeg model on COCO-format data (needs edgeseg[export])",
        description="Train an EdgeSeg prototype-mask model on COCO instances data. Resumable: "
                    "RUN/last.pt is written every epoch, RUN/best.pt at the best validation mask mAP.",
    )
    p.add_argument("--data", required=True, metavar="DIR_OR_JSON",
                   help="training set: instances json (images in images/ or <split>/ beside it) or a folder")
    p.add_argument("--val", metavar="DIR_OR_JSON", help="validation set (scored through the runtime, COCO mAP)")
    p.add_argument("--model-size", default="tiny", choices=["tiny", "small", "medium", "large"],
                   help="model size (default tiny)")
    p.add_argument("--imgsz", type=int, default=320, help="square training input size, multiple of 32 (default 320)")
    p.add_argument("--epochs", type=int, default=100, help="passes over the training set (default 100)")
    p.add_argument("--batch", type=int, default=16, help="images per step (default 16)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="torch device (default auto)")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="runs/NAME", help=f"run folder (default {DEFAULT_OUT})")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                   help="continue the run in --out (its last.pt), or from CHECKPOINT")
    p.add_argument("--weights", metavar="CHECKPOINT", help="start from these weights (fine-tuning, pruned models)")
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"], help="optimizer (default adamw)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 2e-3 AdamW, 1e-2 SGD)")
    p.add_argument("--weight-decay", type=float, help="weight decay (default 0.05 AdamW, 5e-4 SGD)")
    p.add_argument("--workers", type=int, default=2, help="data-loader processes (default 2; 0: in-process)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default 0: one per core; fewer on a shared machine)")
    p.add_argument("--seed", type=int, default=0, help="seed of data order, augmentation and init (default 0)")
    p.add_argument("--num-masks", type=int, default=32, help="prototypes / mask coefficients k (default 32)")
    p.add_argument("--max-steps", type=int, default=0, help="stop after N optimizer steps in total (smoke tests)")
    p.add_argument("--val-every", type=int, default=1, help="validate every N epochs (default 1)")
    p.add_argument("--no-ema", action="store_true", help="no EMA of the weights")
    p.add_argument("--no-augment", action="store_true", help="no train-time augmentation")
    p.add_argument("--no-amp", action="store_true", help="float32 on CUDA too")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="log verbosity")
    p.set_defaults(func=cmd_train)
    return p


def cmd_train(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=getattr(logging, (args.log_level or "info").upper()),
                            format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        from export.train.trainer import TrainConfig, train
    except ImportError as exc:  # the export stage's own dependencies are an extra
        raise ExportError(
            f"edgeseg train needs the export stage's dependencies ({exc.name} is missing): "
            "pip install 'edgeseg[export]'"
        ) from None
    config = TrainConfig(
        data=args.data, val=args.val, model_size=args.model_size, imgsz=args.imgsz, epochs=args.epochs,
        batch=args.batch, device=args.device, out=args.out, optimizer=args.optimizer, lr=args.lr,
        weight_decay=args.weight_decay, workers=args.workers, threads=args.threads, seed=args.seed,
        num_masks=args.num_masks,
        max_steps=args.max_steps, val_every=args.val_every, ema=not args.no_ema, augment=not args.no_augment,
        amp=not args.no_amp, weights=args.weights,
    )
    result = train(config, resume=args.resume)
    print(result.summary_line())
    return 0
