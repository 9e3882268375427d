"""Network definitions of the export stage (torch): the EdgeSeg prototype-mask family."""

from export.models.edgeseg import (
    MODEL_SIZES,
    NORMALIZATION,
    EdgeSeg,
    ExportModule,
    ModelConfig,
    SizeSpec,
    TrainOutputs,
    build_model,
    count_flops,
    count_parameters,
)

__all__ = [
    "MODEL_SIZES",
    "NORMALIZATION",
    "EdgeSeg",
    "ExportModule",
    "ModelConfig",
    "SizeSpec",
    "TrainOutputs",
    "build_model",
    "count_flops",
    "count_parameters",
]
