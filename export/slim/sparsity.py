"""Network slimming, phase one: an L1 penalty on the BatchNorm scale factors during training.

    loss += strength * schedule(step, total_steps) * sum over BN layers of |gamma|

(Liu et al., "Learning Efficient Convolutional Networks through Network Slimming", 2017.)
The penalty drives the scales of unimportant channels towards zero, so that pruning them by
|gamma| (``export.slim.prune``) removes little of what the network computes. It is a trainer
``ExtraLoss`` ("sparsity"); the schedule is a function of the optimiser step, passed in like an
importance is passed to the pruner (``SCHEDULES`` names the usual ones).

``gamma_summary`` tells how sparse a network became (the fraction of scales under a threshold),
which is what decides the ratio that can be pruned without much loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from edgeseg.errors import ExportError
from export.models.edgeseg import TrainOutputs
from export.train.dataset import Batch
from export.train.trainer import Trainer

#: (step, total_steps) -> factor on the strength.
Schedule = Callable[[int, int], float]
#: The largest strength accepted (beyond it the penalty swamps every other loss).
MAX_STRENGTH = 1.0
#: |gamma| under this counts as "near zero" in the summary.
NEAR_ZERO = 1e-2


def constant(step: int, total: int) -> float:
    """The full strength throughout (the paper's schedule)."""
    return 1.0


def linear_decay(step: int, total: int) -> float:
    """From the full strength down to 0 at the end (the last steps recover accuracy)."""
    return max(0.0, 1.0 - step / max(total, 1))


def cosine_decay(step: int, total: int) -> float:
    """Half a cosine from the full strength to 0."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step / max(total, 1), 1.0)))


SCHEDULES: dict[str, Schedule] = {"constant": constant, "linear": linear_decay, "cosine": cosine_decay}


def check_sparsity(strength: float, schedule: str) -> None:
    """One-line ExportError for a strength out of range or an unknown schedule."""
    if not 0.0 <= strength <= MAX_STRENGTH:
        raise ExportError(f"sparsity {strength}: expected an L1 strength from 0 to {MAX_STRENGTH} (e.g. 1e-4)")
    if schedule not in SCHEDULES:
        raise ExportError(f"sparsity schedule {schedule!r}: expected one of {', '.join(SCHEDULES)}")


def batchnorms(model: nn.Module) -> list[nn.BatchNorm2d]:
    """Every BatchNorm2d of ``model`` (each follows a convolution in EdgeSeg's ConvBN)."""
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


class BNSparsity:
    """The L1 term on BN scales as a trainer ``ExtraLoss``.

    Args:
        model: the network being trained.
        strength: lambda.
        schedule: factor on lambda as a function of (step, total_steps).
        progress: returns (step, total_steps) of the run (the trainer's counters).
    """

    def __init__(self, model: nn.Module, strength: float, schedule: Schedule,
                 progress: Callable[[], tuple[int, int]]):
        self.layers = batchnorms(model)
        if not self.layers:
            raise ExportError("sparsity: the model has no BatchNorm layers")
        self.strength, self.schedule, self.progress = strength, schedule, progress

    def __call__(self, batch: Batch, outputs: TrainOutputs) -> Tensor:
        step, total = self.progress()
        factor = self.strength * self.schedule(step, total)
        l1 = torch.stack([bn.weight.abs().sum() for bn in self.layers]).sum()
        return l1 * factor


def attach_sparsity(trainer: Trainer, strength: float, schedule: Schedule = constant) -> BNSparsity:
    """Add the BN L1 term to ``trainer`` as its "sparsity" extra loss."""
    term = BNSparsity(trainer.model, strength, schedule, lambda: (trainer.step, trainer.total_steps))
    trainer.extra_losses["sparsity"] = term
    return term


@dataclass(frozen=True)
class GammaSummary:
    """How the BN scales of a network are distributed."""

    channels: int
    near_zero: float
    median: float
    mean: float

    def describe(self) -> str:
        return (f"{self.channels} BN channels, {100 * self.near_zero:.1f}% with |gamma| < {NEAR_ZERO:g}, "
                f"median |gamma| {self.median:.3g}")


def gamma_summary(model: nn.Module) -> GammaSummary:
    values = torch.cat([bn.weight.detach().abs().flatten() for bn in batchnorms(model)])
    return GammaSummary(int(values.numel()), float((values < NEAR_ZERO).float().mean()), float(values.median()),
                        float(values.mean()))
