"""The training loop: data, model, optimiser, schedule, EMA, AMP, validation and checkpoints.

    Trainer(config)  checks everything that can be refused (device, checkpoint, data, output
                     folder) before any long step, builds model, optimiser, schedule, EMA
    trainer.criterion / trainer.extra_losses   the pluggable loss (see below)
    trainer.fit()    epochs of steps; per epoch: last.pt (atomic), validation, best.pt (best mask mAP)

Optimiser: AdamW (default) or SGD with Nesterov momentum; no weight decay on BatchNorm and
biases. Learning rate: linear warm-up, then cosine to ``final_lr_ratio`` of the peak, as a
function of the optimiser step (a resumed run continues on the same curve). EMA of the weights
(YOLOv8's: decay ramping up with the update count) is what validation and exports use. AMP
(float16 autocast + GradScaler) runs on CUDA only; the CPU trains in float32.

Loss. ``trainer.criterion`` (default ``SegLoss``) maps (batch, outputs) to a ``LossResult``;
a distiller replaces it with a wrapper around it. ``trainer.extra_losses`` is a dict of named
``ExtraLoss`` terms ``(batch, outputs) -> Tensor`` added to the total (BN sparsity for network
slimming, feature distillation), logged by name like the criterion's parts.

Resuming. A checkpoint holds model, EMA, optimiser, scheduler, scaler, epoch and step; the data
order of an epoch is a permutation seeded by (seed, epoch) and the augmentation of a sample is
seeded by (seed, epoch, index), so a run resumed mid-epoch continues with exactly the batches it
had not seen. A checkpoint of another model size, class table, k, input size or batch size is
refused with one line.

Validation goes through the runtime: the EMA model is exported to a temporary static ONNX file at
the training size and scored by ``edgeseg.evaluation.coco.evaluate`` (the COCO protocol of
``edgeseg eval``), so the mAP reported is the deployed model's.
"""

from __future__ import annotations

import copy
import logging
import math
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader
from tqdm import tqdm

from edgeseg.errors import ExportError
from export.models.edgeseg import EdgeSeg, ModelConfig, build_model, count_flops, count_parameters
from export.train.checkpoints import Checkpoint, load_checkpoint, save_checkpoint
from export.train.dataset import (
    Augment,
    Batch,
    CocoFiles,
    CocoSegmentation,
    EpochSampler,
    category_names,
    collate,
    load_coco_json,
    resolve_coco,
)
from export.train.losses import Criterion, ExtraLoss, LossResult, LossWeights, SegLoss

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]
OptimizerName = Literal["adamw", "sgd"]
#: Peak learning rate and weight decay per optimiser when not given.
DEFAULT_LR: dict[str, float] = {"adamw": 2e-3, "sgd": 1e-2}
DEFAULT_WEIGHT_DECAY: dict[str, float] = {"adamw": 0.05, "sgd": 5e-4}
SGD_MOMENTUM = 0.937
#: Warm-up length in optimiser steps, at most a fifth of the run.
WARMUP_STEPS = 300
WARMUP_MAX_FRACTION = 0.2
#: EMA: decay * (1 - exp(-updates / tau)).
EMA_DECAY = 0.9999
EMA_TAU = 2000.0
LAST = "last.pt"
BEST = "best.pt"


