"""Batch-capable exports: ``python -m export.rebatch`` and ``edgeseg export --batch N``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import DEMO_BUNDLE
from onnx import TensorProto, helper

from edgeseg.backends.onnxruntime import OnnxRuntimeBackend
from edgeseg.bundle.manifest import load_manifest
from edgeseg.bundle.verify import integrity_problems
from edgeseg.errors import ExportError
from edgeseg.model import load_model
from export.pipeline import ExportOptions, export_bundle
from export.rebatch import BATCH_DIM, rebatch_file
from export.recipe import build_options

ROOT = Path(__file__).resolve().parents[1]
DEMO_FORMS = ("demo-320-fp32.onnx", "demo-320-int8-qdq.onnx", "demo-320-int8-qoperator.onnx")


def _input_dims(path: Path) -> list[object]:
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_param or d.dim_value for d in dims]


def _assert_batch_equals_singles(path: Path, n: int = 3) -> None:
    backend = OnnxRuntimeBackend(path, threads=2)
    try:
        frames = np.random.default_rng(1).random((n, 3, 320, 320), dtype=np.float32)
        batched = backend.infer_batch(frames)
        for k in range(n):
            for a, b in zip(batched[k], backend.infer(frames[k : k + 1])):
                assert a.shape[0] == 1
                np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)
    finally:
        backend.close()


def _run_rebatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "export.rebatch", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


@pytest.mark.parametrize("form", DEMO_FORMS)
def test_rebatch_makes_every_demo_form_take_any_batch(tmp_path: Path, form: str) -> None:
    target = tmp_path / form
    result = rebatch_file(DEMO_BUNDLE / form, target)
    assert result.reshapes == 9 and result.worst <= 1e-4 and not result.already
    assert _input_dims(target) == [BATCH_DIM, 3, 320, 320]
    assert _input_dims(DEMO_BUNDLE / form) == [1, 3, 320, 320], "the source is left as it was"
    _assert_batch_equals_singles(target)


def test_rebatch_command_prints_one_line(tmp_path: Path) -> None:
    proc = _run_rebatch(str(DEMO_BUNDLE / DEMO_FORMS[0]), str(tmp_path / "b.onnx"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rebatch: wrote ") and "batch 1,2,4 matches batch 1" in lines[0]


def _graph(tmp_path: Path, nodes: list[onnx.NodeProto], shape_in: list[int], shape_out: list[int],
           inits: list[onnx.TensorProto] | None = None, out_type: int = TensorProto.FLOAT) -> Path:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape_in)],
                              [helper.make_tensor_value_info("y", out_type, shape_out)], inits or [])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("not_image", "not an image network (input 'x' is [1, 16]"),
        ("batch_2", "input 'x' is [2, 3, 8, 8]; rebatching starts from a batch of 1"),
        ("mixes", "output 'y' has 1 frame(s) at batch 2"),
        ("dynamic_quantized", "dynamically quantised (DynamicQuantizeLinear"),
        ("missing", "ONNX file not found"),
        ("corrupt", "not a readable ONNX file"),
    ],
)
def test_rebatch_refuses_what_it_cannot_rebatch_in_one_line(tmp_path: Path, case: str, expected: str) -> None:
    if case == "not_image":
        w = helper.make_tensor("w", TensorProto.FLOAT, [16, 4], np.ones(64, np.float32))
        source = _graph(tmp_path, [helper.make_node("MatMul", ["x", "w"], ["y"])], [1, 16], [1, 4], [w])
    elif case == "batch_2":
        source = _graph(tmp_path, [helper.make_node("Relu", ["x"], ["y"])], [2, 3, 8, 8], [2, 3, 8, 8])
    elif case == "mixes":  # a mean over the batch axis: one frame out whatever goes in
        source = _graph(tmp_path, [helper.make_node("ReduceMean", ["x"], ["y"], axes=[0], keepdims=1)],
                        [1, 3, 8, 8], [1, 3, 8, 8])
    elif case == "dynamic_quantized":
        nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
                 helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
        source = _graph(tmp_path, nodes, [1, 3, 8, 8], [1, 3, 8, 8])
    elif case == "missing":
        source = tmp_path / "none.onnx"
    else:
        source = tmp_path / "corrupt.onnx"
        source.write_bytes(b"\x00garbage" * 64)
    target = tmp_path / "out" / "b.onnx"
    with pytest.raises(ExportError) as err:
        rebatch_file(source, target)
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert not target.exists()
    proc = _run_rebatch(str(source), str(target))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"rebatch: {err.value}"]


def test_rebatch_copies_a_graph_that_already_takes_any_batch(tmp_path: Path) -> None:
    once = rebatch_file(DEMO_BUNDLE / DEMO_FORMS[0], tmp_path / "once.onnx")
    twice = rebatch_file(once.target, tmp_path / "twice.onnx")
    assert twice.already and (tmp_path / "twice.onnx").read_bytes() == (tmp_path / "once.onnx").read_bytes()


def test_rebatch_real_yolov8n_seg(tmp_path: Path, model_640: Path, model_int8_320: Path) -> None:
    result = rebatch_file(model_640, tmp_path / "y640.onnx")
    assert result.reshapes == 11 and _input_dims(result.target) == [BATCH_DIM, 3, 640, 640]
    with pytest.raises(ExportError, match="dynamically quantised"):
        rebatch_file(model_int8_320, tmp_path / "int8.onnx")


def test_export_batch_writes_batch_capable_forms_and_records_the_batch(tmp_path: Path) -> None:
    calibration = tmp_path / "calib"
    calibration.mkdir()
    for image in sorted((DEMO_BUNDLE / "selftest").glob("*.jpg")):
        (calibration / image.name).write_bytes(image.read_bytes())
    out = tmp_path / "engines" / "b4"
    result = export_bundle(ExportOptions(model=DEMO_BUNDLE / DEMO_FORMS[0], out=out, precisions=("fp32", "int8"),
                                         calibration=calibration, latency_runs=1, threads=2, progress=False,
                                         selftest_images=2, batch=4))
    manifest = load_manifest(out)
    assert integrity_problems(out, manifest) == []
    assert [(e.file, e.max_batch) for e in manifest.engines] == [
        ("b4-320-fp32.onnx", 4), ("b4-320-int8-qdq.onnx", 4), ("b4-320-int8-qoperator.onnx", 4)]
    assert result.manifest.selftest is not None, "every form passed the self-test at batch 1"
    for engine in manifest.engines:
        assert _input_dims(out / engine.file) == [BATCH_DIM, 3, 320, 320]
        _assert_batch_equals_singles(out / engine.file)
    model = load_model(out, threads=1, precision="fp32")
    try:
        assert model.engine is not None and model.engine.max_batch == 4
        assert model.spec.max_batch is None, "an ONNX engine with a symbolic batch knows no limit"
    finally:
        model.close()


def test_export_batch_flag_is_validated_in_one_line(tmp_path: Path) -> None:
    for bad in (0, 33):
        with pytest.raises(ExportError, match="field 'batch'") as err:
            build_options(None, {"model": "m.onnx", "out": str(tmp_path / "b"), "batch": bad})
        assert "\n" not in str(err.value)
    assert build_options(None, {"model": "m.onnx", "out": "b", "batch": 8}).batch == 8
    proc = subprocess.run([sys.executable, "-m", "edgeseg", "export", "--model", "m.onnx", "--out",
                           str(tmp_path / "b"), "--batch", "0"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("edgeseg: ")
    assert "batch" in proc.stderr and "Traceback" not in proc.stderr
