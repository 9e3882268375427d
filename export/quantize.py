"""INT8 static quantisation with ONNX Runtime, in the two forms the two targets need.

* ``quantize_for_tensorrt``: Q/DQ with symmetric int8 activations and per-channel symmetric
  int8 weights, the explicit-quantisation form TensorRT builds INT8 engines from.
* ``quantize_for_cpu``: QOperator (QLinearConv ...) with uint8 activations and int8 weights,
  the form ONNX Runtime runs fastest on a CPU.

Both keep the decode head (``export.graph.decode_head``) in float, calibrate on images made
by the runtime's own preprocessing (``export.calibration``), and keep the source model's
metadata (class names, stride, imgsz) so the runtime reads the quantised file as it reads the
fp32 one. Input: a static-shape, simplified fp32 ONNX (one per resolution).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx
from onnxruntime.quantization import (
    CalibrationMethod,
    QuantFormat,
    QuantType,
    create_calibrator,
    quant_pre_process,
    quantize_static,
)
from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

from edgeseg.errors import ExportError
from export.calibration import CalibrationInput, PreprocessedReader, model_input
from export.graph import decode_head, name_nodes

log = logging.getLogger(__name__)

#: Images per calibration chunk: ORT's histogram calibrators hold every intermediate tensor of
#: one chunk in memory (a few hundred MB per 640 image), so 80 images at once would need ~20 GB.
CALIBRATION_CHUNK = 8
#: Histogram bins for Entropy/Percentile ranges (TensorRT's entropy calibrator also uses 2048).
HISTOGRAM_BINS = 2048
#: Target bins of the entropy search: 128 for a symmetric int8 range, as TensorRT does.
QUANTIZED_BINS = 128
#: Percentile kept in each tail by the Percentile method.
PERCENTILE = 99.999
#: Metadata key recording how a model was quantised (JSON).
QUANTIZATION_METADATA = "edgeseg.quantization"


@dataclass(frozen=True)
class Recipe:
    """How one quantised form is made; the two public functions each fix one.

    Attributes:
        quant_format: QDQ (TensorRT) or QOperator (ORT CPU kernels).
        activation_type, weight_type: int8 or uint8.
        symmetric_activations: zero point 0 for activations (TensorRT requires it).
        per_channel: one weight scale per output channel (axis 0 of a Conv weight).
        op_types: op types to quantise; everything else stays float.
        method: how activation ranges are found from the calibration histograms.
        percentile: for the Percentile method, the share of each tail kept, in percent.
        flip: calibrate on each image and its mirror image.
        exclude: extra node names to keep in float (besides the decode head).
        extra: further ``extra_options`` for ``quantize_static``.
    """

    quant_format: QuantFormat
    activation_type: QuantType
    weight_type: QuantType
    symmetric_activations: bool
    per_channel: bool
    op_types: tuple[str, ...]
    method: CalibrationMethod
    flip: bool = False
    exclude: tuple[str, ...] = ()
    percentile: float = PERCENTILE
    extra: dict[str, Any] = field(default_factory=dict)


def _calibrator_options(recipe: Recipe) -> dict[str, Any]:
    """Options of ORT's calibrator for ``recipe``.

    Histograms are always of signed values with both tails cut (``symmetric`` False): ORT's
    symmetric mode histograms |x| instead, which for SiLU outputs (-0.28 .. +30) cuts the
    percentile from one tail only and measured 0.3 to 0.5 mask points worse. The quantiser
    then makes the range symmetric (max of |low|, |high|) where the recipe asks for it.
    """
    options: dict[str, Any] = {"symmetric": False}
    if recipe.method in (CalibrationMethod.Entropy, CalibrationMethod.Percentile):
        options["num_bins"] = HISTOGRAM_BINS
    if recipe.method is CalibrationMethod.Entropy:
        options["num_quantized_bins"] = QUANTIZED_BINS
    if recipe.method is CalibrationMethod.Percentile:
        options["percentile"] = recipe.percentile
    return options


def collect_ranges(model_path: Path, reader: PreprocessedReader, recipe: Recipe, work: Path) -> TensorsData:
    """Activation ranges of ``model_path`` over the reader's images, in chunks (see CALIBRATION_CHUNK)."""
    calibrator = create_calibrator(
        model_path,
        list(recipe.op_types),
        augmented_model_path=str(work / "augmented.onnx"),
        calibrate_method=recipe.method,
        extra_options=_calibrator_options(recipe),
    )
    chatter = io.StringIO()  # ORT's calibrators print progress to stdout; keep it for the log
    try:
        with contextlib.redirect_stdout(chatter):
            for start in range(0, len(reader), CALIBRATION_CHUNK):
                reader.set_range(start, start + CALIBRATION_CHUNK)
                calibrator.collect_data(reader)
            ranges = calibrator.compute_data()
    finally:
        reader.close()
        log.debug("calibration: %s", " | ".join(chatter.getvalue().split("\n")))
    if not isinstance(ranges, TensorsData):
        raise ExportError(f"calibration of {model_path}: ONNX Runtime returned no tensor ranges")
    return ranges


