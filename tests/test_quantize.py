"""INT8 quantisation: the decode head found from the graph, the two quantised forms, metadata kept."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeseg.errors import ExportError
from edgeseg.model import Normalization, load_model
from edgeseg.preprocess import Preprocessor
from export.calibration import calibration_images
from export.graph import decode_convolutions, decode_head, name_nodes
from export.quantize import QUANTIZATION_METADATA, quantize_for_cpu, quantize_for_tensorrt

#: The tiny model: 64x64 input, two classes, two prototypes, DFL with 4 bins, final stride 4.
SIZE = 64
CLASSES = 2
PROTOS = 2
REG_MAX = 4
STRIDE = 4
GRID = SIZE // STRIDE
NAMES = "{0: 'cat', 1: 'dog'}"
#: Trunk convolutions of the tiny model, which must be quantised.
TRUNK_CONVS = ("stem", "body", "proto_conv", "box_conv", "cls_conv", "coef_conv")
#: Nodes of its decode head, which must stay float.
HEAD_NODES = ("dfl_reshape", "dfl_transpose", "dfl_softmax", "dfl_conv", "box_reshape", "box_scale",
              "cls_reshape", "cls_sigmoid", "coef_reshape", "concat", "proto_sigmoid", "proto_mul")
#: Calibration images for the tiny model.
CALIBRATION_IMAGES = 6


def _conv(name: str, x: str, cin: int, cout: int, k: int, s: int, rng: np.random.Generator) -> tuple[
        onnx.NodeProto, list[onnx.TensorProto]]:
    w = numpy_helper.from_array((rng.standard_normal((cout, cin, k, k)) * (1.0 / np.sqrt(cin * k * k)))
                                .astype(np.float32), f"{name}.w")
    b = numpy_helper.from_array((rng.standard_normal(cout) * 0.1).astype(np.float32), f"{name}.b")
    node = helper.make_node("Conv", [x, w.name, b.name], [f"{name}.out"], name=name,
                            kernel_shape=[k, k], strides=[s, s], pads=[k // 2] * 4)
    return node, [w, b]


def _silu(name: str, x: str) -> list[onnx.NodeProto]:
    return [helper.make_node("Sigmoid", [x], [f"{name}.sig"], name=f"{name}_sigmoid"),
            helper.make_node("Mul", [x, f"{name}.sig"], [f"{name}.out"], name=f"{name}_mul")]


def tiny_model(path: Path) -> Path:
    """A prototype-mask model in the yolov8-seg layout, small enough to quantise in a second."""
    rng = np.random.default_rng(0)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def conv(name: str, x: str, cin: int, cout: int, k: int = 3, s: int = 1) -> str:
        node, params = _conv(name, x, cin, cout, k, s, rng)
        nodes.append(node)
        inits.extend(params)
        return node.output[0]

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    x = conv("stem", "images", 3, 8, s=2)
    nodes.extend(_silu("stem_act", x))
    x = conv("body", "stem_act.out", 8, 8, s=2)
    nodes.extend(_silu("body_act", x))
    feat = "body_act.out"
    p = conv("proto_conv", feat, 8, PROTOS, k=1)
    nodes += [helper.make_node("Sigmoid", [p], ["proto.sig"], name="proto_sigmoid"),
              helper.make_node("Mul", [p, "proto.sig"], ["output1"], name="proto_mul")]
    n = GRID * GRID
    box = conv("box_conv", feat, 8, 4 * REG_MAX, k=1)
    cls = conv("cls_conv", feat, 8, CLASSES, k=1)
    coef = conv("coef_conv", feat, 8, PROTOS, k=1)
    dfl_w = const("dfl.w", np.arange(REG_MAX, dtype=np.float32).reshape(1, REG_MAX, 1, 1))
    nodes += [
        helper.make_node("Reshape", [box, const("s_dfl", np.array([1, 4, REG_MAX, n], np.int64))], ["dfl.r"],
                         name="dfl_reshape"),
        helper.make_node("Transpose", ["dfl.r"], ["dfl.t"], name="dfl_transpose", perm=[0, 2, 1, 3]),
        helper.make_node("Softmax", ["dfl.t"], ["dfl.p"], name="dfl_softmax", axis=1),
        helper.make_node("Conv", ["dfl.p", dfl_w], ["dfl.e"], name="dfl_conv", kernel_shape=[1, 1]),
        helper.make_node("Reshape", ["dfl.e", const("s_box", np.array([1, 4, n], np.int64))], ["box.r"],
                         name="box_reshape"),
        helper.make_node("Mul", ["box.r", const("stride", np.array(STRIDE, np.float32))], ["box.px"],
                         name="box_scale"),
        helper.make_node("Reshape", [cls, const("s_cls", np.array([1, CLASSES, n], np.int64))], ["cls.r"],
                         name="cls_reshape"),
        helper.make_node("Sigmoid", ["cls.r"], ["cls.p"], name="cls_sigmoid"),
        helper.make_node("Reshape", [coef, const("s_coef", np.array([1, PROTOS, n], np.int64))], ["coef.r"],
                         name="coef_reshape"),
        helper.make_node("Concat", ["box.px", "cls.p", "coef.r"], ["output0"], name="concat", axis=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny-seg",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4 + CLASSES + PROTOS, n]),
         helper.make_tensor_value_info("output1", TensorProto.FLOAT, [1, PROTOS, GRID, GRID])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    for key, value in {"names": NAMES, "stride": str(STRIDE), "imgsz": f"[{SIZE}, {SIZE}]"}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def synthetic_images(folder: Path, count: int) -> list[Path]:
    """Images with structure (gradients, shapes) rather than noise, so ranges are realistic."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    paths = []
    for i in range(count):
        yy, xx = np.mgrid[0:72, 0:96]
        image = np.stack([(xx * 2 + i * 20) % 256, (yy * 3) % 256, (xx + yy) % 256], -1).astype(np.uint8)
        cv2.circle(image, (int(rng.integers(10, 86)), int(rng.integers(10, 62))), 12, (255, 255, 255), -1)
        paths.append(folder / f"im{i}.png")
        cv2.imwrite(str(paths[-1]), image)
    return paths


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.onnx")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return synthetic_images(tmp_path_factory.mktemp("calib"), CALIBRATION_IMAGES)


