"""Pruning sweep: what network slimming buys and costs, ratio by ratio, next to the published figures.

The published figures (``PUBLISHED``) are those of network slimming (Liu et al., "Learning Efficient
Convolutional Networks through Network Slimming", ICCV 2017) applied to YOLACT (Bolya et al., "YOLACT:
Real-time Instance Segmentation", ICCV 2019) with a ResNet-101 backbone on COCO, timed on a GTX 1080 Ti:
50% of channels pruned, then BN folded (also quoted in docs/architecture.md).

For each global channel ratio (0 to 70% by default) the sparsity-trained model is pruned (its BN
statistics re-estimated on training images), then fine-tuned twice for the same number of steps,
on the same batches: once on the labels alone, once with distillation from the unpruned model
(its own teacher). Every pruned network is
BN-folded and exported to a static ONNX at the evaluation size, which gives the file size and
the CPU latency (ONNX Runtime, fp32; the models take turns run by run so that load from other
processes hits them alike); mask mAP50-95 is scored on the validation set through the runtime
(``edgeseg eval``'s protocol) before fine-tuning, after it, and after it with distillation.

    .venv/bin/python benchmarks/sweep_pruning.py --model runs/demo/student/best.pt \\
        --data runs/demo/data/instances_train.json --val runs/demo/data/instances_val.json \\
        [--ratios 0,0.1,0.2,0.3,0.4,0.5,0.6,0.7] [--steps 125] [--batch 8] [--imgsz 256] \\
        [--eval-imgsz 320] [--threads 1] [--work runs/sweep] [--out docs/pruning_sweep]

Writes ``<out>.md`` (the table, the 50% figures next to the published ones) and ``<out>.png``.
Resumable: each finished row is kept in ``<work>/rows.json`` and skipped on the next run.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from edgeseg.backends.onnxruntime import OnnxRuntimeBackend
from edgeseg.errors import EdgesegError
from export.distill.distiller import DistillConfig, distill
from export.distill.losses import DistillWeights
from export.recipes.runner import evaluate_model
from export.slim.fold import fold_checkpoint
from export.slim.prune import check_ratio, prune_checkpoint
from export.train.dataset import resolve_coco
from export.train.trainer import TrainConfig, Trainer

log = logging.getLogger("sweep_pruning")

DEFAULT_RATIOS = "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7"
#: Fine-tuning: peak learning rate and warm-up (short runs from trained weights).
FINE_TUNE_LR = 1e-3
FINE_TUNE_WARMUP = 10
#: Latency: untimed runs per model, then timed rounds (one run of every model per round).
WARMUP_RUNS = 5
LATENCY_ROUNDS = 40
#: Marks a finished fine-tuning run in its folder.
FINISHED = "finished"
#: The published figures (network slimming on YOLACT ResNet-101, COCO, 1080 Ti; see the module
#: docstring): pruning 50% + BN fold, (before, after).
PUBLISHED = {"size_mb": (195.0, 84.0), "fps": (28.2, 36.1), "mask_map": (30.62, 28.42)}


@dataclass
class Row:
    ratio: float
    parameters: int
    flops: int
    file_bytes: int
    map_pruned: float
    map_plain: float
    map_kd: float
    onnx: str
    latency_ms: float = 0.0


def _fine_tune_config(args: argparse.Namespace, weights: Path, out: Path, images: int, seed: int) -> TrainConfig:
    epochs = max(1, math.ceil(args.steps / max(images // args.batch, 1)))
    return TrainConfig(data=args.data, val=None, imgsz=args.imgsz, epochs=epochs, batch=args.batch, device="cpu",
                       out=str(out), lr=FINE_TUNE_LR, warmup_steps=FINE_TUNE_WARMUP, workers=0, seed=seed,
                       max_steps=args.steps, weights=str(weights))


def kd_weights(args: argparse.Namespace) -> DistillWeights:
    return DistillWeights(labels=args.kd_labels, cls=args.kd_cls, box=args.kd_box, mask=args.kd_mask,
                          feature=args.kd_feature).check()


def _trained(out: Path) -> Path:
    """The fine-tuned weights of a finished run (no validation: last.pt is the result)."""
    return out / "last.pt"


def _finished(out: Path) -> bool:
    return (out / FINISHED).is_file() and _trained(out).is_file()


def fine_tune_pair(args: argparse.Namespace, pruned: Path, work: Path, images: int, seed: int) -> tuple[float, float]:
    """Mask mAP after fine-tuning ``pruned`` on the labels alone and with distillation (same seed,
    so the same batches); each run resumes, or is skipped once finished."""
    plain, kd = work / "plain", work / "kd"
    if not _finished(plain):  # an interrupted run continues from its last.pt
        Trainer(_fine_tune_config(args, pruned, plain, images, seed), (plain / "last.pt").is_file() or None,
                progress=False).fit()
        (plain / FINISHED).touch()
    if not _finished(kd):
        distill(DistillConfig(teacher=args.model, train=_fine_tune_config(args, pruned, kd, images, seed),
                              weights=kd_weights(args)), (kd / "last.pt").is_file() or None, progress=False)
        (kd / FINISHED).touch()
    return (evaluate_model(_trained(plain), Path(args.val), args.eval_imgsz).mask_map,
            evaluate_model(_trained(kd), Path(args.val), args.eval_imgsz).mask_map)


def run_row(args: argparse.Namespace, ratio: float, images: int) -> Row:
    work = Path(args.work) / f"r{round(ratio * 100):02d}"
    work.mkdir(parents=True, exist_ok=True)
    pruned = work / "pruned.pt"
    report = prune_checkpoint(args.model, pruned, ratio, args.eval_imgsz, data=args.data).report  # FLOPs at eval size
    log.info("ratio %.2f: %s", ratio, report.describe())
    folded = fold_checkpoint(pruned, work / "folded.onnx", args.eval_imgsz, dynamic=False).onnx
    map_pruned = evaluate_model(pruned, Path(args.val), args.eval_imgsz).mask_map
    if ratio == 0:
        map_plain = map_kd = map_pruned  # nothing removed, nothing to recover
    else:
        map_plain, map_kd = fine_tune_pair(args, pruned, work, images, args.seed)
    return Row(ratio, report.parameters[1], report.flops[1], folded.stat().st_size, map_pruned, map_plain, map_kd,
               str(folded))


def repeat_half(args: argparse.Namespace, half: Row, seeds: list[int], images: int) -> list[tuple[int, float, float]]:
    """The 50% row's two fine-tunings again with other seeds (other batches and augmentations):
    (seed, mAP fine-tuned, mAP fine-tuned with KD) per seed, the row's own first."""
    work = Path(args.work) / "r50"
    out = [(args.seed, half.map_plain, half.map_kd)]
    for seed in seeds:
        if seed != args.seed:
            out.append((seed, *fine_tune_pair(args, work / "pruned.pt", work / f"seed{seed}", images, seed)))
    return out