@dataclass(frozen=True)
class TrainConfig:
    """One training run; mirrors ``edgeseg train``'s flags.

    Attributes:
        data: training set (COCO json, or folder; see ``dataset.resolve_coco``).
        val: validation set, or None (no validation and no best.pt: last.pt is the result).
        model_size: tiny, small, medium or large.
        imgsz: square input size, a multiple of 32.
        epochs: passes over the training set.
        batch: images per step.
        device: auto (CUDA when present), cpu or cuda.
        out: run folder (last.pt, best.pt).
        optimizer, lr, weight_decay: AdamW or SGD; lr/weight_decay None take DEFAULT_LR/DEFAULT_WEIGHT_DECAY.
        final_lr_ratio: the cosine schedule ends at lr * this.
        warmup_steps: linear warm-up length (at most WARMUP_MAX_FRACTION of the run).
        ema: keep an exponential moving average of the weights.
        amp: mixed precision on CUDA (ignored on the CPU).
        workers: data-loader processes (0: load in the training process).
        threads: torch intra-op threads on the CPU (0: torch's default, one per core).
        seed: data order, augmentation and initialisation seed.
        num_masks: k.
        max_steps: stop after this many optimiser steps in total (0: no limit; for smoke tests);
            the LR schedule then ends there.
        val_every: validate every this many epochs (and after the last).
        grad_clip: gradient-norm clip.
        augment: train-time augmentation (flip, scale jitter, colour jitter).
        weights: start from this checkpoint's weights (fine-tuning, e.g. after pruning); its
            model config (pruned channel counts included) is used. Not a resume.
        loss_weights: gains of the loss terms.
    """

    data: str
    val: str | None = None
    model_size: str = "tiny"
    imgsz: int = 320
    epochs: int = 100
    batch: int = 16
    device: Device = "auto"
    out: str = "runs/train"
    optimizer: OptimizerName = "adamw"
    lr: float | None = None
    weight_decay: float | None = None
    final_lr_ratio: float = 0.01
    warmup_steps: int = WARMUP_STEPS
    ema: bool = True
    amp: bool = True
    workers: int = 2
    threads: int = 0
    seed: int = 0
    num_masks: int = 32
    max_steps: int = 0
    val_every: int = 1
    grad_clip: float = 10.0
    augment: bool = True
    weights: str | None = None
    loss_weights: LossWeights = field(default_factory=LossWeights)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Metrics:
    """COCO scores of one validation (mAP50-95 and mAP50, box and mask)."""

    box_map: float
    box_map50: float
    mask_map: float
    mask_map50: float
    images: int

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, float]) -> Metrics | None:
        """The metrics saved in a checkpoint, or None when it holds none."""
        try:
            return cls(float(d["box_map"]), float(d["box_map50"]), float(d["mask_map"]), float(d["mask_map50"]),
                       int(d["images"]))
        except KeyError:
            return None


@dataclass
class TrainResult:
    """What a run produced."""

    checkpoint: Path
    last: Path
    model_config: ModelConfig
    parameters: int
    flops: int
    epochs: int
    steps: int
    seconds: float
    metrics: Metrics | None
    losses: dict[str, float] = field(default_factory=dict)

    def summary_line(self) -> str:
        cfg = self.model_config
        scores = (f"val box mAP50-95 {self.metrics.box_map:.3f} (mAP50 {self.metrics.box_map50:.3f}), "
                  f"mask mAP50-95 {self.metrics.mask_map:.3f} (mAP50 {self.metrics.mask_map50:.3f}) "
                  f"on {self.metrics.images} images" if self.metrics else "no validation set")
        minutes, seconds = divmod(int(round(self.seconds)), 60)
        return (f"train: {self.checkpoint} ({cfg.describe()}, {self.parameters / 1e6:.2f}M params, "
                f"{self.flops / 1e9:.2f} GFLOPs at {cfg.imgsz}); {self.epochs} epochs, {self.steps} steps "
                f"in {minutes}m{seconds:02d}s; {scores}; last {self.last}")


