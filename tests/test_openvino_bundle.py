"""OpenVINO IR engines in engine bundles: exported with --openvino, recorded with both files hashed,
chosen by model.backend (and by auto on an x86 CPU), refused when a file does not match, and the
ladder's latency seeds taken from the records of the runtime serving."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("openvino", exc_type=ImportError)
pytest.importorskip("nncf", exc_type=ImportError)

from conftest import DEMO_BUNDLE, demo_images  # noqa: E402

from edgeseg.adaptive.ladder import ModelLadder  # noqa: E402
from edgeseg.bundle.device import probe_device  # noqa: E402
from edgeseg.bundle.manifest import Manifest, ir_weights, load_manifest, parse_manifest  # noqa: E402
from edgeseg.bundle.selftest import LEDGER, selftest_engine  # noqa: E402
from edgeseg.bundle.verify import integrity_problems  # noqa: E402
from edgeseg.cli import build_parser  # noqa: E402
from edgeseg.errors import BundleError, ExportError  # noqa: E402
from edgeseg.model import LoadOptions, load_model  # noqa: E402
from export import openvino_quant  # noqa: E402
from export.pipeline import ExportOptions, export_bundle  # noqa: E402
from export.recipe import build_options  # noqa: E402

DEMO_ONNX = DEMO_BUNDLE / "demo-320-fp32.onnx"
IR_FP32 = "ov-320-fp32.xml"
IR_INT8 = "ov-320-int8-nncf.xml"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model exported with --openvino, fp32 and int8 (ONNX Runtime's forms and the IRs)."""
    root = tmp_path_factory.mktemp("ovbundle")
    images = demo_images(root / "cal", 8)
    out = root / "engines" / "ov"
    result = export_bundle(ExportOptions(model=DEMO_ONNX, out=out, precisions=("fp32", "int8"), calibration=images,
                                         latency_runs=2, progress=False, openvino=True))
    assert not [n for n in result.notes if "not shipped" in n], result.notes
    return out


@pytest.fixture(autouse=True)
def _fresh_ledger() -> Iterator[None]:
    LEDGER.clear()
    yield
    LEDGER.clear()


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "ov"
    shutil.copytree(bundle, dst)
    return dst


def _device(monkeypatch: pytest.MonkeyPatch, **changes: object) -> None:
    here = replace(probe_device(), **changes)  # type: ignore[arg-type]
    monkeypatch.setattr("edgeseg.model.probe_device", lambda: here)
    monkeypatch.setattr("edgeseg.adaptive.ladder.probe_device", lambda: here)


def test_export_records_both_ir_forms_with_their_weights_hashed(bundle: Path) -> None:
    manifest = load_manifest(bundle)
    ov = {e.file: e for e in manifest.engines if e.runtime == "openvino"}
    assert set(ov) == {IR_FP32, IR_INT8}
    assert ov[IR_FP32].precision == "fp32" and ov[IR_FP32].quantization is None
    assert ov[IR_INT8].precision == "int8" and ov[IR_INT8].quantization == "nncf-int8"
    for e in ov.values():
        assert (bundle / e.file).is_file() and (bundle / ir_weights(e.file)).is_file()
        assert ir_weights(e.file) in manifest.extra_files
        assert e.builder.version[:4].isdigit() and e.resolution == (320, 320)
        assert e.latency is not None and e.latency.median_ms > 0 and e.latency.device.startswith("OpenVINO ")
    # ONNX Runtime's forms are still there, and every file matches its hash
    assert {e.file for e in manifest.engines if e.runtime == "onnxruntime"} == {
        "ov-320-fp32.onnx", "ov-320-int8-qdq.onnx", "ov-320-int8-qoperator.onnx"}
    assert integrity_problems(bundle, manifest) == []
    assert manifest.selftest is not None


def test_manifest_refuses_an_ir_whose_weights_are_unhashed(bundle: Path) -> None:
    doc = json.loads((bundle / "manifest.json").read_text())
    del doc["extra_files"][ir_weights(IR_INT8)]
    with pytest.raises(BundleError, match=r"ov-320-int8-nncf.xml: its weights ov-320-int8-nncf.bin are not in "):
        parse_manifest(json.dumps(doc), "manifest.json")
    doc = json.loads((bundle / "manifest.json").read_text())
    doc["engines"][0]["builder"]["runtime"] = "openvino"  # an .onnx file recorded as an OpenVINO engine
    with pytest.raises(BundleError, match=r"an openvino engine is an IR .xml file"):
        parse_manifest(json.dumps(doc), "manifest.json")


def test_backend_openvino_serves_the_ir_records(bundle: Path) -> None:
    model = load_model(bundle, backend="openvino", precision="int8")
    try:
        assert model.engine is not None and model.engine.file == IR_INT8
        assert model.backend.info.provider.startswith("OpenVINO ")
    finally:
        model.close()
    model = load_model(bundle, backend="openvino")  # auto: the fastest measured of the IR records
    try:
        manifest = load_manifest(bundle)
        fastest = min((e for e in manifest.engines if e.runtime == "openvino"),
                      key=lambda e: e.latency.median_ms if e.latency else 0.0)
        assert model.engine is not None and model.engine.file == fastest.file
    finally:
        model.close()
    # self-tested under the tagged name, judged against the bundle's reference
    runs = LEDGER.counts().runs
    assert runs and all(verdict == "passed" and "@openvino-CPU-" in file for (file, verdict) in runs)