def conv_channels(onnx_path: str) -> int:
    """Output channels of every convolution of a folded ONNX (what pruning narrows)."""
    import onnx  # noqa: PLC0415

    graph = onnx.load(onnx_path).graph
    dims = {t.name: t.dims for t in graph.initializer}
    return sum(int(dims[n.input[1]][0]) for n in graph.node if n.op_type == "Conv" and n.input[1] in dims)


def measure_latency(rows: list[Row], size: int, threads: int) -> None:
    """Median latency of each row's folded ONNX; the models take turns, run by run."""
    backends = [OnnxRuntimeBackend(r.onnx, threads=threads, device="cpu") for r in rows]
    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    times: list[list[float]] = [[] for _ in rows]
    try:
        for b in backends:
            for _ in range(WARMUP_RUNS):
                b.infer(x)
        for _ in range(LATENCY_ROUNDS):
            for i, b in enumerate(backends):
                t0 = time.perf_counter()
                b.infer(x)
                times[i].append((time.perf_counter() - t0) * 1e3)
    finally:
        for b in backends:
            b.close()
    for row, t in zip(rows, times):
        row.latency_ms = statistics.median(t)


def _gains(args: argparse.Namespace) -> str:
    w = kd_weights(args)
    return f"labels {w.labels:g}, class {w.cls:g}, box {w.box:g}, mask {w.mask:g}, FPN features {w.feature:g}"


