"""OpenVINO INT8 through NNCF: the head scope found on both graphs, a gated IR, and the refusals."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("openvino", exc_type=ImportError)
pytest.importorskip("nncf", exc_type=ImportError)

import openvino as ov  # noqa: E402

from edgeseg.backends.base import Backend  # noqa: E402
from edgeseg.bundle.selftest import read_images  # noqa: E402
from edgeseg.errors import ExportError  # noqa: E402
from edgeseg.model import Model, load_model  # noqa: E402
from edgeseg.structures import ImageArray  # noqa: E402
from export import openvino_quant  # noqa: E402
from export.openvino_quant import find_head, gate, main, ov_names, quantize_openvino, read_onnx  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "engines" / "demo"
DEMO_ONNX = DEMO / "demo-320-fp32.onnx"
DEMO_IMAGES = DEMO / "selftest"

#: The last convolution of every path to an output: per scale box, class and coefficient, and the
#: prototype branch's last layer. The same ten on both networks.
YOLO_OUTPUT_LAYERS = {f"/model.22/cv{b}.{s}/cv{b}.{s}.2/Conv" for b in (2, 3, 4) for s in (0, 1, 2)} | {
    "/model.22/proto/cv3/conv/Conv"}
DEMO_OUTPUT_LAYERS = {f"/head/{b}.{s}/{b}.{s}.2/Conv" for b in ("box", "cls", "coef") for s in (0, 1, 2)} | {
    "/protonet/out/Conv"}


def test_head_scope_of_yolov8n_seg(model_640: Path) -> None:
    scope = find_head(read_onnx(model_640))
    # the DFL, the box arithmetic, the score Sigmoid, the final Concat and the prototype activation
    assert {"/model.22/dfl/Softmax", "/model.22/dfl/conv/Conv", "/model.22/Sub", "/model.22/Div_1",
            "/model.22/Sigmoid", "/model.22/Concat_4", "/model.22/proto/cv3/act/Mul"} <= scope.decode
    assert scope.output_layers == YOLO_OUTPUT_LAYERS
    assert not any(n.startswith(("/model.21/", "/model.22/cv2.0/cv2.0.1/")) for n in scope.nodes)  # trunk stays int8
    names = set(ov_names(ov.convert_model(str(model_640)), scope))
    # OpenVINO's names: the Conv split into Convolution + bias Add, the final Concat named after its output
    assert {"output0", "/model.22/cv3.0/cv3.0.2/Conv/WithoutBiases", "/model.22/cv3.0/cv3.0.2/Conv",
            "/model.22/dfl/Softmax", "/model.22/Sigmoid", "/model.22/proto/cv3/conv/Conv/WithoutBiases"} <= names
    assert not any(n.startswith("/model.21/") for n in names)


def test_head_scope_of_the_demo_model() -> None:
    scope = find_head(read_onnx(DEMO_ONNX))
    assert {"/head/Softplus", "/head/Mul", "/Sigmoid", "/Concat_25", "/Div", "/Sub_1"} <= scope.decode
    assert scope.output_layers == DEMO_OUTPUT_LAYERS
    assert not any(n.startswith(("/protonet/cv2/", "/head/cls.0/cls.0.1/")) for n in scope.nodes)
    names = set(ov_names(ov.convert_model(str(DEMO_ONNX)), scope))
    assert {"output0", "output1", "/Sigmoid", "/head/box.0/box.0.2/Conv/WithoutBiases",
            "/protonet/out/Conv/WithoutBiases"} <= names


def _tiny_onnx(path: Path) -> Path:
    """A network with no decode head: one convolution straight to a rank-4 output."""
    weight = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["out"], name="conv")], "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 32, 32])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_refuses_a_network_without_a_decode_head(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny = _tiny_onnx(tmp_path / "tiny.onnx")
    with pytest.raises(ExportError, match="cannot find the decode head"):
        find_head(read_onnx(tiny), f"model {tiny}")
    out = tmp_path / "tiny.xml"
    assert main([str(tiny), str(out), "--images", str(DEMO_IMAGES)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model ") and "cannot find the decode head" in err and "\n" not in err
    assert not out.exists()


@pytest.fixture(scope="module")
def demo_ir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openvino_quant.QuantResult]:
    out = tmp_path_factory.mktemp("ov") / "demo-320-int8.xml"
    yield quantize_openvino(DEMO_ONNX, out, DEMO_IMAGES, count=4, threads=2)


def test_demo_quantised_ir_loads_and_passes_the_gate(demo_ir: openvino_quant.QuantResult) -> None:
    assert demo_ir.gate.passed, demo_ir.gate.one_line()
    assert demo_ir.gate.figures is not None and demo_ir.gate.figures.reference_instances >= 20
    assert demo_ir.path.is_file() and demo_ir.path.with_suffix(".bin").is_file()
    assert demo_ir.size == (320, 320) and demo_ir.images == 4
    ir = ov.Core().read_model(str(demo_ir.path))
    quantisers = [op for op in ir.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]
    assert len(quantisers) > 20  # the trunk is int8
    by_name = {op.get_friendly_name(): op for op in ir.get_ordered_ops()}

    def inputs_of(name: str) -> list[str]:
        op = by_name[name]
        return [op.input_value(i).get_node().get_type_name() for i in range(op.get_input_size())]

    # a trunk convolution reads a quantised activation; the output layers read float ones
    assert inputs_of("/head/cls.0/cls.0.1/conv/Conv/WithoutBiases")[0] == "FakeQuantize"
    for name in ("/head/cls.0/cls.0.2/Conv/WithoutBiases", "/head/box.2/box.2.2/Conv/WithoutBiases",
                 "/protonet/out/Conv/WithoutBiases", "output0", "/Sigmoid"):
        assert "FakeQuantize" not in inputs_of(name), name
    model = load_model(DEMO_ONNX, threads=2, device="cpu")
    try:
        candidate = openvino_quant._load_ir(demo_ir.path, demo_ir.size, 2, "f32")
        try:
            assert candidate.spec.class_names == model.spec.class_names  # metadata carried into the IR
            assert candidate.backend.info.provider.startswith("OpenVINO")
            assert gate(model, candidate, _demo_images(), demo_ir.path.name).passed
        finally:
            candidate.close()
    finally:
        model.close()


class _Shifted(Backend):
    """The fp32 network with every box moved right by ``dx`` input pixels: a form that decodes wrong."""

    def __init__(self, inner: Backend, dx: float) -> None:
        self.inner, self.dx, self.info = inner, dx, inner.info

    def infer(self, inputs: npt.NDArray[np.float32]) -> Sequence[npt.NDArray[np.float32]]:
        outputs = [o.copy() for o in self.inner.infer(inputs)]
        outputs[0][:, 0, :] += self.dx
        return outputs


def _demo_images() -> list[tuple[str, ImageArray]]:
    return read_images(DEMO, sorted(f"selftest/{p.name}" for p in DEMO_IMAGES.glob("*.jpg")))


def test_gate_refuses_instances_that_drift_from_fp32() -> None:
    reference = load_model(DEMO_ONNX, threads=2, device="cpu")
    try:
        shifted = Model(reference.spec, _Shifted(reference.backend, 40.0))
        verdict = gate(reference, shifted, _demo_images(), "shifted.xml")
        assert not verdict.passed
        assert "shifted.xml" in verdict.one_line() and "int8" in verdict.one_line()
    finally:
        reference.close()


def test_a_refused_form_is_not_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def shifted_gate(reference: Model, candidate: Model, images: Sequence[tuple[str, ImageArray]],
                     file: str) -> openvino_quant.SelfTestResult:
        return gate(reference, Model(candidate.spec, _Shifted(candidate.backend, 40.0)), images, file)

    monkeypatch.setattr(openvino_quant, "gate", shifted_gate)
    out = tmp_path / "demo-int8.xml"
    with pytest.raises(ExportError, match=r"^OpenVINO INT8 of demo-320-fp32.onnx refused: self-test failed: ") as exc:
        quantize_openvino(DEMO_ONNX, out, DEMO_IMAGES, count=2, threads=2)
    assert "\n" not in str(exc.value)
    assert list(tmp_path.iterdir()) == []


def test_the_real_yolov8n_seg_int8_ir_matches_fp32_on_decoded_instances(
    model_dynamic: Path, train_images: Path, tmp_path: Path,
) -> None:
    """The real model at 320: NNCF int8 with the head in float, calibrated on COCO train images,
    passes the gate against ONNX Runtime fp32 on decoded instances (the int8 self-test bounds)."""
    result = quantize_openvino(model_dynamic, tmp_path / "y320-int8.xml", train_images, imgsz=320, count=24,
                               threads=2)
    assert result.gate.passed, result.gate.one_line()
    figures = result.gate.figures
    assert figures is not None and figures.reference_instances >= 20
    assert result.size == (320, 320) and result.path.with_suffix(".bin").is_file()
