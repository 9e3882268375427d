"""Model loading: the prototype-mask contract is checked before any frame is read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import DEMO_BUNDLE, DEMO_CLASS_NAMES

from edgeseg.backends.base import NetworkInfo, TensorInfo
from edgeseg.errors import ConfigError, ModelError
from edgeseg.model import load_model, spec_from_network

NAMES_3 = "{0: 'a', 1: 'b', 2: 'c'}"


def _info(outputs: list[tuple], input_shape: tuple = (1, 3, 640, 640), meta: dict | None = None) -> NetworkInfo:
    return NetworkInfo(
        path="m.onnx",
        inputs=(TensorInfo("images", input_shape, "tensor(float)"),),
        outputs=tuple(TensorInfo(f"output{i}", s, "tensor(float)") for i, s in enumerate(outputs)),
        metadata={"names": NAMES_3} if meta is None else meta,
    )


@pytest.mark.parametrize(
    "outputs, input_shape, meta, imgsz, expected, raises",
    [
        # yolov8-seg layout: 4 + 3 classes + 32 coefficients
        ([(1, 39, 8400), (1, 32, 160, 160)], (1, 3, 640, 640), None, None, ((640, 640), 3, 32, 0, 1), None),
        # outputs in the other order
        ([(1, 32, 160, 160), (1, 39, 8400)], (1, 3, 640, 640), None, None, ((640, 640), 3, 32, 1, 0), None),
        # no names in metadata: class count inferred
        ([(1, 39, 8400), (1, 32, 160, 160)], (1, 3, 640, 640), {}, None, ((640, 640), 3, 32, 0, 1), None),
        # dynamic input takes the requested size
        ([(1, 39, "n"), (1, 32, "h", "w")], ("b", 3, "h", "w"), None, 416, ((416, 416), 3, 32, 0, 1), None),
        # dynamic input, no request: metadata imgsz
        ([(1, 39, "n"), (1, 32, "h", "w")], ("b", 3, "h", "w"), {"names": NAMES_3, "imgsz": "[512, 512]"},
         None, ((512, 512), 3, 32, 0, 1), None),
        # a detection model (no prototypes)
        ([(1, 84, 8400)], (1, 3, 640, 640), None, None, None, (ModelError, "not a prototype-mask model")),
        # channel count does not fit names + coefficients
        ([(1, 100, 8400), (1, 32, 160, 160)], (1, 3, 640, 640), None, None, None,
         (ModelError, "does not hold 4 box \\+ 3 class \\+ 32 mask rows")),
        # a dynamic size that is not a multiple of the stride
        ([(1, 39, "n"), (1, 32, "h", "w")], ("b", 3, "h", "w"), None, 333, None, (ConfigError, "multiple of 32")),
        ([(1, 39, "n"), (1, 32, "h", "w")], ("b", 3, "h", "w"), None, 1600, None, (ConfigError, "320 to 1280")),
        # not an image input
        ([(1, 39, 8400), (1, 32, 160, 160)], (1, 640), None, None, None, (ModelError, "NCHW image input")),
    ],
)
def test_spec_from_network(outputs, input_shape, meta, imgsz, expected, raises) -> None:
    info = _info(outputs, input_shape, meta)
    if raises:
        with pytest.raises(raises[0], match=raises[1]):
            spec_from_network(info, "m", imgsz)
        return
    spec = spec_from_network(info, "m", imgsz)
    assert (spec.input_size, spec.num_classes, spec.num_masks, spec.pred_index, spec.proto_index) == expected


def test_static_model_ignores_requested_size_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """The demo bundle's bare fp32 ONNX: a static 320 input, names and stride in its metadata."""
    model = load_model(DEMO_BUNDLE / "demo-320-fp32.onnx", imgsz=640, threads=1)
    try:
        assert model.spec.input_size == (320, 320) and not model.spec.dynamic
        assert "fixed 320x320 input; requested size 640 ignored" in caplog.text
        assert model.spec.class_names == DEMO_CLASS_NAMES and model.spec.num_classes == len(DEMO_CLASS_NAMES)
        out = model.backend.infer(np.zeros((1, 3, 320, 320), np.float32))
        assert out[model.spec.proto_index].shape == (1, model.spec.num_masks, 80, 80)
    finally:
        model.close()


def test_static_coco_model_ignores_requested_size(model_640: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = load_model(model_640, imgsz=320)
    assert model.spec.input_size == (640, 640) and not model.spec.dynamic
    assert "fixed 640x640 input; requested size 320 ignored" in caplog.text
    assert model.spec.class_names[0] == "person" and model.spec.num_classes == 80


@pytest.mark.parametrize("size", [320, 416, 512, 640, 1280])
def test_dynamic_model_runs_at_any_supported_size(model_dynamic: Path, size: int) -> None:
    model = load_model(model_dynamic, imgsz=size, threads=1)
    out = model.backend.infer(np.zeros((1, 3, size, size), np.float32))
    assert out[model.spec.pred_index].shape == (1, 116, (size // 8) ** 2 + (size // 16) ** 2 + (size // 32) ** 2)
    assert out[model.spec.proto_index].shape == (1, 32, size // 4, size // 4)


def test_quantised_320_model_loads(model_int8_320: Path) -> None:
    try:
        model = load_model(model_int8_320)
    except ModelError as exc:
        # ONNX Runtime 1.19 (the newest for Python 3.8, JetPack 5) has no ConvInteger kernel for this
        # file's int8 weights; the refusal must still be the one-line ModelError naming the operator.
        if "ConvInteger" in str(exc) and "\n" not in str(exc):
            pytest.skip(f"this ONNX Runtime cannot run the dynamically quantised model: {exc}")
        raise
    assert model.spec.input_size == (320, 320) and model.spec.num_classes == 80


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda d: d / "missing.onnx", "model file not found"),
        (lambda d: _write(d / "corrupt.onnx", b"\x08\x01garbage" * 50), "cannot load model"),
        (lambda d: _write(d / "empty.onnx", b""), "cannot load model"),
        (lambda d: _write(d / "weights.pt", b"x"), "expected an .onnx file"),
    ],
)
def test_bad_model_files_give_one_line(tmp_path: Path, make, expected: str) -> None:
    with pytest.raises(ModelError) as info:
        load_model(make(tmp_path))
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_model_with_unexpected_outputs_is_refused(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["images"], ["pooled"])],
        "not_seg",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [1, 3, 1, 1])],
    )
    path = tmp_path / "classifier.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    expected = r"not a prototype-mask model; expected outputs .* found pooled \[1, 3, 1, 1\]"
    with pytest.raises(ModelError, match=expected):
        load_model(path)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
