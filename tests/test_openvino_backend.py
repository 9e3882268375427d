"""The OpenVINO backend: its decoded instances against ONNX Runtime fp32's, its compiled-model
cache, its one-line refusals, and ``--backend`` on the commands.

Accuracy is judged on decoded, postprocessed instances (the runtime's own ``FrameProcessor``
through ``edgeseg.bundle.selftest.decode_instances``), not on raw tensors: a precision that
shifts every score a little is harmless, one that loses or moves instances is not, and only the
instances tell the two apart. f32 must give the same instances as ONNX Runtime fp32; bf16 and
f16 must stay within the self-test's fp16 tolerances (``TOLERANCES["fp16"]``).

Tests that run OpenVINO skip where it is not installed (the Python 3.8 and 3.10 compat venvs);
the configuration, flag and "not installed" tests run everywhere.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest
from conftest import DEMO_BUNDLE, demo_images
from pydantic import ValidationError

from edgeseg.app import load_options
from edgeseg.bundle.selftest import (
    LEDGER,
    SELFTEST_SETTINGS,
    TOLERANCES,
    Figures,
    InstanceRecord,
    compare,
    decode_instances,
    read_images,
    shortfalls,
)
from edgeseg.cli import _overrides, build_parser, main
from edgeseg.config import load_config
from edgeseg.config.openvino import OpenVinoConfig, default_cache_dir
from edgeseg.config.schema import ModelConfig
from edgeseg.errors import BundleError, ConfigError, ModelError
from edgeseg.model import LoadOptions, Model, OpenVinoOptions, load_model
from edgeseg.structures import ImageArray

DEMO_ONNX = DEMO_BUNDLE / "demo-320-fp32.onnx"
DEMO_QOPERATOR = DEMO_BUNDLE / "demo-320-int8-qoperator.onnx"
#: Instances are the same one when of one class and box IoU at least this.
SAME_BOX_IOU = 0.9
#: f32 through OpenVINO computes what ONNX Runtime fp32 does, up to the order of float sums.
F32_MIN_IOU = 0.995
F32_MAX_SCORE_DIFF = 0.001
CAPABILITY = {"f32": "FP32", "bf16": "BF16", "f16": "FP16"}


@pytest.fixture(scope="module")
def ov() -> Any:
    return pytest.importorskip("openvino", exc_type=ImportError)


@pytest.fixture(scope="module")
def capabilities(ov: Any) -> List[str]:
    return [str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def _cpu_default(capabilities: List[str]) -> str:
    """What "auto" must resolve to on this CPU: OpenVINO's CPU default is bf16 where it has bf16."""
    return "bf16" if "BF16" in capabilities else "f32"


def _images(folder: Path, count: int) -> List[Tuple[str, ImageArray]]:
    names = sorted(p.name for p in folder.glob("*.jpg"))[:count]
    assert names, f"no images in {folder}"
    return read_images(folder, names)


def _instances(model: Model, images: List[Tuple[str, ImageArray]]) -> Dict[str, List[InstanceRecord]]:
    try:
        return decode_instances(model, images, SELFTEST_SETTINGS)
    finally:
        model.close()


def _openvino(path: Path, precision: str = "auto", **kw: Any) -> Model:
    return load_model(path, threads=2, backend="openvino", openvino=OpenVinoOptions(precision=precision, **kw))


def _check_f32(reference: Dict[str, List[InstanceRecord]], output: Dict[str, List[InstanceRecord]]) -> Figures:
    """Every instance down to the confidence threshold found again, in the same place and score."""
    figures = compare(reference, output, score_floor=SELFTEST_SETTINGS.conf_threshold, match_iou=SAME_BOX_IOU)
    assert figures.reference_instances > 0
    assert sum(map(len, output.values())) == sum(map(len, reference.values()))
    assert figures.matched == figures.reference_instances and figures.extra == 0, figures
    assert figures.box_iou >= F32_MIN_IOU and figures.mask_iou >= F32_MIN_IOU, figures
    assert figures.score_diff_max <= F32_MAX_SCORE_DIFF, figures
    return figures


