"""Network slimming, phase two: remove the channels with the smallest BN scales, dependency-aware.

    checkpoint ─► EdgeSeg ─► torch-pruning DependencyGraph (traced on the raw head outputs)
               ─► per group: importance (BN |gamma| by default) ─► check the group ─► prune
               ─► output layout checked (4+nc+k rows, k prototypes)
               ─► BN statistics re-estimated on real images (``export.slim.recalibrate``) ─► pruned checkpoint

The ratio is torch-pruning's global channel ratio: that fraction of all prunable channels goes,
chosen network-wide by importance (|gamma| relative to its layer's mean, so sparse layers lose
more than dense ones, and no layer is emptied). Dependencies
are the dependency graph's: a residual add prunes the same channels on both sides, a
concatenation maps its inputs' channels onto its output's, and the three head branches of a
level prune their common input together.

Never pruned: the head's final 1x1 convolutions (class, box, coefficient outputs) and the
protonet's output convolution, so the runtime layout stays exactly [4+nc+k, N] and [k, H/4, W/4].

The pruned checkpoint holds weights only (no optimiser state), with ``pruned: true`` in its
model config: ``build_model`` (through ``fit_to_state_dict``) rebuilds it from the weights'
shapes, and ``edgeseg train/distill --weights`` fine-tunes it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from edgeseg.errors import ExportError
from export.models.edgeseg import EdgeSeg, build_model, count_flops, count_parameters
from export.slim.recalibrate import DEFAULT_IMAGES, image_batches, recalibrate_bn, recalibration_images
from export.train.checkpoints import Checkpoint, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

#: Global ratios accepted (a network with 90% of its channels gone is about the limit of use).
MIN_RATIO, MAX_RATIO = 0.0, 0.9
#: No single layer loses more than this fraction of its channels.
MAX_LAYER_RATIO = 0.95
#: Channel counts are kept multiples of this where possible (vector units like multiples of 8).
DEFAULT_ROUND_TO = 8

#: An importance: a pruning group -> one score per channel (torch-pruning's interface).
Importance = Callable[[Any], Tensor]


def check_ratio(ratio: float) -> float:
    """The ratio, or a one-line ExportError when it is outside MIN_RATIO..MAX_RATIO."""
    if not isinstance(ratio, (int, float)) or not MIN_RATIO <= float(ratio) <= MAX_RATIO:
        raise ExportError(f"prune ratio {ratio}: expected a fraction of channels from {MIN_RATIO} to {MAX_RATIO}")
    return float(ratio)


def bn_scale_importance() -> Importance:
    """Network slimming's criterion as torch-pruning implements it (``BNScaleImportance``, its defaults).

    Per channel, |gamma| of the group's BN layers (averaged over the layers a residual add or a
    concatenation couples), divided by the group's mean. The division makes the global ranking
    compare channels with their own layer: raw |gamma| ranked network-wide empties whole layers
    (those whose scales all came out of the sparsity phase a little smaller: here the 1/32 stage
    fell to a single channel at 50% while the full-resolution layers, where the FLOPs are, kept
    all of theirs).
    """
    import torch_pruning as tp  # noqa: PLC0415

    return tp.importance.BNScaleImportance()


def protected_layers(model: EdgeSeg) -> list[nn.Module]:
    """The layers whose output channels are the runtime layout: head outputs and prototypes."""
    layers: list[nn.Module] = [model.protonet.out]
    for branches in (model.head.cls, model.head.box, model.head.coef):
        for seq in branches:
            layers.append(list(seq.children())[-1])
    return layers


def _raw_outputs(model: nn.Module, x: Tensor) -> list[Tensor]:
    """The head's per-level outputs and the prototypes: what the dependency graph is traced on."""
    assert isinstance(model, EdgeSeg)
    feats, protos = model._trunk(x)
    return [t for level in model.head(feats) for t in level] + [protos]


def layout(model: EdgeSeg, imgsz: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of the two export outputs for one imgsz x imgsz image."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            pred, protos = model.predict(torch.zeros(1, 3, imgsz, imgsz, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
    return tuple(pred.shape), tuple(protos.shape)


def conv_channels(model: nn.Module) -> int:
    """Output channels of every convolution: the width that pruning reduces."""
    return sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))


@dataclass(frozen=True)
class PruneReport:
    """What pruning did to a network."""

    ratio: float
    groups: int
    channels: tuple[int, int]
    parameters: tuple[int, int]
    flops: tuple[int, int]
    imgsz: int

    def describe(self) -> str:
        def pct(a: int, b: int) -> str:
            return f"{100 * (1 - b / max(a, 1)):.0f}%"

        (c0, c1), (p0, p1), (f0, f1) = self.channels, self.parameters, self.flops
        return (f"ratio {self.ratio:g}: {self.groups} groups pruned; channels {c0} -> {c1} (-{pct(c0, c1)}), "
                f"params {p0 / 1e6:.2f}M -> {p1 / 1e6:.2f}M (-{pct(p0, p1)}), "
                f"{f0 / 1e9:.2f} -> {f1 / 1e9:.2f} GFLOPs at {self.imgsz} (-{pct(f0, f1)})")