@pytest.fixture(scope="module")
def trt_model(tiny: Path, images: list[Path], tmp_path_factory: pytest.TempPathFactory) -> onnx.ModelProto:
    out = quantize_for_tensorrt(tiny, tmp_path_factory.mktemp("q") / "tiny-int8-qdq.onnx", images, progress=False)
    return onnx.load(str(out))


@pytest.fixture(scope="module")
def cpu_model(tiny: Path, images: list[Path], tmp_path_factory: pytest.TempPathFactory) -> onnx.ModelProto:
    out = quantize_for_cpu(tiny, tmp_path_factory.mktemp("q") / "tiny-int8-cpu.onnx", images, progress=False)
    return onnx.load(str(out))


def run(model: onnx.ModelProto | Path, x: np.ndarray) -> list[np.ndarray]:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x})  # type: ignore[return-value]


def preprocessed(path: Path) -> np.ndarray:
    image = cv2.resize(cv2.imread(str(path)), (SIZE, SIZE))[:, :, ::-1]
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None], np.float32) / 255.0


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


# --- the decode head -------------------------------------------------------------------------


@pytest.mark.parametrize("name", HEAD_NODES)
def test_tiny_head_node_is_float(tiny: Path, name: str) -> None:
    assert name in decode_head(onnx.load(str(tiny)))


@pytest.mark.parametrize("name", TRUNK_CONVS + ("stem_act_mul", "body_act_sigmoid"))
def test_tiny_trunk_node_is_quantisable(tiny: Path, name: str) -> None:
    assert name not in decode_head(onnx.load(str(tiny)))


