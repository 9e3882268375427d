"""The engine bundle's manifest: the contract between the export stage and the runtime.

``engines/<bundle>/manifest.json`` describes the model (family, class names, normalisation) and
every engine file in the bundle: its sha256, input resolution, precision, what built it (a
TensorRT version and GPU, or ONNX Runtime) and what it measured at export (latency, accuracy).
The runtime trusts nothing it has not checked against this file, and the export stage writes
nothing else. Unknown keys are refused, as in the configuration: the format is versioned.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Final, List, Literal, Optional, Tuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeseg.config.errors import describe_validation_error
from edgeseg.errors import BundleError

MANIFEST_NAME: Final = "manifest.json"
BUNDLE_FORMAT: Final = "edgeseg-bundle"
BUNDLE_VERSION: Final = 1

Precision = Literal["fp32", "fp16", "int8"]
Runtime = Literal["onnxruntime", "tensorrt"]
#: How an int8 file was quantised: Q/DQ with symmetric activations (what TensorRT builds INT8
#: engines from) or ONNX Runtime's QOperator form (fastest on CPUs).
Quantization = Literal["qdq-symmetric", "qoperator"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NormalizationRecord(_Strict):
    scale: float = 1.0 / 255.0
    mean: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    rgb: bool = True
    pad_value: int = Field(114, ge=0, le=255)


class ModelRecord(_Strict):
    """What every engine of the bundle computes (one decoder contract)."""

    family: Literal["yolov8-seg", "edgeseg"]
    class_names: List[str] = Field(min_length=1)
    num_masks: int = Field(ge=1)
    stride: int = Field(32, ge=1)
    normalization: NormalizationRecord = Field(default_factory=NormalizationRecord)
    source: str = Field("", description="the model the bundle was exported from")
    source_sha256: str = ""


class BuilderRecord(_Strict):
    """What produced an engine; a TensorRT plan only runs where these match."""

    runtime: Runtime
    version: str = Field(description="TensorRT or ONNX Runtime version string")
    gpu: Optional[str] = None
    compute_capability: Optional[Tuple[int, int]] = None


class LatencyRecord(_Strict):
    median_ms: float = Field(ge=0)
    p90_ms: float = Field(ge=0)
    device: str = Field(description="where it was measured, e.g. 'CPU x86_64, 2 threads' or 'Orin'")


class AccuracyRecord(_Strict):
    box_map: float = Field(ge=0, le=1)
    box_map50: float = Field(ge=0, le=1)
    mask_map: float = Field(ge=0, le=1)
    mask_map50: float = Field(ge=0, le=1)
    dataset: str
    images: int = Field(ge=1)


class EngineRecord(_Strict):
    """One file of the bundle that a backend can load."""

    file: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)
    resolution: Tuple[int, int]
    precision: Precision
    quantization: Optional[Quantization] = None
    builder: BuilderRecord
    latency: Optional[LatencyRecord] = None
    accuracy: Optional[AccuracyRecord] = None

    @property
    def runtime(self) -> Runtime:
        return self.builder.runtime


class Manifest(_Strict):
    format: Literal["edgeseg-bundle"] = BUNDLE_FORMAT
    version: Literal[1] = BUNDLE_VERSION
    name: str = Field(min_length=1)
    created: str = ""
    model: ModelRecord
    engines: List[EngineRecord] = Field(min_length=1)
    #: Files kept beside the engines that no backend loads directly (e.g. the Q/DQ ONNX that a
    #: device builds its TensorRT INT8 engine from), name -> sha256.
    extra_files: Dict[str, str] = Field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2) + "\n"


def parse_manifest(text: str, origin: str) -> Manifest:
    """Validate manifest JSON text, or raise a one-line BundleError naming ``origin``."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BundleError(f"{origin}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    try:
        return Manifest.model_validate(doc)
    except ValidationError as exc:
        raise BundleError(f"{origin}: {describe_validation_error(exc)}") from None


def load_manifest(bundle_dir: str | Path) -> Manifest:
    """Read ``bundle_dir/manifest.json``; BundleError when missing, unreadable or invalid."""
    path = Path(bundle_dir) / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BundleError(f"{bundle_dir}: not an engine bundle (no {MANIFEST_NAME})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: cannot read ({exc})") from None
    return parse_manifest(text, str(path))


def is_bundle(path: str | Path) -> bool:
    return (Path(path) / MANIFEST_NAME).is_file()
