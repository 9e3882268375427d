"""The checkpoint format: one ``torch.save``d dict of tensors and plain data.

Keys (format version 1)::

    format        "edgeseg-checkpoint"
    version       1
    model_config  ModelConfig.to_dict(): size, class_names, num_masks, imgsz, width, depth, ...
    model         the trained network's state dict
    ema           the EMA network's state dict, or None (exports prefer it: ``deploy_state``)
    ema_updates   EMA update count (its decay ramps with it)
    optimizer     optimizer state dict, or None (a weights-only checkpoint)
    scheduler     LR scheduler state dict, or None
    scaler        AMP GradScaler state dict, or None
    epoch         epochs completed
    step          optimizer steps taken
    train_config  the TrainConfig of the run, as a dict (informative)
    metrics       the latest validation scores (box_map, mask_map, ...), possibly empty

Saving is atomic (a temporary file in the same folder, then ``os.replace``): a run killed
while saving leaves the previous checkpoint intact. Loading uses ``torch.load(weights_only=True)``,
which unpickles only tensors and plain containers, so a checkpoint cannot run code; anything that
is not such a file, or not this format, or whose weights do not fit its own model config, or
that is of another model than expected, is refused with one ExportError line naming the file
and what did not match.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from edgeseg.errors import ExportError
from export.models.edgeseg import EdgeSeg, ModelConfig, fit_to_state_dict

FORMAT = "edgeseg-checkpoint"
VERSION = 1

StateDict = dict[str, Tensor]


@dataclass
class Checkpoint:
    """A loaded checkpoint (see the module notes for the fields)."""

    path: Path
    model_config: ModelConfig
    model: StateDict
    ema: StateDict | None = None
    ema_updates: int = 0
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    epoch: int = 0
    step: int = 0
    train_config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    def deploy_state(self) -> StateDict:
        """The weights to export: the EMA's when the run kept one."""
        return self.ema if self.ema is not None else self.model


def save_checkpoint(ckpt: Checkpoint, path: Path) -> Path:
    """Write ``ckpt`` to ``path`` atomically; ExportError if the folder is not writable."""
    doc: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "model_config": ckpt.model_config.to_dict(),
        "model": ckpt.model,
        "ema": ckpt.ema,
        "ema_updates": ckpt.ema_updates,
        "optimizer": ckpt.optimizer,
        "scheduler": ckpt.scheduler,
        "scaler": ckpt.scaler,
        "epoch": ckpt.epoch,
        "step": ckpt.step,
        "train_config": ckpt.train_config,
        "metrics": ckpt.metrics,
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(doc, tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"checkpoint {path}: cannot write it ({exc.strerror or exc})") from None
    return path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _state(path: Path, raw: Any, key: str, required: bool) -> StateDict | None:
    if raw is None and not required:
        return None
    if not isinstance(raw, Mapping) or not raw or not all(isinstance(v, Tensor) for v in raw.values()):
        raise ExportError(f"checkpoint {path}: '{key}' is not a state dict of tensors")
    return dict(raw)


def _optional_dict(path: Path, raw: Any, key: str) -> dict[str, Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ExportError(f"checkpoint {path}: '{key}' is not a dict")
    return raw


def _describe_mismatch(found: ModelConfig, expected: ModelConfig) -> str | None:
    diffs = []
    if found.size != expected.size:
        diffs.append(f"model size {found.size}, expected {expected.size}")
    if found.class_names != expected.class_names:
        if found.num_classes != expected.num_classes:
            diffs.append(f"{found.num_classes} classes, expected {expected.num_classes}")
        else:
            diffs.append(f"classes {', '.join(found.class_names)}, expected {', '.join(expected.class_names)}")
    if found.num_masks != expected.num_masks:
        diffs.append(f"{found.num_masks} mask coefficients, expected {expected.num_masks}")
    if found.imgsz != expected.imgsz:
        diffs.append(f"imgsz {found.imgsz}, expected {expected.imgsz}")
    return "; ".join(diffs) or None


def load_checkpoint(
    path: str | Path, expect: ModelConfig | None = None, check_weights: bool = True
) -> Checkpoint:
    """Read and check a checkpoint (on the CPU); one-line ExportError for anything unusable.

    Args:
        path: the .pt file.
        expect: the model the caller needs (size, classes, k, imgsz compared); None accepts any.
        check_weights: build the network of its config and load the weights into it (strict).
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"checkpoint not found: {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError, TypeError,
            AttributeError, ImportError, IndexError, KeyError, OSError) as exc:
        raise ExportError(f"checkpoint {path}: not a readable torch checkpoint of tensors and plain data "
                          f"({type(exc).__name__}: {_first_line(exc)})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ExportError(f"checkpoint {path}: not an edgeseg checkpoint (no 'format': '{FORMAT}'; "
                          "a bare state dict or another tool's file?)")
    version = raw.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise ExportError(f"checkpoint {path}: format version {version!r}, this edgeseg reads up to {VERSION}")
    try:
        config = ModelConfig.from_dict(raw.get("model_config") or {})
    except (ValueError, TypeError, AttributeError) as exc:
        raise ExportError(f"checkpoint {path}: {exc}") from None
    if expect is not None:
        mismatch = _describe_mismatch(config, expect)
        if mismatch:
            raise ExportError(f"checkpoint {path}: {config.describe()} does not match the requested model: {mismatch}")
    model = _state(path, raw.get("model"), "model", required=True)
    assert model is not None
    ema = _state(path, raw.get("ema"), "ema", required=False)
    try:
        ckpt = Checkpoint(
            path=path, model_config=config, model=model, ema=ema,
            ema_updates=int(raw.get("ema_updates", 0)),
            optimizer=_optional_dict(path, raw.get("optimizer"), "optimizer"),
            scheduler=_optional_dict(path, raw.get("scheduler"), "scheduler"),
            scaler=_optional_dict(path, raw.get("scaler"), "scaler"),
            epoch=int(raw.get("epoch", 0)), step=int(raw.get("step", 0)),
            train_config=dict(raw.get("train_config") or {}),
            metrics={str(k): float(v) for k, v in (raw.get("metrics") or {}).items()},
        )
    except (TypeError, ValueError, AttributeError) as exc:
        raise ExportError(f"checkpoint {path}: malformed field ({_first_line(exc)})") from None
    if check_weights:
        for key, state in (("model", ckpt.model), ("ema", ckpt.ema)):
            problem = weights_problem(config, state) if state is not None else None
            if problem:
                raise ExportError(f"checkpoint {path}: '{key}' weights do not fit its model config "
                                  f"({config.describe()}): {problem}")
    return ckpt


def weights_problem(config: ModelConfig, state: Mapping[str, Tensor]) -> str | None:
    """Why ``state`` cannot be loaded into the network of ``config`` (the first problem), or None."""
    model = EdgeSeg(config)
    if config.pruned:
        fit_to_state_dict(model, state)
    ref = model.state_dict()
    missing = [k for k in ref if k not in state]
    unexpected = [k for k in state if k not in ref]
    for names, what in ((missing, "missing"), (unexpected, "unexpected")):
        if names:
            more = f" and {len(names) - 1} more" if len(names) > 1 else ""
            return f"{what} {names[0]}{more}"
    for k, v in ref.items():
        if tuple(state[k].shape) != tuple(v.shape):
            return f"{k} has shape {list(state[k].shape)}, expected {list(v.shape)}"
    return None
