"""ONNX preparation: one static, simplified, BN-folded opset-17 file per input resolution.

TensorRT and the INT8 quantiser both want a static input shape, so a dynamic model is pinned
to each requested resolution (a static model yields its one resolution). onnxsim then
propagates the shapes, folds constants and, through onnxoptimizer's fuse_bn_into_conv, every
Conv+BatchNormalization pair; a BatchNormalization left over is refused rather than shipped.
Every prepared file is run against the original model on the same inputs before it is kept.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import onnxsim
from onnx import version_converter

from edgeseg.backends.base import Dim, NetworkInfo, TensorInfo
from edgeseg.errors import ExportError
from edgeseg.model import ModelSpec, spec_from_network

log = logging.getLogger(__name__)

#: The opset the bundle's ONNX files use (TensorRT 8.5 parses up to 17).
TARGET_OPSET = 17
#: Highest IR version ONNX Runtime 1.17+ and TensorRT 8.5's parser both read.
TARGET_IR_VERSION = 8
#: Relative tolerance of prepared outputs against the original model (float reordering only).
OUTPUT_RTOL = 1e-3
#: Inputs compared per check.
CHECK_SAMPLES = 2


@dataclass(frozen=True)
class SourceModel:
    """The model handed to the export stage, loaded and checked against the contract."""

    path: Path
    proto: onnx.ModelProto
    spec: ModelSpec
    input_name: str
    dynamic: bool


def _dims(value_info: onnx.ValueInfoProto) -> tuple[Dim, ...]:
    dims: list[Dim] = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or None)
    return tuple(dims)


def network_info(proto: onnx.ModelProto, path: str) -> NetworkInfo:
    """The NetworkInfo of an ONNX graph, as the runtime's contract check expects it."""
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    return NetworkInfo(
        path=path,
        inputs=tuple(TensorInfo(i.name, _dims(i), "tensor(float)") for i in inputs),
        outputs=tuple(TensorInfo(o.name, _dims(o), "tensor(float)") for o in proto.graph.output),
        metadata={p.key: p.value for p in proto.metadata_props},
    )


def load_source(path: str | Path) -> SourceModel:
    """Load and check an ONNX model before any long work; one-line errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"model file not found: {path}")
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, ValueError, ... for corrupt files
        raise ExportError(f"model {path}: not a readable ONNX file ({type(exc).__name__})") from None
    if not proto.graph.node:
        raise ExportError(f"model {path}: not a readable ONNX file (empty graph)")
    info = network_info(proto, str(path))
    if len(info.inputs) != 1:
        raise ExportError(f"model {path}: expected one image input, found {len(info.inputs)}")
    shape = info.inputs[0].shape
    dynamic = not all(isinstance(d, int) and d > 0 for d in shape[2:])
    spec = spec_from_network(info, path.stem)
    return SourceModel(path, proto, spec, info.inputs[0].name, dynamic)


def _to_opset(proto: onnx.ModelProto) -> onnx.ModelProto:
    current = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), TARGET_OPSET)
    if current == TARGET_OPSET:
        return proto
    try:
        return version_converter.convert_version(proto, TARGET_OPSET)
    except Exception as exc:  # the converter raises plain RuntimeErrors per unsupported op
        raise ExportError(f"cannot convert opset {current} to {TARGET_OPSET}: {exc}") from None


def _set_metadata(proto: onnx.ModelProto, key: str, value: str) -> None:
    for p in proto.metadata_props:
        if p.key == key:
            p.value = value
            return
    proto.metadata_props.add(key=key, value=value)


@contextlib.contextmanager
def native_output_to_log(what: str) -> Iterator[None]:
    """Send what C++ code writes to stdout/stderr (onnxsim's constant-folding warnings) to the log.

    Those lines bypass Python's streams, so they are caught at the file-descriptor level; they
    are expected for shape-dependent ops and only useful when debugging, so they go out at debug.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            for line in sink.read().decode(errors="replace").splitlines():
                if line.strip():
                    log.debug("%s: %s", what, line)


def prepare_static(source: SourceModel, size: int) -> onnx.ModelProto:
    """The source model pinned to ``size`` x ``size``, simplified, BN-folded, opset 17."""
    shape = [1, 3, size, size]
    proto = _to_opset(onnx.ModelProto.FromString(source.proto.SerializeToString()))
    try:
        with native_output_to_log("onnxsim"):
            simplified, ok = onnxsim.simplify(proto, overwrite_input_shapes={source.input_name: shape})
    except Exception as exc:  # onnxsim surfaces onnxruntime and checker errors as-is
        raise ExportError(f"model {source.path}: onnxsim failed at {size}: {str(exc).splitlines()[0]}") from None
    if not ok:
        raise ExportError(f"model {source.path}: onnxsim could not verify the simplified model at {size}")
    leftover = [n.name or n.output[0] for n in simplified.graph.node if n.op_type == "BatchNormalization"]
    if leftover:
        raise ExportError(
            f"model {source.path}: BatchNormalization not preceded by a Conv cannot be folded: {', '.join(leftover)}"
        )
    simplified.ir_version = min(simplified.ir_version, TARGET_IR_VERSION)
    del simplified.metadata_props[:]
    simplified.metadata_props.extend(source.proto.metadata_props)
    _set_metadata(simplified, "imgsz", f"[{size}, {size}]")
    return simplified


def _session(proto: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def check_against_source(source: SourceModel, prepared: onnx.ModelProto, size: int, seed: int = 0) -> float:
    """Run both models on the same inputs; the largest relative output difference.

    Raises ExportError above OUTPUT_RTOL: a simplification that changes results is a bug, and
    shipping it would make every later accuracy figure meaningless.
    """
    original = onnx.ModelProto.FromString(source.proto.SerializeToString())
    original.ir_version = min(original.ir_version, TARGET_IR_VERSION)
    a, b = _session(original), _session(prepared)
    rng = np.random.default_rng(seed)
    worst = 0.0
    for _ in range(CHECK_SAMPLES):
        x = rng.random((1, 3, size, size), dtype=np.float32)
        for ya, yb in zip(a.run(None, {source.input_name: x}), b.run(None, {source.input_name: x})):
            if ya.shape != yb.shape:
                raise ExportError(f"prepared model at {size}: output shape {yb.shape} differs from {ya.shape}")
            scale = max(float(np.abs(ya).max()), 1e-6)
            worst = max(worst, float(np.abs(ya - yb).max()) / scale)
    if worst > OUTPUT_RTOL:
        raise ExportError(f"prepared model at {size} differs from the source by {worst:.2e} (limit {OUTPUT_RTOL})")
    return worst


def save(proto: onnx.ModelProto, path: Path) -> Path:
    onnx.save(proto, str(path))
    return path