def _met(ok: bool) -> str:
    return "met" if ok else "not met"


def _pct(new: float, old: float) -> str:
    return f"{100 * (new - old) / old:+.1f}%" if old else "n/a"


def write_report(rows: list[Row], args: argparse.Namespace, out: Path,
                 seeds: list[tuple[int, float, float]] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = rows[0]
    ratios = [100 * r.ratio for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.plot(ratios, [r.map_pruned for r in rows], "o:", color="grey", label="pruned, no fine-tuning")
    ax1.plot(ratios, [r.map_plain for r in rows], "s-", label="fine-tuned on labels")
    ax1.plot(ratios, [r.map_kd for r in rows], "^-", label="fine-tuned with distillation")
    ax1.axhline(base.map_pruned, color="k", lw=0.8, ls="--", label="unpruned")
    ax1.set_xlabel("global prune ratio (%)")
    ax1.set_ylabel("mask mAP50-95 (synthetic val)")
    ax1.set_title("Accuracy")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    for values, label in (([r.parameters for r in rows], "parameters"), ([r.flops for r in rows], "FLOPs"),
                          ([r.file_bytes for r in rows], "file size"), ([r.latency_ms for r in rows], "CPU latency")):
        ax2.plot(ratios, [100 * v / values[0] for v in values], "o-", label=label)
    ax2.set_xlabel("global prune ratio (%)")
    ax2.set_ylabel("% of the unpruned model")
    ax2.set_title("Cost")
    ax2.set_ylim(0, 105)
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.suptitle("EdgeSeg pruning sweep (BN-scale slimming, BN folded)")
    fig.tight_layout()
    png = out.with_suffix(".png")
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)

    lines = [
        "# Pruning sweep",
        "",
        f"Model `{args.model}` (after the sparsity phase), pruned by BN |gamma| at a global channel ratio "
        f"(torch-pruning, dependency-aware), BN folded, exported to a static {args.eval_imgsz}x{args.eval_imgsz} ONNX. "
        f"Fine-tuning: {args.steps} steps of batch {args.batch} at {args.imgsz} px, once on the labels alone and once "
        f"with distillation from the unpruned model (same steps, same batches; gains {_gains(args)}). Mask mAP50-95 on "
        f"`{args.val}` through the runtime ({args.eval_imgsz} px). Latency: ONNX Runtime fp32 on the CPU, "
        f"{args.threads} thread(s), median of {LATENCY_ROUNDS} runs, models taking turns; a shared machine, so "
        "compare within the table, not across machines.",
        "",
        "Command:",
        "",
        "```sh",
        " ".join(["python", "benchmarks/sweep_pruning.py", *sys.argv[1:]]) if sys.argv[1:] else
        "python benchmarks/sweep_pruning.py",
        "```",
        "",
        "The ratio is torch-pruning's global ratio over channel groups (channels that a residual add or a "
        "concatenation couples count once), so it removes fewer of the convolutions' output channels; both are shown. "
        "'pruned' is before fine-tuning, with the BN statistics re-estimated on 256 training images.",
        "",
        f"| ratio | conv channels | params | GFLOPs ({args.eval_imgsz} px) | ONNX size | CPU latency | mask mAP pruned "
        "| fine-tuned | fine-tuned + KD | drop | drop with KD |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    channels0 = conv_channels(base.onnx)
    for r in rows:
        channels = conv_channels(r.onnx)
        lines.append(
            f"| {100 * r.ratio:.0f}% | {channels} ({_pct(channels, channels0)}) "
            f"| {r.parameters / 1e6:.2f}M ({_pct(r.parameters, base.parameters)}) "
            f"| {r.flops / 1e9:.2f} ({_pct(r.flops, base.flops)}) "
            f"| {r.file_bytes / 1e6:.2f} MB ({_pct(r.file_bytes, base.file_bytes)}) "
            f"| {r.latency_ms:.1f} ms ({_pct(r.latency_ms, base.latency_ms)}) "
            f"| {r.map_pruned:.3f} | {r.map_plain:.3f} | {r.map_kd:.3f} "
            f"| {base.map_pruned - r.map_plain:+.3f} | {base.map_pruned - r.map_kd:+.3f} |"
        )
    half = next((r for r in rows if abs(r.ratio - 0.5) < 1e-6), None)
    lines += ["", "![pruning sweep](pruning_sweep.png)", ""]
    if half is not None:
        runs = seeds or [(args.seed, half.map_plain, half.map_kd)]
        drop_plain = statistics.mean(base.map_pruned - p for _, p, _ in runs)
        drop_kd = statistics.mean(base.map_pruned - k for _, _, k in runs)
        over = f" (mean of {len(runs)} seeds)" if len(runs) > 1 else ""
        ps, pf, pm = PUBLISHED["size_mb"], PUBLISHED["fps"], PUBLISHED["mask_map"]
        lines += [
            "## At 50%",
            "",
            "| | this sweep | published (YOLACT R-101, COCO, 1080Ti) | target |",
            "| --- | --- | --- | --- |",
            f"| model size | {base.file_bytes / 1e6:.2f} -> {half.file_bytes / 1e6:.2f} MB "
            f"({_pct(half.file_bytes, base.file_bytes)}) | {ps[0]:.0f} -> {ps[1]:.0f} MB ({_pct(ps[1], ps[0])}) "
            f"| at least 50% smaller ({_met(half.file_bytes <= 0.5 * base.file_bytes)}) |",
            f"| latency | {base.latency_ms:.1f} -> {half.latency_ms:.1f} ms ({_pct(half.latency_ms, base.latency_ms)}) "
            f"| {pf[0]} -> {pf[1]} FPS ({_pct(1 / pf[1], 1 / pf[0])} per frame) "
            f"| at least 25% lower ({_met(half.latency_ms <= 0.75 * base.latency_ms)}) |",
            f"| mask mAP drop, fine-tuned{over} | {drop_plain:+.4f} | {pm[0] - pm[1]:+.2f} (with its fine-tuning) | |",
            f"| mask mAP drop, fine-tuned with KD{over} | {drop_kd:+.4f} | | at most half the drop without KD "
            f"({_met(drop_kd <= max(drop_plain, 0) / 2)}) |",
            "",
        ]
        if len(runs) > 1:
            lines += [
                f"Per seed at 50% (data order and augmentation; mask mAP unpruned {base.map_pruned:.4f}, "
                f"pruned before fine-tuning {half.map_pruned:.4f}):",
                "",
                "| seed | fine-tuned | fine-tuned + KD | drop | drop with KD |",
                "| ---: | ---: | ---: | ---: | ---: |",
                *(f"| {seed} | {p:.4f} | {k:.4f} | {base.map_pruned - p:+.4f} | {base.map_pruned - k:+.4f} |"
                  for seed, p, k in runs),
                f"| spread (sd) | {statistics.pstdev(p for _, p, _ in runs):.4f} "
                f"| {statistics.pstdev(k for _, _, k in runs):.4f} | | |",
                "",
            ]
    out.with_suffix(".md").write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="sparsity-trained EdgeSeg checkpoint (also the KD teacher)")
    p.add_argument("--data", required=True, help="training set for fine-tuning")
    p.add_argument("--val", required=True, help="validation set (COCO json) for mask mAP")
    p.add_argument("--ratios", default=DEFAULT_RATIOS, help=f"global channel ratios (default {DEFAULT_RATIOS})")
    p.add_argument("--steps", type=int, default=125, help="fine-tuning steps per run (default 125)")
    p.add_argument("--batch", type=int, default=8, help="fine-tuning batch (default 8)")
    p.add_argument("--imgsz", type=int, default=256, help="fine-tuning input size (default 256)")
    p.add_argument("--eval-imgsz", type=int, default=320, help="evaluation and latency input size (default 320)")
    p.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads (default 1)")
    d = DistillWeights()
    p.add_argument("--kd-labels", type=float, default=d.labels, help=f"KD run: gain of the label loss ({d.labels})")
    p.add_argument("--kd-cls", type=float, default=d.cls, help=f"KD run: class distillation gain ({d.cls})")
    p.add_argument("--kd-box", type=float, default=d.box, help=f"KD run: box distillation gain ({d.box})")
    p.add_argument("--kd-mask", type=float, default=d.mask, help=f"KD run: mask distillation gain ({d.mask})")
    p.add_argument("--kd-feature", type=float, default=d.feature,
                   help=f"KD run: FPN feature distillation gain ({d.feature})")
    p.add_argument("--seed", type=int, default=0, help="seed of the fine-tunings' data order and augmentation")
    p.add_argument("--half-seeds", default="", metavar="S1,S2,...",
                   help="fine-tune the 50%% row again with these seeds too and report the mean drops (default: none)")
    p.add_argument("--work", default="runs/sweep", help="work folder (resumable)")
    p.add_argument("--out", default="docs/pruning_sweep", help="report path without suffix (.md and .png)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        ratios = [check_ratio(float(r)) for r in args.ratios.split(",") if r.strip()]
    except ValueError:
        print(f"sweep_pruning: --ratios {args.ratios!r}: expected comma-separated numbers", file=sys.stderr)
        return 2
    try:
        half_seeds = [int(x) for x in args.half_seeds.split(",") if x.strip()]
    except ValueError:
        print(f"sweep_pruning: --half-seeds {args.half_seeds!r}: expected comma-separated integers", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    try:
        images = len(json.loads(resolve_coco(args.data).annotations.read_text())["images"])
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
        cache = work / "rows.json"
        done = {float(r["ratio"]): Row(**r) for r in json.loads(cache.read_text())} if cache.is_file() else {}
        for ratio in sorted(set(ratios) | {0.0}):
            if ratio not in done:
                done[ratio] = run_row(args, ratio, images)
                cache.write_text(json.dumps([asdict(r) for r in done.values()], indent=1))
            r = done[ratio]
            print(f"sweep: {100 * ratio:.0f}%: {r.parameters / 1e6:.2f}M params, {r.flops / 1e9:.2f} GFLOPs, "
                  f"{r.file_bytes / 1e6:.2f} MB, mask mAP {r.map_pruned:.3f} / {r.map_plain:.3f} / {r.map_kd:.3f}",
                  flush=True)
        rows = [done[r] for r in sorted(done) if r in set(ratios) | {0.0}]
        half = done.get(0.5)
        seeds = repeat_half(args, half, half_seeds, images) if half is not None and half_seeds else None
        measure_latency(rows, args.eval_imgsz, args.threads)
        cache.write_text(json.dumps([asdict(r) for r in done.values()], indent=1))
        write_report(rows, args, Path(args.out), seeds)
    except EdgesegError as exc:
        print(f"sweep_pruning: {exc}", file=sys.stderr)
        return 2
    print(f"sweep: wrote {Path(args.out).with_suffix('.md')} and {Path(args.out).with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