def select_device(device: str) -> torch.device:
    """auto -> CUDA when available, else the CPU; cuda without CUDA is refused."""
    if device not in ("auto", "cpu", "cuda"):
        raise ExportError(f"device {device!r}: expected auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ExportError("device cuda: torch sees no CUDA device (this torch build: "
                          f"{torch.__version__}); use --device cpu or auto")
    return torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")


def cosine_schedule(total_steps: int, warmup_steps: int, final_ratio: float) -> Any:
    """LR factor per step: linear warm-up to 1, cosine down to ``final_ratio`` at ``total_steps``."""
    warmup = max(1, min(warmup_steps, int(total_steps * WARMUP_MAX_FRACTION)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
        return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return factor


class ModelEMA:
    """Exponential moving average of a model's weights and buffers (YOLOv8's ramped decay)."""

    def __init__(self, model: nn.Module, updates: int = 0, decay: float = EMA_DECAY, tau: float = EMA_TAU):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.updates, self.decay, self.tau = updates, decay, tau

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        current = model.state_dict()
        for name, value in self.module.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(d).add_(current[name].detach(), alpha=1 - d)
            else:
                value.copy_(current[name])


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on convolution weights only (not on BatchNorm scales/shifts nor biases)."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, nn.modules.batchnorm._BatchNorm) or name == "bias":
                no_decay.append(p)
            else:
                decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _score(metrics: Metrics | None) -> float:
    """What best.pt is chosen by: mask mAP50-95, box mAP50-95 breaking ties."""
    return -1.0 if metrics is None else metrics.mask_map + 1e-3 * metrics.box_map


class Trainer:
    """One training run (see the module notes). ``fit`` runs it; construction checks it.

    Args:
        config: the run.
        resume: True to continue from ``<out>/last.pt``, a path to continue from that checkpoint,
            None/False for a fresh run (refused if ``<out>/last.pt`` exists).
        progress: show tqdm bars (on a terminal).
    """

    def __init__(self, config: TrainConfig, resume: bool | str | Path | None = None, progress: bool = True):
        self.config, self.progress = config, progress
        c = config
        if min(c.epochs, c.batch, c.val_every) < 1 or min(c.max_steps, c.workers, c.threads) < 0:
            raise ExportError("epochs, batch and val-every must be at least 1; max-steps, workers and threads "
                              "at least 0")
        self.device = select_device(config.device)
        if config.threads > 0:
            torch.set_num_threads(config.threads)
        self.out = Path(config.out)
        self.amp = config.amp and self.device.type == "cuda"

        # 1. Checkpoints first: a corrupt or mismatched one is refused before the data is indexed.
        resume_ckpt = self._resume_checkpoint(resume)
        init_ckpt = load_checkpoint(config.weights) if config.weights and resume_ckpt is None else None

        # 2. Data.
        self.train_set = CocoSegmentation(resolve_coco(config.data), config.imgsz,
                                          augment=Augment() if config.augment else None, seed=config.seed)
        self.class_names = self.train_set.class_names
        self.val_files = self._check_val(config.val) if config.val else None

        # 3. Model.
        requested = ModelConfig.create(config.model_size, self.class_names, config.num_masks, config.imgsz)
        self.model_config = requested
        state = None
        for ckpt, fine_tune in ((resume_ckpt, False), (init_ckpt, True)):
            if ckpt is None:
                continue
            problem = _config_mismatch(ckpt.model_config, requested, fine_tune)
            if problem:
                raise ExportError(f"checkpoint {ckpt.path}: {ckpt.model_config.describe()} does not match "
                                  f"the requested model: {problem}")
            # Fine-tuning keeps the checkpoint's architecture (pruned widths) at the requested size.
            self.model_config = replace(ckpt.model_config, imgsz=config.imgsz)
            state = ckpt.model if not fine_tune else ckpt.deploy_state()
        torch.manual_seed(config.seed)
        self.model: EdgeSeg = build_model(self.model_config, state).to(self.device)

        # 4. Optimisation.
        n = len(self.train_set)
        self.batch_size = min(config.batch, n)
        self.steps_per_epoch = n // self.batch_size
        self.total_steps = config.epochs * self.steps_per_epoch
        if config.max_steps:
            self.total_steps = min(self.total_steps, config.max_steps)
        name = config.optimizer
        lr = config.lr if config.lr is not None else DEFAULT_LR[name]
        wd = config.weight_decay if config.weight_decay is not None else DEFAULT_WEIGHT_DECAY[name]
        groups = _param_groups(self.model, wd)
        self.optimizer: torch.optim.Optimizer
        if name == "adamw":
            self.optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))
        elif name == "sgd":
            self.optimizer = torch.optim.SGD(groups, lr=lr, momentum=SGD_MOMENTUM, nesterov=True)
        else:
            raise ExportError(f"optimizer {name!r}: expected adamw or sgd")
        self.scheduler = LambdaLR(self.optimizer, cosine_schedule(self.total_steps, config.warmup_steps,
                                                                  config.final_lr_ratio))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.ema = ModelEMA(self.model) if config.ema else None

        # 5. The pluggable loss.
        self.criterion: Criterion = SegLoss(self.model_config.num_classes, config.loss_weights)
        self.extra_losses: dict[str, ExtraLoss] = {}

        self.step = 0
        self.epoch = 0
        self.metrics: Metrics | None = None
        self.best_score = -math.inf
        if resume_ckpt is not None:
            self._restore(resume_ckpt)

    # -- set-up ----------------------------------------------------------------------------------

    def _resume_checkpoint(self, resume: bool | str | Path | None) -> Checkpoint | None:
        last = self.out / LAST
        if not resume:
            if last.exists():
                raise ExportError(f"run folder {self.out} already holds {LAST}: pass --resume to continue it, "
                                  "or choose another --out")
            return None
        path = last if resume is True else Path(resume)
        ckpt = load_checkpoint(path)
        if ckpt.optimizer is None or ckpt.scheduler is None:
            raise ExportError(f"checkpoint {path}: holds weights only (no optimizer state) and cannot be resumed; "
                              "start a new run with --weights instead")
        for key in ("batch", "optimizer"):  # the data order and the optimizer state depend on them
            saved, now = ckpt.train_config.get(key), getattr(self.config, key)
            if saved is not None and saved != now:
                raise ExportError(f"checkpoint {path}: trained with {key} {saved}, resumed with {key} {now}")
        return ckpt

    def _check_val(self, val: str) -> CocoFiles:
        files = resolve_coco(val)
        if not files.images.is_dir():
            raise ExportError(f"validation image folder not found: {files.images}")
        names = category_names(load_coco_json(files.annotations))
        if not set(names) & set(self.class_names):
            raise ExportError(f"validation set {files.annotations}: none of its categories is a training class")
        return files

    def _restore(self, ckpt: Checkpoint) -> None:
        try:
            if ckpt.optimizer is not None:
                self.optimizer.load_state_dict(ckpt.optimizer)
            if ckpt.scheduler is not None:
                self.scheduler.load_state_dict(ckpt.scheduler)
            if ckpt.scaler is not None and self.amp:
                self.scaler.load_state_dict(ckpt.scaler)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise ExportError(f"checkpoint {ckpt.path}: optimizer state does not fit this run "
                              f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        if self.ema is not None and ckpt.ema is not None:
            self.ema.module.load_state_dict(ckpt.ema)
            self.ema.updates = ckpt.ema_updates
        self.step, self.epoch = ckpt.step, ckpt.epoch
        self.metrics = Metrics.from_dict(ckpt.metrics)
        best = self.out / BEST
        if best.is_file():
            self.best_score = _score(Metrics.from_dict(load_checkpoint(best, check_weights=False).metrics))
        log.info("resumed %s at epoch %d, step %d", ckpt.path, self.epoch, self.step)

    # -- the loop --------------------------------------------------------------------------------

    def eval_model(self) -> EdgeSeg:
        """The weights to validate and export: the EMA's when kept."""
        return self.ema.module if self.ema is not None else self.model  # type: ignore[return-value]

    def compute_loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor], LossResult]:
        """Forward ``batch`` (on the device, float images) and the total loss with its parts."""
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            outputs = self.model(batch.images)
        result = self.criterion(batch, outputs)
        total = result.total
        parts = dict(result.parts)
        for name, term in self.extra_losses.items():
            value = term(batch, outputs)
            total = total + value
            parts[name] = value.detach()
        return total, parts, result

    def train_step(self, batch: Batch) -> dict[str, float]:
        """One optimiser step on ``batch`` (as collated); returns the loss parts."""
        self.model.train()
        batch = batch.to(self.device)
        total, parts, _ = self.compute_loss(batch)
        if not torch.isfinite(total):
            raise ExportError(f"training diverged at step {self.step}: loss is {float(total)} "
                              f"({', '.join(f'{k} {float(v):.3g}' for k, v in parts.items())}); lower --lr")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.config.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        out = {k: float(v) for k, v in parts.items()}
        out["total"] = float(total.detach())
        return out

    def _loader(self, epoch: int, start_batch: int) -> DataLoader[Batch]:
        sampler = EpochSampler(len(self.train_set), self.config.seed)
        sampler.set_epoch(epoch, start_batch * self.batch_size)
        return DataLoader(
            self.train_set,  # type: ignore[arg-type]  # indexed by (index, epoch) pairs
            batch_size=self.batch_size, sampler=sampler, collate_fn=collate, drop_last=True,
            num_workers=self.config.workers, pin_memory=self.device.type == "cuda",
        )

    def fit(self) -> TrainResult:
        """Train to ``epochs`` (or ``max_steps``), validating and checkpointing per epoch."""
        t0 = time.perf_counter()
        cfg = self.config
        running: dict[str, float] = {}
        try:
            while self.step < self.total_steps:
                epoch = self.step // self.steps_per_epoch
                done_in_epoch = self.step - epoch * self.steps_per_epoch
                bar = tqdm(total=self.steps_per_epoch, initial=done_in_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                           unit="step", dynamic_ncols=True, disable=None if self.progress else True, leave=False)
                with bar:
                    for batch in self._loader(epoch, done_in_epoch):
                        parts = self.train_step(batch)
                        running = {k: 0.9 * running.get(k, v) + 0.1 * v for k, v in parts.items()}
                        bar.set_postfix({k: f"{v:.3f}" for k, v in running.items()}, refresh=False)
                        bar.update(1)
                        if self.step >= self.total_steps:
                            break
                epoch_done = self.step % self.steps_per_epoch == 0
                self.epoch = self.step // self.steps_per_epoch
                final = self.step >= self.total_steps
                losses = ", ".join(f"{k} {v:.4f}" for k, v in running.items())
                log.info("epoch %d/%d, step %d/%d: loss %s", self.epoch, cfg.epochs, self.step, self.total_steps,
                         losses)
                validated = False
                if self.val_files is not None and ((epoch_done and self.epoch % cfg.val_every == 0) or final):
                    self.metrics, validated = self.validate(), True
                    m = self.metrics
                    log.info("epoch %d: val box mAP50-95 %.4f mAP50 %.4f, mask mAP50-95 %.4f mAP50 %.4f",
                             self.epoch, m.box_map, m.box_map50, m.mask_map, m.mask_map50)
                self.save(self.out / LAST)
                if validated and _score(self.metrics) > self.best_score:
                    self.best_score = _score(self.metrics)
                    self.save(self.out / BEST)
        except KeyboardInterrupt:
            self.save(self.out / LAST)
            log.warning("interrupted at step %d; saved %s (resume with --resume)", self.step, self.out / LAST)
            raise
        last, best = self.out / LAST, self.out / BEST
        if not last.is_file():  # resumed from a checkpoint elsewhere whose run was already complete
            self.save(last)
        model = self.eval_model()
        return TrainResult(
            checkpoint=best if best.is_file() else last, last=last, model_config=self.model_config,
            parameters=count_parameters(model), flops=count_flops(model, self.model_config.imgsz),
            epochs=self.epoch, steps=self.step, seconds=time.perf_counter() - t0, metrics=self.metrics,
            losses=running,
        )

    # -- validation and checkpoints ------------------------------------------------------------

    def validate(self) -> Metrics:
        """COCO mAP of the EMA model through the runtime (temporary static ONNX + ``evaluate``)."""
        from edgeseg.config import parse_config
        from edgeseg.evaluation.coco import EVAL_POSTPROCESS, evaluate
        from export.torch_export import export_model

        assert self.val_files is not None
        with tempfile.TemporaryDirectory(prefix="edgeseg-val-") as tmp:
            onnx_path = export_model(self.eval_model(), Path(tmp) / "model.onnx", self.model_config.imgsz,
                                     dynamic=False, verify=False)
            config = parse_config({"model": {"path": str(onnx_path)}, "postprocess": EVAL_POSTPROCESS})
            report = evaluate(config, self.val_files.images, self.val_files.annotations, Path(tmp) / "results.json",
                              progress=self.progress)
        return Metrics(report.box_map, report.box_map50, report.mask_map, report.mask_map50, report.images)

    def checkpoint(self) -> Checkpoint:
        """The run's current state as a Checkpoint (tensors on the CPU)."""
        def cpu(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
            return {k: v.detach().cpu().clone() for k, v in state.items()}

        return Checkpoint(
            path=self.out / LAST, model_config=self.model_config, model=cpu(self.model.state_dict()),
            ema=cpu(self.ema.module.state_dict()) if self.ema is not None else None,
            ema_updates=self.ema.updates if self.ema is not None else 0,
            optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict() if self.amp else None,
            epoch=self.epoch, step=self.step, train_config=_plain(self.config.to_dict()),
            metrics=self.metrics.as_dict() if self.metrics else {},
        )

    def save(self, path: Path) -> Path:
        return save_checkpoint(self.checkpoint(), path)


def _plain(value: Any) -> Any:
    """Only str/int/float/bool/None/list/dict (``weights_only`` loading accepts nothing else)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _config_mismatch(found: ModelConfig, requested: ModelConfig, pruned_ok: bool) -> str | None:
    """What differs between a checkpoint's model and the requested one (size ignored for pruned weights)."""
    diffs = []
    if found.size != requested.size and not (pruned_ok and found.pruned):
        diffs.append(f"model size {found.size}, requested {requested.size}")
    if found.class_names != requested.class_names:
        diffs.append(f"classes ({', '.join(found.class_names)}) differ from the dataset's "
                     f"({', '.join(requested.class_names)})")
    if found.num_masks != requested.num_masks:
        diffs.append(f"{found.num_masks} mask coefficients, requested {requested.num_masks}")
    if found.imgsz != requested.imgsz and not pruned_ok:
        diffs.append(f"imgsz {found.imgsz}, requested {requested.imgsz}")
    return "; ".join(diffs) or None


def train(config: TrainConfig, resume: bool | str | Path | None = None, progress: bool = True) -> TrainResult:
    """Check, then run one training: ``Trainer(config, resume, progress).fit()``."""
    return Trainer(config, resume, progress).fit()
