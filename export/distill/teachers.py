"""Teachers for knowledge distillation: a model whose outputs a student learns to match.

    Teacher.predict(images [B, 3, H, W], float 0..1 RGB, the student's batch)
        ─► TeacherOutputs at the student's anchors: class probabilities, xyxy boxes, mask
           coefficients, prototypes (and, for an EdgeSeg teacher, the FPN features)

Two implementations of the ``Teacher`` protocol:

* ``EdgeSegTeacher``: a (larger, or unpruned) EdgeSeg checkpoint, in torch, in eval mode, no
  gradients. Its anchors are the student's (same strides, same order); it also gives the neck
  features P3-P5 for feature distillation.
* ``OnnxTeacher``: any prototype-mask ONNX model in the runtime layout (``output0``
  [B, 4+nc+k, N], ``output1`` [B, k, H/4, W/4]; an EdgeSeg export or a YOLOv8/YOLO11-seg one),
  run through ONNX Runtime with the normalisation of its metadata. Its outputs are decoded at
  the student's anchors: when the teacher runs at the student's input size the anchors
  coincide (strides 8, 16, 32, levels in order); a static teacher of another size sees the
  batch resized to its input and its per-level maps are resampled onto the student's grids.

Class tables are matched by name (``ClassMap``): a student class the teacher does not know gets
no class target (``TeacherOutputs.known`` is False for it), and only known classes count in the
teacher's confidence.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from edgeseg.errors import EdgesegError, ExportError
from export.models.edgeseg import PROTO_STRIDE, STRIDES, EdgeSeg, build_model

log = logging.getLogger(__name__)


def normalise_name(name: str) -> str:
    """Class names compare case-, space- and underscore-insensitively ("traffic_light" = "Traffic light")."""
    return " ".join(name.strip().lower().replace("_", " ").split())


@dataclass(frozen=True)
class ClassMap:
    """For each student class, the teacher class of the same name (or -1).

    Attributes:
        index: [nc_student] teacher class index per student class, -1 where the teacher has none.
    """

    index: tuple[int, ...]

    @classmethod
    def build(cls, teacher: Sequence[str], student: Sequence[str]) -> ClassMap:
        by_name = {normalise_name(n): i for i, n in enumerate(teacher)}
        return cls(tuple(by_name.get(normalise_name(n), -1) for n in student))

    @property
    def known(self) -> int:
        return sum(i >= 0 for i in self.index)

    def describe(self, student: Sequence[str]) -> str:
        missing = [n for n, i in zip(student, self.index) if i < 0]
        text = f"{self.known} of {len(self.index)} student classes known to the teacher"
        return text + (f" (not: {', '.join(missing[:5])}{'...' if len(missing) > 5 else ''})" if missing else "")


@dataclass
class TeacherOutputs:
    """A teacher's predictions at the student's anchors (N = sum over levels of H/s * W/s).

    Attributes:
        scores: [B, N, nc_teacher] class probabilities (0..1) in the teacher's class table.
        boxes: [B, N, 4] xyxy, student input pixels.
        coefficients: [B, N, k_teacher] mask coefficients.
        protos: [B, k_teacher, H/4, W/4] prototype logits.
        features: the neck outputs P3, P4, P5 (EdgeSeg teachers), or None.
    """

    scores: Tensor
    boxes: Tensor
    coefficients: Tensor
    protos: Tensor
    features: tuple[Tensor, ...] | None = None

    def student_scores(self, classes: ClassMap) -> tuple[Tensor, Tensor]:
        """Scores in the student's class table [B, N, nc_student] (0 where unknown) and the known mask [nc]."""
        index = torch.tensor(classes.index, device=self.scores.device)
        known = index >= 0
        mapped = self.scores[..., index.clamp(min=0)] * known
        return mapped, known

    def masks(self, image: int, anchors: Tensor) -> Tensor:
        """Mask probabilities sigmoid(coefficients . prototypes) of ``anchors`` of one image -> [F, H/4, W/4]."""
        return torch.einsum("fk,khw->fhw", self.coefficients[image][anchors], self.protos[image]).sigmoid()


class Teacher(Protocol):
    """What the distiller needs of a teacher."""

    name: str
    class_names: tuple[str, ...]

    def predict(self, images: Tensor) -> TeacherOutputs:
        """Outputs for a student batch [B, 3, H, W] (float 0..1, RGB, H and W multiples of 32)."""
        ...


def _check_images(images: Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] % STRIDES[-1] or images.shape[3] % STRIDES[-1]:
        raise ExportError(f"teacher input {list(images.shape)}: expected [B, 3, H, W] with H, W multiples of "
                          f"{STRIDES[-1]}")


class EdgeSegTeacher:
    """An EdgeSeg checkpoint (its EMA weights when kept) as a frozen teacher in eval mode."""

    def __init__(self, model: EdgeSeg, name: str = "edgeseg"):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.name = name
        self.class_names = model.config.class_names

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: torch.device | str = "cpu") -> EdgeSegTeacher:
        from export.train.checkpoints import load_checkpoint  # noqa: PLC0415 - trainer stack only when used

        ckpt = load_checkpoint(path)
        model = build_model(ckpt.model_config, ckpt.deploy_state()).to(device)
        return cls(model, f"{path} ({ckpt.model_config.describe()})")

    @property
    def feature_channels(self) -> tuple[int, ...]:
        """Channels of P3, P4, P5 (read from the head's first convolutions: pruned widths included)."""
        return tuple(int(seq[0].conv.in_channels) for seq in self.model.head.box)  # type: ignore[index]

    @torch.no_grad()
    def predict(self, images: Tensor) -> TeacherOutputs:
        _check_images(images)
        self.model.eval()
        out = self.model(images)
        return TeacherOutputs(
            scores=out.cls_logits.float().sigmoid(),
            boxes=out.boxes().float(),
            coefficients=out.coefficients.float(),
            protos=out.protos.float(),
            features=tuple(f.float() for f in out.features),
        )


