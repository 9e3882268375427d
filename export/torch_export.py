"""EdgeSeg checkpoint -> ONNX in the runtime's prototype-mask layout, checked against torch.

    checkpoint.pt ─► ModelConfig + (EMA) weights ─► EdgeSeg.predict traced (opset 17, dynamo=False)
                  ─► metadata ─► ONNX Runtime vs torch on two input sizes ─► out.onnx (atomic)

The graph has one input ``images`` [batch, 3, height, width] (dynamic unless a static size is
asked for) and the yolov8-seg outputs ``output0`` [batch, 4+nc+k, anchors] and ``output1``
[batch, k, H/4, W/4], so ``edgeseg.model.load_model`` and the one decoder read it as they read
a YOLOv8-seg export. Metadata: ``names`` (JSON list), ``stride``, ``imgsz``, ``edgeseg.family``
= "edgeseg", ``edgeseg.normalization`` (JSON), ``edgeseg.model`` (the model config, JSON).
BatchNorm stays in the graph as exported; ``export.onnx_prep`` folds it per resolution.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from edgeseg.errors import ExportError
from edgeseg.model import MAX_INPUT_SIZE, MIN_INPUT_SIZE
from export.models.edgeseg import NORMALIZATION, STRIDES, EdgeSeg, ExportModule, build_model
from export.train.checkpoints import load_checkpoint

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAMES = ("output0", "output1")
#: Largest difference allowed between ONNX Runtime and torch, relative to each output group's
#: magnitude (boxes, scores, coefficients, prototypes are compared apart).
VERIFY_RTOL = 1e-4


def onnx_metadata(model: EdgeSeg, imgsz: int) -> dict[str, str]:
    """The metadata the runtime's ``spec_from_network`` reads, plus the model config."""
    cfg = model.config
    return {
        "names": json.dumps(list(cfg.class_names)),
        "stride": str(STRIDES[-1]),
        "imgsz": json.dumps([imgsz, imgsz]),
        "task": "segment",
        "edgeseg.family": "edgeseg",
        "edgeseg.normalization": json.dumps(NORMALIZATION),
        "edgeseg.model": json.dumps(cfg.to_dict()),
        "description": f"{cfg.describe()}, trained at {cfg.imgsz}",
    }


def _pin_channel_dims(proto: onnx.ModelProto, model: EdgeSeg) -> None:
    """Write the static channel counts (4+nc+k rows, k prototypes) into the output shapes.

    The tracer leaves them symbolic where a reshape reads a shape at run time; the runtime's
    contract check and the export stage read them from the graph's declared outputs.
    """
    cfg = model.config
    for output, rows in zip(proto.graph.output, (4 + cfg.num_classes + cfg.num_masks, cfg.num_masks)):
        dim = output.type.tensor_type.shape.dim[1]
        dim.Clear()
        dim.dim_value = rows


def _groups(preds: np.ndarray, protos: np.ndarray, nc: int) -> list[tuple[str, np.ndarray]]:
    return [("boxes", preds[:, :4]), ("scores", preds[:, 4 : 4 + nc]), ("coefficients", preds[:, 4 + nc :]),
            ("prototypes", protos)]


def verify_onnx(model: EdgeSeg, path: Path, sizes: list[tuple[int, int]], seed: int = 0) -> float:
    """Run ``path`` in ONNX Runtime and ``model.predict`` in torch on random inputs of ``sizes``.

    Returns the worst relative difference; ExportError above VERIFY_RTOL.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    worst = 0.0
    model = model.eval()
    for h, w in sizes:
        x = rng.random((1, 3, h, w), dtype=np.float32)
        with torch.no_grad():
            ref = [t.numpy() for t in model.predict(torch.from_numpy(x))]
        got = session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
        nc = model.config.num_classes
        for (name, a), (_, b) in zip(_groups(ref[0], ref[1], nc), _groups(got[0], got[1], nc)):
            if a.shape != b.shape:
                raise ExportError(f"ONNX {path}: {name} of shape {b.shape} at {h}x{w}, torch gives {a.shape}")
            diff = float(np.abs(a - b).max()) / max(float(np.abs(a).max()), 1.0) if a.size else 0.0
            if diff > VERIFY_RTOL:
                raise ExportError(f"ONNX {path}: {name} differ from torch by {diff:.1e} at {h}x{w} "
                                  f"(limit {VERIFY_RTOL})")
            worst = max(worst, diff)
    return worst


def export_model(model: EdgeSeg, out: str | Path, imgsz: int | None = None, dynamic: bool = True,
                 verify: bool = True) -> Path:
    """Write ``model`` (in its export mode) as ONNX to ``out``; checked against torch when ``verify``.

    Args:
        imgsz: the traced (and, when not ``dynamic``, the fixed) input size; the model's own by default.
        dynamic: batch, height and width stay symbolic (any multiple of the stride runs).
    """
    out = Path(out)
    imgsz = imgsz or model.config.imgsz
    if imgsz <= 0 or imgsz % STRIDES[-1]:
        raise ExportError(f"imgsz {imgsz}: expected a positive multiple of {STRIDES[-1]}")
    cpu = copy.deepcopy(model).cpu().eval()
    module = ExportModule(cpu).eval()
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    axes = {
        INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
        OUTPUT_NAMES[0]: {0: "batch", 2: "anchors"},
        OUTPUT_NAMES[1]: {0: "batch", 2: "mask_height", 3: "mask_width"},
    }
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about shapes read as Python values
            torch.onnx.export(
                module, (torch.zeros(1, 3, imgsz, imgsz),), str(tmp), opset_version=OPSET,
                input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                dynamic_axes=axes if dynamic else None, do_constant_folding=True, dynamo=False,
            )
        proto = onnx.load(str(tmp))
        _pin_channel_dims(proto, cpu)
        # A dynamic model's imgsz is the runtime's default size, which must be one it accepts.
        default = min(max(imgsz, MIN_INPUT_SIZE), MAX_INPUT_SIZE) if dynamic else imgsz
        for key, value in onnx_metadata(cpu, default).items():
            proto.metadata_props.add(key=key, value=value)
        proto.producer_name = "edgeseg"
        onnx.save(proto, str(tmp))
        if verify:
            sizes = [(imgsz, imgsz)] + ([(imgsz, imgsz + 2 * STRIDES[-1])] if dynamic else [])
            worst = verify_onnx(cpu, tmp, sizes)
            log.info("ONNX %s matches torch (worst relative difference %.1e)", out, worst)
        os.replace(tmp, out)
    except OSError as exc:
        raise ExportError(f"ONNX {out}: cannot write it ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return out


def checkpoint_to_onnx(checkpoint: Path, out: Path, imgsz: int | None = None, dynamic: bool = True) -> Path:
    """An EdgeSeg checkpoint's deployable weights (EMA when kept) as a verified ONNX file at ``out``."""
    ckpt = load_checkpoint(checkpoint)
    model = build_model(ckpt.model_config, ckpt.deploy_state())
    return export_model(model, out, imgsz or ckpt.model_config.imgsz, dynamic)