@pytest.mark.realdata
def test_real_640_head_keeps_decoding_in_float(model_640: Path) -> None:
    model = onnx.load(str(model_640))
    name_nodes(model)
    head = decode_head(model)
    by_output = {out: n for n in model.graph.node for out in n.output}
    final = by_output["output0"]
    assert final.op_type == "Concat" and final.name in head
    # Everything that feeds the final Concat is float back to the last trunk convolution.
    assert all(by_output[i].name in head for i in final.input if i in by_output)
    dfl = decode_convolutions(model)
    assert len(dfl) == 1 and dfl <= head
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    assert len([c for c in convs if c not in head]) == len(convs) - 1  # every backbone/neck conv quantised
    softmax = [n.name for n in model.graph.node if n.op_type == "Softmax"]
    assert softmax and set(softmax) <= head


# --- the TensorRT form -----------------------------------------------------------------------


def test_trt_form_is_symmetric_int8_qdq(trt_model: onnx.ModelProto) -> None:
    ops = Counter(n.op_type for n in trt_model.graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] == ops["QuantizeLinear"]
    assert "QLinearConv" not in ops and "ConvInteger" not in ops
    for node in trt_model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zero_point = initializer(trt_model, node.input[2])
            assert zero_point.dtype == np.int8, node.name
            assert not zero_point.any(), f"{node.name}: zero point must be 0 (symmetric)"


@pytest.mark.parametrize("conv", TRUNK_CONVS)
def test_trt_form_conv_reads_int8_input_and_per_channel_weights(trt_model: onnx.ModelProto, conv: str) -> None:
    by_output = {out: n for n in trt_model.graph.node for out in n.output}
    node = next(n for n in trt_model.graph.node if n.name == conv)
    assert by_output[node.input[0]].op_type == "DequantizeLinear", f"{conv}: activation input must be quantised"
    weight_dq = by_output[node.input[1]]
    weight_q = by_output[weight_dq.input[0]]
    assert (weight_dq.op_type, weight_q.op_type) == ("DequantizeLinear", "QuantizeLinear")
    float_weight = initializer(trt_model, weight_q.input[0])  # float weight behind a Q -> DQ pair
    assert float_weight.dtype == np.float32
    for qdq in (weight_q, weight_dq):
        assert initializer(trt_model, qdq.input[1]).shape == (float_weight.shape[0],)  # one scale per channel
        assert {a.name: a.i for a in qdq.attribute}.get("axis", 1) == 0
    bias = initializer(trt_model, node.input[2])
    assert bias.dtype == np.float32  # TensorRT adds the bias in float


@pytest.mark.parametrize("name", ["concat", "dfl_conv", "cls_sigmoid", "box_scale"])
def test_trt_form_head_sees_only_float(trt_model: onnx.ModelProto, name: str) -> None:
    by_output = {out: n for n in trt_model.graph.node for out in n.output}
    node = next(n for n in trt_model.graph.node if n.name == name)
    assert all(by_output[i].op_type != "DequantizeLinear" for i in node.input if i in by_output)


def test_trt_form_runs_close_to_fp32(tiny: Path, trt_model: onnx.ModelProto, images: list[Path]) -> None:
    x = preprocessed(images[0])
    ref, got = run(tiny, x), run(trt_model, x)
    for r, g in zip(ref, got):
        assert g.shape == r.shape
        assert np.corrcoef(r.ravel(), g.ravel())[0, 1] > 0.99


# --- the CPU form ----------------------------------------------------------------------------


def test_cpu_form_uses_integer_kernels(cpu_model: onnx.ModelProto, tiny: Path, images: list[Path]) -> None:
    ops = Counter(n.op_type for n in cpu_model.graph.node)
    assert ops["QLinearConv"] == len(TRUNK_CONVS)
    assert ops["Conv"] == 1  # the DFL expectation
    x = preprocessed(images[1])
    for r, g in zip(run(tiny, x), run(cpu_model, x)):
        assert np.corrcoef(r.ravel(), g.ravel())[0, 1] > 0.99