def level_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """(h, w) of each prediction level for an input of ``height`` x ``width``."""
    return [(height // s, width // s) for s in STRIDES]


class OnnxTeacher:
    """A prototype-mask ONNX model (runtime layout) run through ONNX Runtime on the CPU.

    Args:
        path: the .onnx file (EdgeSeg export, YOLOv8/YOLO11-seg export).
        threads: ONNX Runtime intra-op threads (0: all cores).
    """

    def __init__(self, path: str | Path, threads: int = 0):
        from edgeseg.backends.onnxruntime import OnnxRuntimeBackend  # noqa: PLC0415
        from edgeseg.model import spec_from_network  # noqa: PLC0415

        path = Path(path)
        try:
            self.backend = OnnxRuntimeBackend(path, threads=threads, device="cpu")
            self.spec = spec_from_network(self.backend.info, path.stem)
        except EdgesegError as exc:
            raise ExportError(f"teacher {path}: {exc}") from None
        self.name = path.name
        self.class_names = self.spec.class_names
        shape = self.backend.info.inputs[0].shape
        self.batch_static = isinstance(shape[0], int)
        self.normalization = self.spec.normalization

    def _prepare(self, images: Tensor) -> tuple[np.ndarray, tuple[int, int]]:
        n = self.normalization
        x = images.detach().float()
        if self.spec.dynamic:
            size = (int(x.shape[2]), int(x.shape[3]))
        else:
            size = self.spec.input_size
            if size != (x.shape[2], x.shape[3]):
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if not n.rgb:
            x = x.flip(1)
        mean = torch.tensor(n.mean, dtype=x.dtype).view(1, 3, 1, 1)  # in the network's channel order
        std = torch.tensor(n.std, dtype=x.dtype).view(1, 3, 1, 1)
        x = (x * 255.0 * n.scale - mean) / std
        return np.ascontiguousarray(x.cpu().numpy(), dtype=np.float32), size

    def _run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        spec = self.spec
        if self.batch_static and x.shape[0] != 1:
            parts = [self._run(x[i : i + 1]) for i in range(x.shape[0])]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        outputs = self.backend.infer(x)
        return np.asarray(outputs[spec.pred_index]), np.asarray(outputs[spec.proto_index])

    @torch.no_grad()
    def predict(self, images: Tensor) -> TeacherOutputs:
        _check_images(images)
        height, width = int(images.shape[2]), int(images.shape[3])
        x, (th, tw) = self._prepare(images)
        pred_np, protos_np = self._run(x)
        device = images.device
        pred = torch.from_numpy(pred_np).float().to(device)  # [B, 4+nc+k, N_t]
        protos = torch.from_numpy(protos_np).float().to(device)
        nc = self.spec.num_classes
        # Per-level maps [B, C, N_t] -> the student's anchors.
        student_levels = level_sizes(height, width)
        n_student = sum(h * w for h, w in student_levels)
        if pred.shape[2] != n_student:
            pred = self._resample(pred, level_sizes(th, tw), student_levels)
        sx, sy = width / tw, height / th
        cx, cy, w, h = pred[:, 0] * sx, pred[:, 1] * sy, pred[:, 2] * sx, pred[:, 3] * sy
        boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
        size = (height // PROTO_STRIDE, width // PROTO_STRIDE)
        if tuple(protos.shape[2:]) != size:
            protos = F.interpolate(protos, size=size, mode="bilinear", align_corners=False)
        return TeacherOutputs(
            scores=pred[:, 4 : 4 + nc].transpose(1, 2).clamp(0.0, 1.0),
            boxes=boxes,
            coefficients=pred[:, 4 + nc :].transpose(1, 2),
            protos=protos,
        )

    def _resample(self, pred: Tensor, teacher: list[tuple[int, int]], student: list[tuple[int, int]]) -> Tensor:
        """Per-level nearest resampling of [B, C, N_teacher] onto the student's level grids."""
        if sum(h * w for h, w in teacher) != pred.shape[2]:
            raise ExportError(f"teacher {self.name}: {pred.shape[2]} anchors do not form levels at strides "
                              f"{', '.join(map(str, STRIDES))} of its {teacher[0][0] * STRIDES[0]}-pixel input")
        out, start = [], 0
        for (th, tw), (sh, sw) in zip(teacher, student):
            level = pred[:, :, start : start + th * tw].reshape(pred.shape[0], -1, th, tw)
            out.append(F.interpolate(level, size=(sh, sw), mode="nearest").flatten(2))
            start += th * tw
        return torch.cat(out, 2)


def load_teacher(path: str | Path, device: torch.device | str = "cpu", threads: int = 0) -> Teacher:
    """An EdgeSeg checkpoint (.pt/.pth) or a prototype-mask ONNX model (.onnx) as a Teacher."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"teacher not found: {path}")
    if path.suffix.lower() == ".onnx":
        return OnnxTeacher(path, threads)
    if path.suffix.lower() in (".pt", ".pth"):
        return EdgeSegTeacher.from_checkpoint(path, device)
    raise ExportError(f"teacher {path}: expected an EdgeSeg checkpoint (.pt) or a prototype-mask ONNX model (.onnx)")