def _prepare(fp32_onnx: Path, work: Path) -> Path:
    """Shape-inferred copy of the model with every node named (the quantiser needs both).

    ORT's graph optimisation is skipped: at its basic level it may fuse ops into ones that
    TensorRT cannot parse, and the input is already simplified by onnxsim.
    """
    prepared = work / "prepared.onnx"
    quant_pre_process(str(fp32_onnx), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
    model = onnx.load(str(prepared))
    name_nodes(model)
    onnx.save(model, str(prepared))
    return prepared


def _copy_metadata(source: onnx.ModelProto, out: Path, recipe: Recipe, images: int, excluded: int) -> None:
    """Put ``source``'s metadata_props (names, stride, imgsz ...) back on the model at ``out``,
    plus ``edgeseg.quantization``: how it was quantised, for the bundle manifest."""
    quantised = onnx.load(str(out))
    kept = {p.key: p.value for p in quantised.metadata_props}
    kept.update({p.key: p.value for p in source.metadata_props})
    kept[QUANTIZATION_METADATA] = json.dumps({
        "format": recipe.quant_format.name,
        "activations": recipe.activation_type.name,
        "weights": recipe.weight_type.name,
        "symmetric_activations": recipe.symmetric_activations,
        "per_channel": recipe.per_channel,
        "op_types": list(recipe.op_types),
        "calibration": recipe.method.name,
        "percentile": recipe.percentile if recipe.method is CalibrationMethod.Percentile else None,
        "calibration_images": images,
        "flip": recipe.flip,
        "float_nodes": excluded,
    })
    del quantised.metadata_props[:]
    for key, value in kept.items():
        quantised.metadata_props.add(key=key, value=value)
    onnx.save(quantised, str(out))


def quantize(
    fp32_onnx: Path,
    out: Path,
    images: Sequence[Path],
    recipe: Recipe,
    spec: CalibrationInput | None = None,
    progress: bool = True,
) -> Path:
    """Calibrate ``fp32_onnx`` on ``images`` and write the quantised model to ``out``."""
    fp32_onnx, out = Path(fp32_onnx), Path(out)
    if not fp32_onnx.is_file():
        raise ExportError(f"quantise: model file not found: {fp32_onnx}")
    if not images:
        raise ExportError("quantise: expected at least one calibration image, got none")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"quantise: cannot create the folder of {out} ({exc.strerror or exc})") from None
    spec = spec if spec is not None else model_input(fp32_onnx)
    source = onnx.load(str(fp32_onnx), load_external_data=False)
    with tempfile.TemporaryDirectory(prefix="edgeseg-quant-") as tmp:
        work = Path(tmp)
        prepared = _prepare(fp32_onnx, work)
        graph = onnx.load(str(prepared))
        excluded = sorted(decode_head(graph) | set(recipe.exclude))
        reader = PreprocessedReader(images, spec, flip=recipe.flip, progress=progress)
        ranges = collect_ranges(prepared, reader, recipe, work)
        cache = work / "ranges.json"
        save_tensors_data(ranges, cache)
        options = {
            "ActivationSymmetric": recipe.symmetric_activations,
            "WeightSymmetric": True,
            **recipe.extra,
        }
        log.info("quantising %s: %d nodes kept in float", fp32_onnx.name, len(excluded))
        quantize_static(
            str(prepared),
            str(out),
            calibration_data_reader=None,
            quant_format=recipe.quant_format,
            op_types_to_quantize=list(recipe.op_types),
            per_channel=recipe.per_channel,
            activation_type=recipe.activation_type,
            weight_type=recipe.weight_type,
            nodes_to_exclude=excluded,
            calibrate_method=recipe.method,
            extra_options=options,
            calibration_cache_path=str(cache),
        )
    _copy_metadata(source, out, recipe, len(images), len(excluded))
    return out


#: The TensorRT form (see ``quantize_for_tensorrt``).
TENSORRT_RECIPE = Recipe(
    quant_format=QuantFormat.QDQ,
    activation_type=QuantType.QInt8,
    weight_type=QuantType.QInt8,
    symmetric_activations=True,
    per_channel=True,
    op_types=("Conv",),
    method=CalibrationMethod.Percentile,
    extra={
        # Q/DQ only where an int8 kernel reads: on Conv inputs. Quantising Conv outputs too
        # would round every pre-activation a second time for nothing; TensorRT fuses the
        # float SiLU and the next Q into the convolution's epilogue anyway.
        "OpTypesToExcludeOutputQuantization": ["Conv"],
        # TensorRT adds the bias in float; an int32 DequantizeLinear on the bias is where
        # TensorRT's parser has failed on ORT-quantised models (onnxruntime issue 17738).
        "QuantizeBias": False,
        # Weights stay float behind a Q -> DQ pair, the form QAT exports have; TensorRT 8.x
        # parsers refuse an int8 initialiser into DequantizeLinear ("only activation types
        # allowed", onnxruntime issue 14229). The engine stores int8 weights either way.
        "AddQDQPairToWeight": True,
    },
)