def prune_model(
    model: EdgeSeg,
    ratio: float,
    imgsz: int | None = None,
    importance: Importance | None = None,
    round_to: int | None = DEFAULT_ROUND_TO,
) -> PruneReport:
    """Prune ``model`` in place at the global channel ``ratio`` (see the module notes).

    Args:
        importance: scores per channel of a group; BN |gamma| (``bn_scale_importance``) by default.
        round_to: keep channel counts multiples of this (None: any count).
    """
    import torch_pruning as tp  # noqa: PLC0415

    ratio = check_ratio(ratio)
    imgsz = imgsz or model.config.imgsz
    model.eval()
    before_layout = layout(model, imgsz)
    channels0, params0, flops0 = conv_channels(model), count_parameters(model), count_flops(model, imgsz)
    groups = 0
    if ratio > 0:
        device = next(model.parameters()).device
        pruner = tp.pruner.MetaPruner(
            model, torch.zeros(1, 3, imgsz, imgsz, device=device), importance=importance or bn_scale_importance(),
            global_pruning=True, pruning_ratio=ratio, max_pruning_ratio=MAX_LAYER_RATIO,
            ignored_layers=protected_layers(model), round_to=round_to, forward_fn=_raw_outputs,
        )
        for group in pruner.step(interactive=True):
            if not pruner.DG.check_pruning_group(group):
                raise ExportError(f"pruning: torch-pruning refused a group ({str(group).splitlines()[0]})")
            group.prune()
            groups += 1
        if groups == 0:
            log.warning("pruning at ratio %g removed no channel: the importances tie (BN scales all equal, as in "
                        "an untrained network?) or every group is at its limit", ratio)
    model.config = replace(model.config, pruned=model.config.pruned or groups > 0)
    after_layout = layout(model, imgsz)
    if after_layout != before_layout:
        raise ExportError(f"pruning changed the output layout {before_layout} -> {after_layout}; "
                          "the head outputs and prototypes must keep their channels")
    return PruneReport(ratio, groups, (channels0, conv_channels(model)), (params0, count_parameters(model)),
                       (flops0, count_flops(model, imgsz)), imgsz)


@dataclass
class PruneResult:
    checkpoint: Path
    report: PruneReport
    source: Path
    seconds: float
    bn_images: int = 0  # images the BN statistics were re-estimated on (0: not re-estimated)

    def summary_line(self) -> str:
        if self.bn_images:
            recal = f"BN statistics re-estimated on {self.bn_images} images"
        elif self.report.groups == 0:
            recal = "BN statistics kept (nothing pruned)"
        else:
            recal = "BN statistics not re-estimated (no --data)"
        return (f"prune: {self.checkpoint} from {self.source}, {self.report.describe()}; {recal}; "
                f"fine-tune it with --weights {self.checkpoint} ({self.seconds:.1f} s)")


def prune_checkpoint(
    source: str | Path,
    out: str | Path,
    ratio: float,
    imgsz: int | None = None,
    round_to: int | None = DEFAULT_ROUND_TO,
    importance: Importance | None = None,
    data: str | Path | None = None,
    bn_images: int = DEFAULT_IMAGES,
) -> PruneResult:
    """Prune the deployable weights (EMA when kept) of ``source`` into a weights-only checkpoint ``out``.

    With ``data`` (a folder of images or a COCO dataset) the pruned network's BN statistics are
    then re-estimated on up to ``bn_images`` of its images (``export.slim.recalibrate``): without
    that, what pruning removed skews every later layer.
    """
    t0 = time.perf_counter()
    ratio = check_ratio(ratio)
    source, out = Path(source), Path(out)
    if out.suffix.lower() not in (".pt", ".pth"):
        raise ExportError(f"prune output {out}: expected a .pt checkpoint path")
    if bn_images < 1:
        raise ExportError(f"prune: {bn_images} BN recalibration images: expected at least 1")
    images = recalibration_images(data, bn_images) if data is not None else []  # bad data fails now
    ckpt = load_checkpoint(source)
    model = build_model(ckpt.model_config, ckpt.deploy_state())
    size = imgsz or ckpt.model_config.imgsz
    report = prune_model(model, ratio, size, importance, round_to)
    # Nothing pruned, nothing to correct: the trained statistics stay (they are the better estimate).
    seen = recalibrate_bn(model, image_batches(images, size)) if images and report.groups else 0
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    pruned = Checkpoint(
        path=out, model_config=model.config, model=state, epoch=ckpt.epoch, step=0,
        train_config={"pruned_from": str(source), "ratio": ratio, "round_to": round_to or 0},
        metrics={},
    )
    save_checkpoint(pruned, out)
    load_checkpoint(out)  # rebuilds from the saved shapes, or says why not
    return PruneResult(out, report, source, time.perf_counter() - t0, seen)