def test_auto_prefers_openvino_on_x86_and_falls_back_without_it(
    bundle: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _device(monkeypatch, x86=True)
    model = load_model(bundle)
    try:
        assert model.engine is not None and model.engine.runtime == "openvino"
    finally:
        model.close()
    _device(monkeypatch, x86=True, openvino=None)
    with caplog.at_level(logging.WARNING, logger="edgeseg.model"):
        model = load_model(bundle)
    try:
        assert model.engine is not None and model.engine.runtime == "onnxruntime"
    finally:
        model.close()
    lines = [r.getMessage() for r in caplog.records if "OpenVINO" in r.getMessage()]
    assert lines == ["bundle ov: its OpenVINO engines are not used: OpenVINO is not installed "
                     "(pip install 'edgeseg[openvino]'); serving its other engines"]


def _damage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_an_ir_that_does_not_match_its_record_is_refused(
    bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    copy = _copy(bundle, tmp_path)
    _damage(copy / ir_weights(IR_INT8))
    # refused in one line naming the .bin; the next OpenVINO engine serves
    with caplog.at_level(logging.WARNING, logger="edgeseg.model"):
        model = load_model(copy, backend="openvino", precision="int8")
    try:
        assert model.engine is not None and model.engine.file == IR_FP32
    finally:
        model.close()
    refusals = [r.getMessage() for r in caplog.records if "refusing to load it" in r.getMessage()]
    assert len(refusals) == 1 and "ov-320-int8-nncf.bin: sha256 " in refusals[0] and "does not match" in refusals[0]
    # with every IR refused, model.backend openvino refuses the load, naming each, in one line
    _damage(copy / IR_FP32)
    with pytest.raises(BundleError, match=r"ov-320-fp32.xml: sha256 .* does not match") as info:
        load_model(copy, backend="openvino")
    assert "\n" not in str(info.value) and "ov-320-int8-nncf.bin" in str(info.value)
    # auto passes over them to ONNX Runtime's engines
    model = load_model(copy)
    try:
        assert model.engine is not None and model.engine.runtime == "onnxruntime"
    finally:
        model.close()


def test_ladder_seeds_come_from_the_serving_runtime(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = load_manifest(bundle)
    options = LoadOptions(backend="openvino", precision="fp32")
    base = options.load(bundle)
    try:
        ladder = ModelLadder.open(bundle, base, (), options)
        record = next(e for e in manifest.engines if e.file == IR_FP32)
        assert record.latency is not None
        assert ladder.seed_ms() == {320: record.latency.median_ms}
    finally:
        base.close()
    options = LoadOptions(backend="onnxruntime", precision="fp32")
    base = options.load(bundle)
    try:
        record = next(e for e in manifest.engines if e.file == "ov-320-fp32.onnx")
        assert record.latency is not None
        assert ModelLadder.open(bundle, base, (), options).seed_ms() == {320: record.latency.median_ms}
    finally:
        base.close()
    # a bundle without IR engines run through OpenVINO: no record measured OpenVINO, no seeds
    options = LoadOptions(backend="openvino")
    base = options.load(DEMO_BUNDLE)
    try:
        assert ModelLadder.open(DEMO_BUNDLE, base, (), options).seed_ms() == {}
    finally:
        base.close()


def test_a_refused_int8_ir_is_not_shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(src: Path, out: Path, *_a: object, **_k: object) -> openvino_quant.QuantResult:
        raise ExportError(f"OpenVINO INT8 of {Path(src).name} refused: {Path(out).name} at 320 (int8): "
                          "recall 0.10 < 0.80")

    monkeypatch.setattr(openvino_quant, "quantize_openvino", refuse)
    out = tmp_path / "engines" / "ov"
    result = export_bundle(ExportOptions(model=DEMO_ONNX, out=out, precisions=("fp32", "int8"),
                                         calibration=demo_images(tmp_path / "cal", 4), latency_runs=1,
                                         progress=False, openvino=True))
    assert any("refused" in n and "recall 0.10" in n and n.endswith("not shipped") for n in result.notes)
    manifest: Manifest = result.manifest
    assert [e.file for e in manifest.engines if e.runtime == "openvino"] == [IR_FP32]
    assert not (out / IR_INT8).exists() and not (out / ir_weights(IR_INT8)).exists()
    assert integrity_problems(out, manifest) == []


def test_selftest_engine_judges_an_ir_at_the_precision_it_ran(bundle: Path) -> None:
    manifest = load_manifest(bundle)
    record = next(e for e in manifest.engines if e.file == IR_FP32)
    result = selftest_engine(bundle, manifest, record)
    assert result is not None and result.passed, result
    assert result.engine.startswith(f"{IR_FP32}@openvino-CPU-")
    assert result.form == ("fp32" if result.engine.endswith("-f32") else "fp16")


def test_openvino_flag_and_recipe_key(tmp_path: Path) -> None:
    opts = build_options(None, {"model": str(DEMO_ONNX), "out": str(tmp_path / "b"), "openvino": True})
    assert opts.openvino is True
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {DEMO_ONNX}\nout: {tmp_path / 'b'}\nopenvino: true\n")
    assert build_options(str(recipe), {"openvino": None}).openvino is True
    assert build_options(None, {"model": str(DEMO_ONNX), "out": str(tmp_path / "b")}).openvino is False
    args = build_parser().parse_args(["export", "--model", str(DEMO_ONNX), "--out", "x", "--openvino"])
    assert args.openvino is True
