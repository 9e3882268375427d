"""EdgeSeg: the project's own YOLACT-style prototype-mask networks, tiny to large.

    image ─► backbone (Conv-BN-SiLU, CSP stages, SPPF) ─► C3 C4 C5 (strides 8, 16, 32)
          ─► PAN-FPN (top-down, then bottom-up) ─► P3 P4 P5
          ─► per level, anchor-free head: class logits | ltrb distances | k mask coefficients
          ─► P3 ─► protonet (upsampled to stride 4) ─► k prototypes

An instance mask is sigmoid(coefficients . prototypes), cropped to its box, as in YOLACT.

Output layout. ``EdgeSeg.predict`` (the export mode; ``ExportModule`` wraps it for
``torch.onnx.export``) returns EXACTLY the yolov8-seg layout of docs/architecture.md, so the runtime's one
decoder (``edgeseg.decode.prototype``) serves both families with no parameter of its own:

* ``output0`` [B, 4 + nc + k, N]: cx, cy, w, h in input pixels, nc class scores after a
  sigmoid (0..1), k raw mask coefficients; N = sum over levels of H/s * W/s;
* ``output1`` [B, k, H/4, W/4]: prototype logits.

The ONNX metadata (written by ``export.torch_export``) names the family: ``edgeseg.family`` =
"edgeseg", ``names`` (JSON list), ``stride``, ``imgsz``, ``edgeseg.normalization``.

``EdgeSeg.forward`` (training) returns the raw per-level outputs flattened over the anchors
(``TrainOutputs``): class logits, box distances in pixels, coefficients, prototypes, the anchor
points and strides, and the neck features (for feature distillation).

Sizes scale one base design by width (channels) and depth (CSP repeats), as YOLOv8 n/s/m/l do.
Every convolution of the trunk is ``Conv2d(bias=False) -> BatchNorm2d -> SiLU`` (``ConvBN``):
network slimming reads the BN scale factors, and BN folding needs the BN right after its conv.
The head's last 1x1 convolutions carry a bias and no BN. Upsampling is nearest-neighbour (no
ConvTranspose, whose BN the ONNX folder cannot fuse).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from edgeseg.errors import ExportError

#: Output strides of the three prediction levels (P3, P4, P5); the last is the model's stride.
STRIDES = (8, 16, 32)
#: The prototypes' stride (H/4 x W/4), as the yolov8-seg layout has it.
PROTO_STRIDE = 4
DEFAULT_NUM_MASKS = 32
DEFAULT_IMGSZ = 320
#: BatchNorm settings for short training runs on small batches (as YOLOv8).
BN_EPS = 1e-3
BN_MOMENTUM = 0.03
#: Prior probability of a class at initialisation (RetinaNet's focal-loss prior).
CLASS_PRIOR = 0.01
#: Initial box half-size in strides: each anchor starts by predicting a box 4 strides wide.
BOX_PRIOR_STRIDES = 2.0
#: Base channels of stem and the four backbone stages, and CSP repeats per stage, at width = depth = 1.
BASE_CHANNELS = (64, 128, 256, 512, 1024)
BASE_DEPTHS = (3, 6, 6, 3)
#: Base hidden channels of the protonet.
BASE_PROTO_CHANNELS = 256
#: Network input normalisation (the runtime's default: RGB, 0..1, letterbox pad 114).
NORMALIZATION: dict[str, Any] = {
    "scale": 1.0 / 255.0, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "rgb": True, "pad_value": 114,
}


@dataclass(frozen=True)
class SizeSpec:
    """One row of the size table: multipliers on the base design."""

    width: float
    depth: float
    max_channels: int


#: The family: tiny to large by width and depth (the YOLOv8 n/s/m/l multipliers).
MODEL_SIZES: dict[str, SizeSpec] = {
    "tiny": SizeSpec(width=0.25, depth=0.34, max_channels=1024),
    "small": SizeSpec(width=0.50, depth=0.34, max_channels=1024),
    "medium": SizeSpec(width=0.75, depth=0.67, max_channels=768),
    "large": SizeSpec(width=1.00, depth=1.00, max_channels=512),
}


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a network; stored with every checkpoint.

    Attributes:
        size: the row of MODEL_SIZES it was built from (informative once width/depth are set).
        class_names: class table; nc = len(class_names).
        num_masks: k, the number of prototypes and mask coefficients.
        imgsz: training input size (the exported model's default size).
        width, depth, max_channels: the multipliers actually used (kept explicit so that a
            checkpoint never depends on the size table of a later version).
        pruned: channel counts were changed by slimming; the weights, not the multipliers,
            give every layer's width (``build_model`` resizes the layers to the state dict).
    """

    size: str
    class_names: tuple[str, ...]
    num_masks: int = DEFAULT_NUM_MASKS
    imgsz: int = DEFAULT_IMGSZ
    width: float = 0.0
    depth: float = 0.0
    max_channels: int = 0
    pruned: bool = False

    @classmethod
    def create(
        cls, size: str, class_names: Sequence[str], num_masks: int = DEFAULT_NUM_MASKS, imgsz: int = DEFAULT_IMGSZ
    ) -> ModelConfig:
        """A config from the size table; ExportError for an unknown size or an empty class table."""
        if size not in MODEL_SIZES:
            raise ExportError(f"model size {size!r}: expected one of {', '.join(MODEL_SIZES)}")
        if not class_names:
            raise ExportError("a model needs at least one class name")
        if num_masks < 1:
            raise ExportError(f"num_masks {num_masks}: expected at least 1")
        s = MODEL_SIZES[size]
        return cls(size, tuple(str(n) for n in class_names), num_masks, imgsz, s.width, s.depth, s.max_channels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (``torch.load(weights_only=True)`` reads them back)."""
        return {
            "size": self.size, "class_names": list(self.class_names), "num_masks": self.num_masks,
            "imgsz": self.imgsz, "width": self.width, "depth": self.depth, "max_channels": self.max_channels,
            "pruned": self.pruned,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ModelConfig:
        """Inverse of ``to_dict``; ValueError naming the first bad or unknown field."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown model config field {unknown[0]!r}")
        try:
            cfg = cls(
                size=str(raw["size"]),
                class_names=tuple(str(n) for n in raw["class_names"]),
                num_masks=int(raw["num_masks"]),
                imgsz=int(raw["imgsz"]),
                width=float(raw["width"]),
                depth=float(raw["depth"]),
                max_channels=int(raw["max_channels"]),
                pruned=bool(raw.get("pruned", False)),
            )
        except KeyError as exc:
            raise ValueError(f"model config lacks field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"model config is malformed ({exc})") from None
        if not cfg.class_names or cfg.num_masks < 1 or cfg.width <= 0 or cfg.depth <= 0 or cfg.max_channels < 8:
            raise ValueError("model config has an empty class table or non-positive sizes")
        return cfg

    def describe(self) -> str:
        pruned = " (pruned)" if self.pruned else ""
        return f"edgeseg-{self.size}{pruned}, {self.num_classes} classes, k={self.num_masks}"


class ConvBN(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> SiLU: the unit that slimming and BN folding act on."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act: nn.Module = nn.SiLU(inplace=True) if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """Two 3x3 ConvBN, with a residual add when ``shortcut``."""

    def __init__(self, c: int, shortcut: bool = True):
        super().__init__()
        self.cv1 = ConvBN(c, c, 3)
        self.cv2 = ConvBN(c, c, 3)
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.shortcut else y


class CSP(nn.Module):
    """Cross-stage partial block: two 1x1 branches (one through n bottlenecks), concat, 1x1.

    Two separate 1x1 convolutions rather than one split in two keep every channel dependency
    a plain concat or add, which dependency-aware pruning handles without special cases.
    """

    def __init__(self, c_in: int, c_out: int, n: int = 1, shortcut: bool = True):
        super().__init__()
        c = max(c_out // 2, 8)
        self.cv1 = ConvBN(c_in, c)
        self.cv2 = ConvBN(c_in, c)
        self.m = nn.Sequential(*(Bottleneck(c, shortcut) for _ in range(n)))
        self.cv3 = ConvBN(2 * c, c_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.cv3(torch.cat([self.m(self.cv1(x)), self.cv2(x)], 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained 5x5 max-pools, concat, 1x1."""

    def __init__(self, c_in: int, c_out: int, k: int = 5):
        super().__init__()
        c = c_in // 2
        self.cv1 = ConvBN(c_in, c)
        self.pool = nn.MaxPool2d(k, 1, k // 2)
        self.cv2 = ConvBN(4 * c, c_out)

    def forward(self, x: Tensor) -> Tensor:
        y0 = self.cv1(x)
        y1 = self.pool(y0)
        y2 = self.pool(y1)
        return self.cv2(torch.cat([y0, y1, y2, self.pool(y2)], 1))


class Backbone(nn.Module):
    """Stem and four CSP stages; returns C3, C4, C5 (strides 8, 16, 32)."""

    def __init__(self, ch: Sequence[int], depths: Sequence[int]):
        super().__init__()
        self.stem = ConvBN(3, ch[0], 3, 2)
        self.stage1 = nn.Sequential(ConvBN(ch[0], ch[1], 3, 2), CSP(ch[1], ch[1], depths[0]))
        self.stage2 = nn.Sequential(ConvBN(ch[1], ch[2], 3, 2), CSP(ch[2], ch[2], depths[1]))
        self.stage3 = nn.Sequential(ConvBN(ch[2], ch[3], 3, 2), CSP(ch[3], ch[3], depths[2]))
        self.stage4 = nn.Sequential(ConvBN(ch[3], ch[4], 3, 2), CSP(ch[4], ch[4], depths[3]), SPPF(ch[4], ch[4]))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        c3 = self.stage2(self.stage1(self.stem(x)))
        c4 = self.stage3(c3)
        return c3, c4, self.stage4(c4)


class Neck(nn.Module):
    """PAN-FPN over C3-C5: top-down (FPN) then bottom-up; returns P3, P4, P5."""

    def __init__(self, c3: int, c4: int, c5: int, n: int):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.td4 = CSP(c5 + c4, c4, n, shortcut=False)
        self.td3 = CSP(c4 + c3, c3, n, shortcut=False)
        self.down3 = ConvBN(c3, c3, 3, 2)
        self.bu4 = CSP(c3 + c4, c4, n, shortcut=False)
        self.down4 = ConvBN(c4, c4, 3, 2)
        self.bu5 = CSP(c4 + c5, c5, n, shortcut=False)

    def forward(self, c3: Tensor, c4: Tensor, c5: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        t4 = self.td4(torch.cat([self.up(c5), c4], 1))
        p3 = self.td3(torch.cat([self.up(t4), c3], 1))
        p4 = self.bu4(torch.cat([self.down3(p3), t4], 1))
        p5 = self.bu5(torch.cat([self.down4(p4), c5], 1))
        return p3, p4, p5


class Protonet(nn.Module):
    """P3 -> 3x3 -> upsample x2 -> 3x3 -> 1x1: k prototype logits at stride 4."""

    def __init__(self, c_in: int, hidden: int, k: int):
        super().__init__()
        self.cv1 = ConvBN(c_in, hidden, 3)
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.cv2 = ConvBN(hidden, hidden, 3)
        self.out = nn.Conv2d(hidden, k, 1)

    def forward(self, p3: Tensor) -> Tensor:
        return self.out(self.cv2(self.up(self.cv1(p3))))


def _branch(c_in: int, hidden: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(ConvBN(c_in, hidden, 3), ConvBN(hidden, hidden, 3), nn.Conv2d(hidden, c_out, 1))


class Head(nn.Module):
    """Decoupled anchor-free head, one set of branches per level: class, box (ltrb), coefficients."""

    def __init__(self, channels: Sequence[int], nc: int, k: int):
        super().__init__()
        c_box = max(32, channels[0] // 4)
        c_cls = max(channels[0], min(nc, 100))
        c_coef = max(channels[0] // 4, k)
        self.cls = nn.ModuleList(_branch(c, c_cls, nc) for c in channels)
        self.box = nn.ModuleList(_branch(c, c_box, 4) for c in channels)
        self.coef = nn.ModuleList(_branch(c, c_coef, k) for c in channels)
        self.reset_biases()

    def reset_biases(self) -> None:
        """Class prior CLASS_PRIOR; boxes BOX_PRIOR_STRIDES strides from the anchor on each side."""
        for branches, value in ((self.cls, -math.log((1 - CLASS_PRIOR) / CLASS_PRIOR)),
                                (self.box, math.log(math.expm1(BOX_PRIOR_STRIDES)))):  # softplus^-1
            for seq in branches:
                last = list(seq.children())[-1]
                assert isinstance(last, nn.Conv2d) and last.bias is not None
                nn.init.constant_(last.bias, value)

    def forward(self, feats: Sequence[Tensor]) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Per level: class logits [B, nc, h, w], box distances in pixels [B, 4, h, w], coefficients."""
        out = []
        for i, (f, stride) in enumerate(zip(feats, STRIDES)):
            dist = F.softplus(self.box[i](f)) * stride
            out.append((self.cls[i](f), dist, self.coef[i](f)))
        return out


def make_anchors(feats: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Anchor points (cell centres, input pixels) [N, 2] and their strides [N, 1], level by level.

    Shapes are read from the tensors, so a traced ONNX graph keeps a dynamic input size.
    """
    points, strides = [], []
    for f, stride in zip(feats, STRIDES):
        h, w = f.shape[2], f.shape[3]
        sx = (torch.arange(w, device=f.device, dtype=f.dtype) + 0.5) * stride
        sy = (torch.arange(h, device=f.device, dtype=f.dtype) + 0.5) * stride
        yy, xx = torch.meshgrid(sy, sx, indexing="ij")
        points.append(torch.stack([xx, yy], -1).reshape(-1, 2))
        strides.append(torch.full_like(points[-1][:, :1], float(stride)))
    return torch.cat(points), torch.cat(strides)


@dataclass
class TrainOutputs:
    """The training forward's raw outputs, levels concatenated along the anchors (P3, P4, P5).

    Attributes:
        cls_logits: [B, N, nc] class logits (before the sigmoid).
        distances: [B, N, 4] left, top, right, bottom distances from the anchor, input pixels.
        coefficients: [B, N, k] mask coefficients.
        protos: [B, k, H/4, W/4] prototype logits.
        anchors: [N, 2] anchor points (x, y), input pixels.
        strides: [N, 1] the stride of each anchor's level.
        features: the neck outputs P3, P4, P5 (for feature distillation).
        level_sizes: (h, w) per level; ``torch.split`` by h*w recovers the levels.
    """

    cls_logits: Tensor
    distances: Tensor
    coefficients: Tensor
    protos: Tensor
    anchors: Tensor
    strides: Tensor
    features: tuple[Tensor, ...]
    level_sizes: list[tuple[int, int]] = field(default_factory=list)

    def boxes(self) -> Tensor:
        """Predicted boxes, xyxy in input pixels, [B, N, 4]."""
        return distances_to_boxes(self.anchors, self.distances)


def distances_to_boxes(anchors: Tensor, distances: Tensor) -> Tensor:
    """ltrb distances [..., N, 4] from anchors [N, 2] -> xyxy boxes [..., N, 4]."""
    return torch.cat([anchors - distances[..., :2], anchors + distances[..., 2:]], -1)


def _flatten(t: Tensor) -> Tensor:
    """[B, C, h, w] -> [B, h*w, C]."""
    return t.flatten(2).transpose(1, 2)


class EdgeSeg(nn.Module):
    """A YOLACT-style prototype-mask network of the EdgeSeg family (see the module notes)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config

        def ch(c: int) -> int:
            return max(8, int(math.ceil(min(c, config.max_channels) * config.width / 8) * 8))

        def n(d: int) -> int:
            return max(round(d * config.depth), 1)

        channels = [ch(c) for c in BASE_CHANNELS]
        self.backbone = Backbone(channels, [n(d) for d in BASE_DEPTHS])
        c3, c4, c5 = channels[2:]
        self.neck = Neck(c3, c4, c5, n(3))
        self.protonet = Protonet(c3, max(ch(BASE_PROTO_CHANNELS), config.num_masks), config.num_masks)
        self.head = Head((c3, c4, c5), config.num_classes, config.num_masks)

    @property
    def stride(self) -> int:
        return STRIDES[-1]

    def _trunk(self, x: Tensor) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor]:
        feats = self.neck(*self.backbone(x))
        return feats, self.protonet(feats[0])

    def forward(self, x: Tensor) -> TrainOutputs:
        """Training outputs for a [B, 3, H, W] batch (H, W multiples of the stride)."""
        feats, protos = self._trunk(x)
        levels = self.head(feats)
        anchors, strides = make_anchors(feats)
        return TrainOutputs(
            cls_logits=torch.cat([_flatten(c) for c, _, _ in levels], 1),
            distances=torch.cat([_flatten(d) for _, d, _ in levels], 1),
            coefficients=torch.cat([_flatten(m) for _, _, m in levels], 1),
            protos=protos,
            anchors=anchors,
            strides=strides,
            features=tuple(feats),
            level_sizes=[(int(f.shape[2]), int(f.shape[3])) for f in feats],
        )

    def predict(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The export mode: (output0 [B, 4+nc+k, N], output1 [B, k, H/4, W/4]), yolov8-seg layout."""
        feats, protos = self._trunk(x)
        levels = self.head(feats)
        anchors, _ = make_anchors(feats)
        # Reshape to constant row counts (not flatten): the ONNX graph then keeps them static.
        nc, k = self.config.num_classes, self.config.num_masks
        cls = torch.cat([c.reshape(c.shape[0], nc, -1) for c, _, _ in levels], 2)
        dist = torch.cat([d.reshape(d.shape[0], 4, -1) for _, d, _ in levels], 2)
        coef = torch.cat([m.reshape(m.shape[0], k, -1) for _, _, m in levels], 2)
        a = anchors.transpose(0, 1).unsqueeze(0)  # [1, 2, N]
        xy1 = a - dist[:, :2]
        xy2 = a + dist[:, 2:]
        return torch.cat([(xy1 + xy2) / 2, xy2 - xy1, cls.sigmoid(), coef], 1), protos


class ExportModule(nn.Module):
    """``EdgeSeg.predict`` as a module's forward, for ``torch.onnx.export`` and FLOP counting."""

    def __init__(self, model: EdgeSeg):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.predict(x)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def fit_to_state_dict(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Resize every Conv2d and BatchNorm2d of ``model`` to the shapes in ``state`` (pruned weights).

    The forward passes read no channel count, so a network whose layers were narrowed by
    slimming is rebuilt exactly by giving each layer the shape of its saved weights.
    """
    for name, module in list(model.named_modules()):
        weight = state.get(f"{name}.weight")
        if weight is None:
            continue
        if isinstance(module, nn.Conv2d) and tuple(weight.shape) != tuple(module.weight.shape):
            k, s, p = module.kernel_size, module.stride, module.padding
            _set_submodule(model, name, nn.Conv2d(
                weight.shape[1] * module.groups, weight.shape[0], (k[0], k[1]), (s[0], s[1]),
                p if isinstance(p, str) else (p[0], p[1]), groups=module.groups, bias=module.bias is not None,
            ))
        elif isinstance(module, nn.BatchNorm2d) and weight.shape[0] != module.num_features:
            _set_submodule(model, name, nn.BatchNorm2d(weight.shape[0], eps=module.eps, momentum=module.momentum))


def build_model(config: ModelConfig, state: Mapping[str, Tensor] | None = None) -> EdgeSeg:
    """The network of ``config``, with ``state`` loaded when given (strict; RuntimeError on misfit)."""
    model = EdgeSeg(config)
    if state is not None:
        if config.pruned:
            fit_to_state_dict(model, state)
        model.load_state_dict(state, strict=True)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: EdgeSeg, imgsz: int) -> int:
    """FLOPs (multiply and add counted apart: 2 x MACs) of one imgsz x imgsz inference."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.predict(torch.zeros(1, 3, imgsz, imgsz, device=device))
        return int(counter.get_total_flops())
    finally:
        model.train(was_training)