def _check_16bit(reference: Dict[str, List[InstanceRecord]], output: Dict[str, List[InstanceRecord]]) -> None:
    figures = compare(reference, output, match_iou=SAME_BOX_IOU)
    assert figures.reference_instances > 0
    assert shortfalls(figures, TOLERANCES["fp16"]) == (), figures


# -- accuracy on decoded instances ------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_reference() -> Tuple[List[Tuple[str, ImageArray]], Dict[str, List[InstanceRecord]]]:
    images = _images(DEMO_BUNDLE / "selftest", 4)
    return images, _instances(load_model(DEMO_ONNX, threads=2, backend="onnxruntime"), images)


def test_demo_f32_gives_onnx_runtimes_instances(ov: Any, demo_reference: Any) -> None:
    images, reference = demo_reference
    model = _openvino(DEMO_ONNX, "f32")
    assert model.backend.inference_precision == "f32"  # type: ignore[attr-defined]
    assert re.fullmatch(r"OpenVINO \d+\.\d+\.\d+ CPU f32", model.backend.info.provider)
    _check_f32(reference, _instances(model, images))


def test_demo_auto_runs_the_cpus_default_within_the_fp16_tolerances(
    ov: Any, capabilities: List[str], demo_reference: Any
) -> None:
    images, reference = demo_reference
    model = _openvino(DEMO_ONNX, "auto")
    expected = _cpu_default(capabilities)
    assert model.backend.inference_precision == expected  # type: ignore[attr-defined]
    assert model.backend.info.provider.endswith(f"CPU {expected}")
    _check_16bit(reference, _instances(model, images))


@pytest.mark.parametrize("precision", ["bf16", "f16"])
def test_demo_16_bit_precisions_the_cpu_lists_stay_within_the_fp16_tolerances(
    ov: Any, capabilities: List[str], demo_reference: Any, precision: str
) -> None:
    if CAPABILITY[precision] not in capabilities:
        pytest.skip(f"this CPU does not list {precision} ({capabilities})")
    images, reference = demo_reference
    model = _openvino(DEMO_ONNX, precision)
    assert model.backend.inference_precision == precision  # type: ignore[attr-defined]
    _check_16bit(reference, _instances(model, images))


@pytest.mark.realdata
def test_yolov8n_seg_640_f32_and_auto_against_onnx_runtime_fp32(
    ov: Any, capabilities: List[str], model_640: Path, val_images: Path
) -> None:
    images = _images(val_images, 6)
    reference = _instances(load_model(model_640, threads=2, backend="onnxruntime"), images)
    assert sum(map(len, reference.values())) >= 10  # enough COCO instances to judge
    _check_f32(reference, _instances(_openvino(model_640, "f32"), images))
    auto = _openvino(model_640, "auto")
    assert auto.backend.inference_precision == _cpu_default(capabilities)  # type: ignore[attr-defined]
    assert auto.spec.input_size == (640, 640)
    _check_16bit(reference, _instances(auto, images))


# -- the backend itself -----------------------------------------------------------------------