#: The ONNX Runtime CPU form (see ``quantize_for_cpu``).
CPU_RECIPE = Recipe(
    quant_format=QuantFormat.QOperator,
    activation_type=QuantType.QUInt8,
    weight_type=QuantType.QInt8,
    symmetric_activations=False,
    per_channel=True,
    # The trunk end to end in uint8: with Conv alone every SiLU dequantises, runs in float and
    # quantises again, which ate most of the gain (40 ms against 33 ms for the whole trunk).
    op_types=("Conv", "Sigmoid", "Mul", "Add", "Concat", "Split", "MaxPool", "Resize"),
    method=CalibrationMethod.Percentile,
)


def quantize_for_tensorrt(
    fp32_onnx: Path,
    out: Path,
    images: Sequence[Path],
    *,
    method: CalibrationMethod = TENSORRT_RECIPE.method,
    percentile: float = PERCENTILE,
    flip: bool = False,
    exclude: Sequence[str] = (),
    progress: bool = True,
) -> Path:
    """Q/DQ model for TensorRT INT8 engines: symmetric int8 activations, per-channel int8 weights.

    Q/DQ sits on Conv inputs and weights only (zero point 0, weights per output channel on
    axis 0, float weights behind Q -> DQ, float biases); the decode head and ``exclude`` stay
    float. Activation ranges: the 99.999th percentile of each tail, made symmetric.

    Measured on the 640 yolov8n-seg, 80 COCO train2017 calibration images, mask / box mAP50-95
    on the 158 val2017 images through ``edgeseg eval`` (fp32: 0.308 / 0.373): this form
    0.302 / 0.368 (-0.5 mask points; ``benchmarks/bench_int8.py``). Alternatives tried:
    Percentile 99.99 0.305 / 0.370; Entropy (2048 bins) 0.295 / 0.359, -1.3 points; ORT's
    symmetric |x| histograms at 99.99 / 99.995 / 99.999: 0.300 / 0.306 / 0.303; with mirrored
    copies of the images (``flip``) 0.301 / 0.365, no gain for twice the time. The percentile
    variants are within noise of each other (about +-0.3 points on 158 images); Entropy is not.
    Calibration and quantisation take about 30 s on 2 cores. On the CPU this form runs slower
    than fp32 (fake-quantised, 125 against 109 ms in the same run): it is for TensorRT, whose
    INT8 kernels need exactly this form.
    """
    recipe = replace(TENSORRT_RECIPE, method=method, percentile=percentile, flip=flip, exclude=tuple(exclude))
    return quantize(fp32_onnx, out, images, recipe, progress=progress)


def quantize_for_cpu(
    fp32_onnx: Path,
    out: Path,
    images: Sequence[Path],
    *,
    method: CalibrationMethod = CPU_RECIPE.method,
    percentile: float = PERCENTILE,
    flip: bool = False,
    exclude: Sequence[str] = (),
    progress: bool = True,
) -> Path:
    """QOperator model for ONNX Runtime on the CPU: uint8 activations, per-channel int8 weights.

    The whole trunk runs on integer kernels (QLinearConv, QLinearSigmoid, QLinearMul,
    QLinearAdd, QLinearConcat ...; contrib ops, ORT only); the decode head and ``exclude``
    stay float. On x86 without VNNI, u8 x s8 products can saturate; this machine has VNNI,
    and ARM (Jetson's CPU) does not have the problem.

    Measured on the 640 yolov8n-seg (ORT 1.31, 2 threads, this 2-core AVX-512 VNNI machine;
    same images as ``quantize_for_tensorrt``; fp32 0.308 / 0.373): this form 0.300 / 0.367
    (-0.8 mask points) at 33 ms against fp32's 67 ms in a quiet session loop (2.0x; 1.7x to
    2.1x with another job on the machine; ``edgeseg bench`` infer stage 41 against 77 ms).
    Alternatives: MinMax 0.297 / 0.361; Percentile 99.99 0.296 / 0.359; Conv only (MinMax)
    0.300 / 0.360 at 40 ms (1.7x); the whole trunk as QDQ instead of QOperator: same speed.
    Calibration and quantisation take about 60 s on 2 cores.
    """
    recipe = replace(CPU_RECIPE, method=method, percentile=percentile, flip=flip, exclude=tuple(exclude))
    return quantize(fp32_onnx, out, images, recipe, progress=progress)
