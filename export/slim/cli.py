"""``edgeseg prune`` and ``edgeseg fold``: network slimming's pruning step and BN folding.

    edgeseg prune --model CKPT.pt --ratio 0.5 --out PRUNED.pt [--imgsz N] [--round-to 8]
    edgeseg fold  --model CKPT.pt --out MODEL.onnx [--imgsz N] [--static]

``prune`` removes the channels with the smallest BN scales at a global ratio (0 to 0.9), keeping
residual adds, concatenations and the head consistent and the runtime layout intact; fine-tune
the result with ``edgeseg distill --weights PRUNED.pt --teacher CKPT.pt`` (the unpruned model
teaches its pruned self). ``fold`` merges every Conv+BN into one Conv, checks the folded network
against the unfolded one (max relative difference <= 1e-4) and writes the ONNX for
``edgeseg export``. Each prints one summary line; bad input is one line before any work.
"""

from __future__ import annotations

import argparse
from typing import Any

from edgeseg.errors import ExportError
from export.train.cli import configure_logging


def _ratio(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 0.9, got {text!r}") from None


def add_prune_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``prune`` on the ``edgeseg`` parser's subparsers (no torch import here)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "prune", help="prune an EdgeSeg checkpoint's channels by BN scale (needs edgeseg[export])",
        description="Network slimming: remove the fraction RATIO of all prunable channels, those with the smallest "
                    "BatchNorm |gamma| network-wide (torch-pruning's dependency graph keeps residual adds, "
                    "concatenations and head branches consistent; the output convolutions are never pruned). "
                    "Writes a weights-only checkpoint to fine-tune with edgeseg distill --weights.",
    )
    p.add_argument("--model", required=True, metavar="CKPT", help="EdgeSeg checkpoint (after a sparsity phase)")
    p.add_argument("--ratio", required=True, type=_ratio, help="global channel ratio to remove, 0 to 0.9")
    p.add_argument("--out", required=True, metavar="PRUNED.pt", help="pruned checkpoint to write")
    p.add_argument("--imgsz", type=int, help="input size for tracing and FLOPs (default: the model's)")
    p.add_argument("--round-to", type=int, default=8,
                   help="keep channel counts multiples of this (default 8; 0: any count)")
    p.add_argument("--data", metavar="DIR_OR_JSON",
                   help="images to re-estimate the pruned network's BN statistics on: a folder or a COCO "
                        "dataset (strongly advised: without it, what pruning removed skews every later layer)")
    p.add_argument("--bn-images", type=int, default=256, help="most images for the BN statistics (default 256)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="log verbosity")
    p.set_defaults(func=cmd_prune)
    return p


def add_fold_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``fold`` on the ``edgeseg`` parser's subparsers (no torch import here)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "fold", help="fold Conv+BN of an EdgeSeg checkpoint and write ONNX (needs edgeseg[export])",
        description="BN folding: every Conv+BatchNorm becomes one Conv; the folded network is checked against the "
                    "unfolded one on random inputs (max relative output difference <= 1e-4), then exported to "
                    "ONNX in the runtime layout and checked again in ONNX Runtime.",
    )
    p.add_argument("--model", required=True, metavar="CKPT", help="EdgeSeg checkpoint (pruned or not)")
    p.add_argument("--out", required=True, metavar="MODEL.onnx", help="ONNX file to write")
    p.add_argument("--imgsz", type=int, help="traced input size (default: the model's)")
    p.add_argument("--static", action="store_true", help="fixed input size (default: dynamic height and width)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="log verbosity")
    p.set_defaults(func=cmd_fold)
    return p


def cmd_prune(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    try:
        from export.slim.prune import check_ratio, prune_checkpoint  # noqa: PLC0415
    except ImportError as exc:
        raise ExportError.missing_dependency("edgeseg prune", exc) from None
    check_ratio(args.ratio)
    if args.round_to < 0:
        raise ExportError(f"prune --round-to {args.round_to}: expected 0 or more")
    result = prune_checkpoint(args.model, args.out, args.ratio, args.imgsz, args.round_to or None,
                              data=args.data, bn_images=args.bn_images)
    print(result.summary_line())
    return 0


def cmd_fold(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    try:
        from export.slim.fold import fold_checkpoint  # noqa: PLC0415
    except ImportError as exc:
        raise ExportError.missing_dependency("edgeseg fold", exc) from None
    result = fold_checkpoint(args.model, args.out, args.imgsz, dynamic=not args.static)
    print(result.summary_line())
    return 0