def test_concurrent_infer_calls_each_get_their_own_request(ov: Any) -> None:
    model = _openvino(DEMO_ONNX, "f32")
    rng = np.random.default_rng(0)
    inputs = [rng.random((1, 3, 320, 320), dtype=np.float32) for _ in range(4)]
    alone = [[o.copy() for o in model.backend.infer(x)] for x in inputs]
    results: Dict[int, Any] = {}

    def work(i: int) -> None:
        for _ in range(3):
            results[i] = model.backend.infer(inputs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, expected in enumerate(alone):
        for got, want in zip(results[i], expected):
            np.testing.assert_array_equal(got, want)
    model.close()
    model.close()  # idempotent
    with pytest.raises(ModelError, match="closed"):
        model.backend.infer(inputs[0])


def test_outputs_stay_valid_after_the_next_call(ov: Any) -> None:
    model = _openvino(DEMO_ONNX, "f32")
    first = model.backend.infer(np.zeros((1, 3, 320, 320), np.float32))
    kept = [o.copy() for o in first]
    model.backend.infer(np.ones((1, 3, 320, 320), np.float32))
    for a, b in zip(first, kept):
        np.testing.assert_array_equal(a, b)
    model.close()


def test_the_compiled_model_cache_is_written_and_used_again(ov: Any, tmp_path: Path) -> None:
    cache = tmp_path / "ov-cache"
    first = _openvino(DEMO_ONNX, "f32", cache_dir=str(cache))
    blobs = sorted(p.name for p in cache.iterdir() if p.is_file())
    assert blobs, "no compiled model in the cache after the first load"
    stamps = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    x = np.random.default_rng(1).random((1, 3, 320, 320), dtype=np.float32)
    want = [o.copy() for o in first.backend.infer(x)]
    first.close()
    second = _openvino(DEMO_ONNX, "f32", cache_dir=str(cache))
    # The same model, device and settings: OpenVINO imports the blob it wrote, compiling nothing new.
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == stamps
    for got, expected in zip(second.backend.infer(x), want):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    second.close()


def test_an_unwritable_cache_costs_only_the_cache(ov: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    model = _openvino(DEMO_ONNX, "f32", cache_dir=str(blocker / "cache"))
    assert model.backend.cache_dir is None  # type: ignore[attr-defined]
    assert "compiling without a cache" in caplog.text
    model.close()


def test_cache_dir_default_and_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert OpenVinoConfig().resolved_cache_dir() == str(tmp_path / "edgeseg" / "openvino")
    assert default_cache_dir() == tmp_path / "edgeseg" / "openvino"
    assert OpenVinoConfig(cache_dir="").resolved_cache_dir() is None
    assert OpenVinoConfig(cache_dir="/srv/ov").resolved_cache_dir() == "/srv/ov"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert OpenVinoConfig().resolved_cache_dir() == str(tmp_path / "home" / ".cache" / "edgeseg" / "openvino")


# -- bad input: one line each -----------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text, text
    return text


def test_openvino_missing_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    with pytest.raises(ModelError) as info:
        load_model(DEMO_ONNX, backend="openvino")
    assert _one_line(info.value) == ("model.backend 'openvino': OpenVINO is not installed "
                                     "(pip install 'edgeseg[openvino]')")


def test_openvino_missing_on_the_command_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    images = demo_images(tmp_path / "images", 1)
    code = main(["run", "--backend", "openvino", "--model", str(DEMO_ONNX), "--source", str(images)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert err[-1] == "edgeseg: model.backend 'openvino': OpenVINO is not installed (pip install 'edgeseg[openvino]')"


def test_a_device_not_present_is_one_line_naming_those_that_are(ov: Any) -> None:
    available = list(ov.Core().available_devices)
    if any(d.startswith("GPU") for d in available):
        pytest.skip(f"this machine has a GPU for OpenVINO ({available})")
    with pytest.raises(ModelError) as info:
        _openvino(DEMO_ONNX, device="GPU")
    assert _one_line(info.value) == (f"OpenVINO device 'GPU' is not present here "
                                     f"(available: {', '.join(available)})")


@pytest.mark.parametrize("precision", ["f32", "bf16", "f16"])
def test_a_precision_the_cpu_lists_is_used_and_reported(ov: Any, capabilities: List[str], precision: str) -> None:
    if CAPABILITY[precision] not in capabilities:
        with pytest.raises(ModelError, match=f"precision '{precision}' is not supported by CPU"):
            _openvino(DEMO_ONNX, precision)
        return
    model = _openvino(DEMO_ONNX, precision)
    assert model.backend.info.provider.endswith(f"CPU {precision}")
    model.close()


def test_a_precision_the_device_does_not_list_is_one_line(ov: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """This CPU may list every precision; a device without FP16 is made by faking its list."""
    import edgeseg.backends.openvino as backend_module

    class NoFp16Core(ov.Core):  # type: ignore[misc, name-defined]
        def get_property(self, *args: Any) -> Any:
            if args[1:] == ("OPTIMIZATION_CAPABILITIES",):
                return ["FP32", "BF16", "INT8"]
            return super().get_property(*args)

    class FakeOpenVino:
        Core = NoFp16Core
        __version__ = ov.__version__

    monkeypatch.setattr(backend_module, "import_openvino", lambda: FakeOpenVino)
    with pytest.raises(ModelError) as info:
        _openvino(DEMO_ONNX, "f16")
    assert _one_line(info.value) == "OpenVINO precision 'f16' is not supported by CPU (supports: bf16, f32)"
    model = _openvino(DEMO_ONNX, "bf16")  # a listed one still loads
    assert model.backend.inference_precision == "bf16"  # type: ignore[attr-defined]
    model.close()


def test_a_file_openvino_cannot_convert_is_one_line(ov: Any) -> None:
    with pytest.raises(ModelError) as info:
        _openvino(DEMO_QOPERATOR)
    text = _one_line(info.value)
    assert text.startswith(f"cannot load model {DEMO_QOPERATOR} with OpenVINO: ")
    assert "QLinearConv" in text  # the operators it cannot convert, not OpenVINO's source location


def test_an_ir_file_loads_on_auto_with_its_metadata(ov: Any, tmp_path: Path, demo_reference: Any) -> None:
    """An IR saved from the ONNX keeps its metadata (class names, normalisation) and its instances."""
    xml = tmp_path / "demo.xml"
    ov.save_model(ov.Core().read_model(str(DEMO_ONNX)), str(xml), compress_to_fp16=False)
    model = load_model(xml, threads=2, openvino=OpenVinoOptions(precision="f32"))  # backend auto
    assert model.backend.info.provider.startswith("OpenVINO ")
    assert model.spec.class_names == ("circle", "square", "triangle", "star", "ring")
    assert model.spec.family == "edgeseg"
    images, reference = demo_reference
    _check_f32(reference, _instances(model, images))
    with pytest.raises(ModelError, match="is an OpenVINO IR; use model.backend openvino"):
        load_model(xml, backend="onnxruntime")


@pytest.mark.parametrize("device, available, expected", [
    ("CPU", ["CPU"], True), ("GPU", ["CPU"], False), ("GPU", ["CPU", "GPU.0", "GPU.1"], True),
    ("GPU.1", ["CPU", "GPU.0", "GPU.1"], True), ("GPU.2", ["CPU", "GPU.0"], False), ("NPU", ["CPU", "GPU"], False),
    ("AUTO", ["CPU"], True), ("AUTO:GPU,CPU", ["CPU"], True), ("AUTO:GPU,NPU", ["CPU"], False),
    ("HETERO:GPU,CPU", ["CPU"], False), ("MULTI:GPU.0,CPU", ["CPU", "GPU.0"], True),
])
def test_device_presence(device: str, available: List[str], expected: bool) -> None:
    from edgeseg.backends.openvino import present

    assert present(device, available) is expected


def test_tensorrt_on_a_plain_onnx_file_is_refused() -> None:
    with pytest.raises(ModelError) as info:
        load_model(DEMO_ONNX, backend="tensorrt")
    assert "TensorRT runs the plans of an engine bundle" in _one_line(info.value)


def test_an_unknown_backend_is_refused() -> None:
    with pytest.raises(ConfigError, match="model.backend 'tflite'"):
        load_model(DEMO_ONNX, backend="tflite")  # type: ignore[arg-type]


def test_the_backend_module_imports_openvino_only_when_constructed() -> None:
    """Importing edgeseg (and the backend module) never imports openvino: only loading does."""
    import subprocess

    code = ("import sys, edgeseg.cli, edgeseg.model, edgeseg.backends.openvino; "
            "print('openvino' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- bundles ----------------------------------------------------------------------------------


def test_a_bundle_through_openvino_runs_its_fp32_onnx_self_tested(ov: Any, capabilities: List[str]) -> None:
    LEDGER.clear()
    model = load_model(DEMO_BUNDLE, threads=2, backend="openvino")
    try:
        assert model.engine is not None and model.engine.file == "demo-320-fp32.onnx"
        assert model.spec.class_names == ("circle", "square", "triangle", "star", "ring")
        assert model.backend.info.provider.startswith("OpenVINO ")
        tested = f"demo-320-fp32.onnx@openvino-CPU-{_cpu_default(capabilities)}"
        assert LEDGER.counts().runs == {(tested, "passed"): 1}
    finally:
        model.close()
        LEDGER.clear()


def test_a_bundle_through_openvino_refuses_an_int8_precision() -> None:
    with pytest.raises(ConfigError, match="model.precision 'int8' applies to the bundle's own engines"):
        load_model(DEMO_BUNDLE, backend="openvino", precision="int8")


def test_a_bundle_keeps_to_an_explicit_runtime() -> None:
    model = load_model(DEMO_BUNDLE, threads=1, backend="onnxruntime")
    try:
        assert model.engine is not None and model.engine.runtime == "onnxruntime"
    finally:
        model.close()
    with pytest.raises(BundleError) as info:
        load_model(DEMO_BUNDLE, backend="tensorrt")
    assert _one_line(info.value) == "bundle demo: model.backend 'tensorrt': no tensorrt engine at 320 runs here " \
                                    "(it has onnxruntime)"


# -- configuration and flags ------------------------------------------------------------------


def test_model_config_backend_and_openvino_section() -> None:
    m = ModelConfig(backend="openvino", openvino={"device": "gpu.1", "precision": "f16", "cache_dir": ""})
    got = (m.backend, m.openvino.device, m.openvino.precision, m.openvino.cache_dir)
    assert got == ("openvino", "GPU.1", "f16", "")
    assert ModelConfig().backend == "auto" and ModelConfig().openvino.device == "CPU"
    assert OpenVinoConfig(device="AUTO:GPU,CPU").device == "AUTO:GPU,CPU"
    for bad in ({"device": "G P U"}, {"precision": "fp16"}, {"threads": 2}):
        with pytest.raises(ValidationError):
            OpenVinoConfig(**bad)


@pytest.mark.parametrize("doc, message", [
    ({"model": {"backend": "tflite"}}, "field 'model.backend'"),
    ({"model": {"openvino": {"device": "gpu 0"}}}, "field 'model.openvino.device': expected an OpenVINO device"),
    ({"model": {"openvino": {"precision": "fp16"}}}, "field 'model.openvino.precision'"),
])
def test_bad_openvino_configuration_is_one_line(tmp_path: Path, doc: Dict[str, Any], message: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in _one_line(info.value)


@pytest.mark.parametrize("command, extra", [
    ("run", []), ("bench", []), ("serve", []),
    ("eval", ["--images", "i", "--annotations", "a.json", "--out", "r.json"]),
])
def test_backend_flags_on_every_pipeline_command(command: str, extra: List[str]) -> None:
    args = build_parser().parse_args([command, "--backend", "openvino", "--ov-device", "GPU.1",
                                      "--ov-precision", "f32", *extra])
    model = _overrides(args)["model"]
    assert model["backend"] == "openvino"
    assert model["openvino"] == {"device": "GPU.1", "precision": "f32"}


def test_load_options_carry_the_backend_and_the_resolved_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    config = load_config(None, {"model": {"backend": "openvino", "openvino": {"precision": "f32"}},
                                "pipeline": {"inference_workers": 2}})
    options = load_options(config)
    assert options == LoadOptions(workers=2, backend="openvino", openvino=OpenVinoOptions(
        "CPU", "f32", str(tmp_path / "edgeseg" / "openvino")))
    off = load_options(load_config(None, {"model": {"openvino": {"cache_dir": ""}}}))
    assert off.openvino.cache_dir is None


def test_run_through_openvino_end_to_end(
    ov: Any, capabilities: List[str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    images = demo_images(tmp_path / "images", 4)
    counts = {}
    for backend in ("onnxruntime", "openvino"):
        out = tmp_path / f"{backend}.jsonl"
        code = main(["run", "--backend", backend, "--model", str(DEMO_ONNX), "--source", str(images),
                     "--threads", "2", "--sink", f"jsonl:{out}", "--log-level", "info"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        assert len(lines) == 4
        counts[backend] = [len(line["instances"]) for line in lines]
        if backend == "openvino":
            precision = _cpu_default(capabilities)
            assert re.search(rf"on OpenVINO \d+\.\d+\.\d+ CPU {precision};", captured.err), captured.err
            assert any((tmp_path / "cache" / "edgeseg" / "openvino").iterdir())  # the default cache
    assert counts["openvino"] == counts["onnxruntime"] and sum(counts["openvino"]) > 0