@pytest.mark.parametrize("form, quant_format, activations", [
    ("trt_model", "QDQ", "QInt8"),
    ("cpu_model", "QOperator", "QUInt8"),
])
def test_metadata_kept_and_runtime_reads_names(
    form: str, quant_format: str, activations: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    model: onnx.ModelProto = request.getfixturevalue(form)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["names"] == NAMES and meta["stride"] == str(STRIDE)
    recipe = json.loads(meta[QUANTIZATION_METADATA])
    assert (recipe["format"], recipe["activations"], recipe["weights"]) == (quant_format, activations, "QInt8")
    assert recipe["calibration_images"] == CALIBRATION_IMAGES and recipe["float_nodes"] == len(HEAD_NODES)
    path = tmp_path / "q.onnx"
    onnx.save(model, str(path))
    loaded = load_model(path, device="cpu")
    try:
        assert loaded.spec.class_names == ("cat", "dog") and loaded.spec.input_size == (SIZE, SIZE)
    finally:
        loaded.close()


# --- bad input -------------------------------------------------------------------------------


def test_dynamic_model_is_refused_before_calibration(tiny: Path, images: list[Path], tmp_path: Path) -> None:
    model = onnx.load(str(tiny))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    path = tmp_path / "dynamic.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ExportError, match="expected a static input shape"):
        quantize_for_tensorrt(path, tmp_path / "out.onnx", images, progress=False)


def test_missing_model_and_no_images(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="model file not found"):
        quantize_for_cpu(tmp_path / "none.onnx", tmp_path / "out.onnx", [tmp_path / "a.jpg"], progress=False)
    with pytest.raises(ExportError, match="at least one calibration image"):
        quantize_for_cpu(tiny, tmp_path / "out.onnx", [], progress=False)


# --- the real model, at 320 to keep it quick --------------------------------------------------

#: Calibration images for the real-model test (a quick check, not an accuracy figure).
REAL_CALIBRATION_IMAGES = 4
REAL_SIZE = 320
#: What "still detects" means (measured: correlation 0.986-0.994, all classes kept, boxes within 2.7 px).
MIN_SCORE_CORRELATION = 0.95
CONFIDENT = 0.5
MIN_CLASS_AGREEMENT = 0.9
MAX_BOX_SHIFT_PX = 4.0


def fixed_size(dynamic: Path, size: int, out: Path) -> Path:
    """The dynamic real model with its input fixed to ``size`` (what the export pipeline feeds in)."""
    model = onnx.load(str(dynamic))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for dim, value in zip(dims, (1, 3, size, size)):
        dim.dim_value = value
    onnx.save(model, str(out))
    return out


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("quantise", [quantize_for_tensorrt, quantize_for_cpu])
def test_real_model_quantises_and_still_detects(
    quantise: Callable[..., Path], model_dynamic: Path, val_images: Path, train_images: Path, tmp_path: Path
) -> None:
    fp32 = fixed_size(model_dynamic, REAL_SIZE, tmp_path / "fp32-320.onnx")
    images = calibration_images(train_images, limit=REAL_CALIBRATION_IMAGES)
    out = quantise(fp32, tmp_path / "int8-320.onnx", images, progress=False)
    loaded = load_model(out, device="cpu")
    try:
        assert loaded.spec.class_names[0] == "person" and loaded.spec.input_size == (REAL_SIZE, REAL_SIZE)
    finally:
        loaded.close()
    image = cv2.imread(str(sorted(val_images.glob("*.jpg"))[0]))
    x = Preprocessor(Normalization())(image, (REAL_SIZE, REAL_SIZE))[0].copy()  # type: ignore[index]
    (ref, _), (got, _) = run(fp32, x), run(out, x)
    scores_ref, scores_got = ref[0, 4:84], got[0, 4:84]
    assert np.corrcoef(scores_ref.ravel(), scores_got.ravel())[0, 1] > MIN_SCORE_CORRELATION
    # The confident detections of fp32 are still there: same anchors, same classes, same boxes.
    confident = scores_ref.max(0) > CONFIDENT
    assert confident.any()
    assert (scores_got.argmax(0)[confident] == scores_ref.argmax(0)[confident]).mean() > MIN_CLASS_AGREEMENT
    assert np.abs(got[0, :4, confident] - ref[0, :4, confident]).max() < MAX_BOX_SHIFT_PX
