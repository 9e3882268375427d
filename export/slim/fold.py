"""BatchNorm folding: every Conv2d -> BatchNorm2d pair of an EdgeSeg network becomes one Conv2d.

In eval mode a BN is an affine map per channel, y = gamma * (x - mean) / sqrt(var + eps) + beta,
so with s = gamma / sqrt(var + eps) the convolution W, b (b = 0 in ConvBN) becomes

    W' = W * s (per output channel),  b' = (b - mean) * s + beta

computed in float64 and stored in float32. The folded network is checked against the unfolded
one on random inputs: the largest difference per output group (boxes, scores, coefficients,
prototypes), relative to that group's largest magnitude, must be at most FOLD_RTOL (1e-4).

A folded network has no BN, so it is not a checkpoint any more (``build_model`` expects the
BN layers): ``fold_checkpoint`` writes it straight to ONNX (``export.torch_export.export_model``,
itself checked against torch), the input of ``edgeseg export``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from edgeseg.errors import ExportError
from export.models.edgeseg import ConvBN, EdgeSeg, build_model, count_parameters

#: Largest relative output difference allowed between the folded and the unfolded network.
FOLD_RTOL = 1e-4
#: Random images per input size in the check.
CHECK_BATCH = 2


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """One Conv2d computing ``bn(conv(x))`` in eval mode."""
    if bn.running_mean is None or bn.running_var is None:
        raise ExportError("BN folding needs running statistics (track_running_stats)")
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,  # type: ignore[arg-type]
                      conv.padding, conv.dilation, conv.groups, bias=True,  # type: ignore[arg-type]
                      padding_mode=conv.padding_mode).to(conv.weight.device)
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64,
                                                                               device=w.device)
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(b)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(b)
    scale = gamma / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    with torch.no_grad():
        fused.weight.copy_((w * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype))
        assert fused.bias is not None
        fused.bias.copy_(((b - bn.running_mean.detach().double()) * scale + beta).to(conv.weight.dtype))
    return fused


def fold_model(model: EdgeSeg) -> tuple[EdgeSeg, int]:
    """A copy of ``model`` (eval mode) with every ConvBN's BN folded into its conv; and how many were folded."""
    folded = copy.deepcopy(model).eval()
    count = 0
    for module in folded.modules():
        if isinstance(module, ConvBN) and isinstance(module.bn, nn.BatchNorm2d):
            module.conv = fold_conv_bn(module.conv, module.bn)
            module.bn = nn.Identity()  # type: ignore[assignment]
            count += 1
    left = sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    if left:
        raise ExportError(f"BN folding: {left} BatchNorm layers are not preceded by a convolution of a ConvBN")
    return folded, count


def relative_differences(
    reference: Sequence[Tensor], other: Sequence[Tensor], num_classes: int
) -> dict[str, float]:
    """max |a - b| / max |a| per output group of the export outputs (output0 split, output1)."""
    (p0, q0), (p1, q1) = reference[:2], other[:2]  # (predictions, prototypes) of each
    groups = {
        "boxes": (p0[:, :4], p1[:, :4]),
        "scores": (p0[:, 4 : 4 + num_classes], p1[:, 4 : 4 + num_classes]),
        "coefficients": (p0[:, 4 + num_classes :], p1[:, 4 + num_classes :]),
        "prototypes": (q0, q1),
    }
    out = {}
    for name, (a, b) in groups.items():
        if a.shape != b.shape:
            raise ExportError(f"BN folding: {name} of shape {list(b.shape)}, unfolded {list(a.shape)}")
        diff = float((a - b).abs().max()) if a.numel() else 0.0
        scale = float(a.abs().max()) if a.numel() else 0.0
        out[name] = diff / scale if scale > 0 else diff
    return out


@dataclass(frozen=True)
class FoldReport:
    """The folding and its check."""

    folded: int
    differences: dict[str, float]
    sizes: tuple[int, ...]
    parameters: tuple[int, int]

    @property
    def max_relative_difference(self) -> float:
        return max(self.differences.values(), default=0.0)

    def describe(self) -> str:
        worst = max(self.differences, key=lambda k: self.differences[k])
        return (f"{self.folded} Conv+BN folded, params {self.parameters[0]} -> {self.parameters[1]}; max relative "
                f"output difference {self.max_relative_difference:.2e} ({worst}; limit {FOLD_RTOL:g}) at "
                f"{', '.join(f'{s}x{s}' for s in self.sizes)}")


def fold_and_verify(
    model: EdgeSeg, sizes: Sequence[int] | None = None, seed: int = 0, tolerance: float = FOLD_RTOL
) -> tuple[EdgeSeg, FoldReport]:
    """Fold ``model`` and compare the two on random inputs; ExportError beyond ``tolerance``."""
    sizes = tuple(sizes or (model.config.imgsz,))
    reference = copy.deepcopy(model).eval()
    folded, count = fold_model(model)
    device = next(reference.parameters()).device
    g = torch.Generator().manual_seed(seed)
    worst: dict[str, float] = {}
    with torch.no_grad():
        for size in sizes:
            x = torch.rand(CHECK_BATCH, 3, size, size, generator=g).to(device)
            diffs = relative_differences(reference.predict(x), folded.predict(x), model.config.num_classes)
            for k, v in diffs.items():
                worst[k] = max(worst.get(k, 0.0), v)
    report = FoldReport(count, worst, sizes, (count_parameters(reference), count_parameters(folded)))
    if report.max_relative_difference > tolerance:
        raise ExportError(f"BN folding: {report.describe()} exceeds the limit")
    return folded, report


@dataclass
class FoldResult:
    onnx: Path
    report: FoldReport
    source: Path
    seconds: float

    def summary_line(self) -> str:
        return f"fold: {self.onnx} from {self.source}; {self.report.describe()}; {self.seconds:.1f} s"


def fold_checkpoint(source: str | Path, out: str | Path, imgsz: int | None = None, dynamic: bool = True) -> FoldResult:
    """Fold the deployable weights of checkpoint ``source``, check them, and write the ONNX ``out``."""
    from export.torch_export import export_model  # noqa: PLC0415
    from export.train.checkpoints import load_checkpoint  # noqa: PLC0415

    t0 = time.perf_counter()
    source, out = Path(source), Path(out)
    if out.suffix.lower() != ".onnx":
        raise ExportError(f"fold output {out}: expected an .onnx path")
    ckpt = load_checkpoint(source)
    model = build_model(ckpt.model_config, ckpt.deploy_state())
    size = imgsz or ckpt.model_config.imgsz
    folded, report = fold_and_verify(model, (size, size + 2 * 32) if dynamic else (size,))
    export_model(folded, out, size, dynamic=dynamic)
    return FoldResult(out, report, source, time.perf_counter() - t0)
