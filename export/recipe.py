"""Export recipes: the flags of ``edgeseg export`` kept in a YAML file, validated the same way.

A recipe makes a bundle reproducible: the command line ``edgeseg export --recipe R.yaml`` gives
the same bundle as the flags it holds. Unknown keys are refused; flags given on the command line
override the recipe's values.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import Field, ValidationError

from edgeseg.bundle.manifest import MAX_ENGINE_BATCH
from edgeseg.bundle.selftest import SELFTEST_IMAGES
from edgeseg.errors import ExportError
from edgeseg.strict import StrictModel
from export.pipeline import ExportOptions, parse_precisions, parse_resolutions


class ExportRecipe(StrictModel):
    version: int = Field(1, ge=1, le=1, description="recipe format version")
    model: str = Field(description="source ONNX model")
    out: str = Field(description="bundle directory to write, e.g. engines/NAME")
    resolutions: list[int] = Field(default_factory=list, description="input sizes; empty = the model's default ladder")
    precision: list[str] = Field(default_factory=lambda: ["fp16", "int8"], description="fp32, fp16, int8")
    calibration: Optional[str] = Field(None, description="folder of calibration images (int8)")
    calibration_limit: int = Field(0, ge=0, description="use at most this many calibration images; 0 = all")
    val_images: Optional[str] = Field(None, description="annotated validation images for accuracy")
    val_annotations: Optional[str] = Field(None, description="COCO instances json of the validation images")
    workspace_mib: int = Field(1024, ge=64, le=65536, description="TensorRT builder workspace")
    threads: int = Field(0, ge=0, le=256, description="ONNX Runtime threads for latency and accuracy runs")
    latency_runs: int = Field(20, ge=1, le=10000, description="timed inferences per engine")
    selftest_images: int = Field(
        SELFTEST_IMAGES, ge=0, le=32,
        description="calibration images whose fp32 outputs the bundle carries for the engine self-test; 0 = none",
    )
    batch: int = Field(
        1, ge=1, le=MAX_ENGINE_BATCH,
        description="most frames one inference call takes: above 1, ONNX files with a symbolic batch and "
        "TensorRT plans with the profile min 1 / opt N / max N (several cameras per call)",
    )
    openvino: bool = Field(
        False, description="add OpenVINO IR engines: fp32 per resolution, and NNCF int8 with the decode head in "
        "float (gated on accuracy) where int8 is asked",
    )


def _path(value: Optional[str], base: Path) -> Path | None:
    if value is None:
        return None
    p = Path(value)
    return Path(os.path.normpath(p if p.is_absolute() else base / p))


def build_options(recipe_path: str | None, overrides: dict[str, Any]) -> ExportOptions:
    """ExportOptions from a recipe file (paths relative to it) with command-line overrides."""
    doc: dict[str, Any] = {}
    base = Path.cwd()
    if recipe_path is not None:
        p = Path(recipe_path)
        try:
            doc = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ExportError(f"recipe not found: {p}") from None
        except (OSError, yaml.YAMLError) as exc:
            raise ExportError(f"recipe {p}: not readable YAML ({type(exc).__name__})") from None
        if not isinstance(doc, dict):
            raise ExportError(f"recipe {p}: expected a mapping of keys")
        base = p.resolve().parent
    doc.update({k: v for k, v in overrides.items() if v is not None})
    try:
        r = ExportRecipe.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise ExportError(f"{recipe_path or 'export'}: field '{loc}': {msg}") from None
    return ExportOptions(
        model=_path(r.model, base) or Path(r.model),
        out=_path(r.out, base) or Path(r.out),
        resolutions=parse_resolutions(r.resolutions),
        precisions=parse_precisions(r.precision),
        calibration=_path(r.calibration, base),
        calibration_limit=r.calibration_limit,
        val_images=_path(r.val_images, base),
        val_annotations=_path(r.val_annotations, base),
        workspace_mib=r.workspace_mib,
        threads=r.threads,
        latency_runs=r.latency_runs,
        selftest_images=r.selftest_images,
        batch=r.batch,
        openvino=r.openvino,
    )
