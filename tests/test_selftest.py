"""Engine self-test: the comparison, the reference in the bundle, refusal and fall-back on load and
install, the counts on /metrics. Runtime only (no export stage), so it also runs on Python 3.8.

Most tests run on the demo bundle (engines/demo), whose three ONNX Runtime engines carry a
reference; a broken engine is the demo's Q/DQ file with one activation scale a tenth of the
calibrated one (the kind of calibration fault the self-test exists for: it finds about a third
of the reference instances), and a "driver bug" is a backend whose boxes come back shifted.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest

import edgeseg.model
from edgeseg.backends.base import Backend
from edgeseg.bundle.device import DeviceInfo
from edgeseg.bundle.manifest import EngineRecord, Manifest, load_manifest, parse_manifest
from edgeseg.bundle.select import candidate_engines
from edgeseg.bundle.selftest import (
    LEDGER,
    TOLERANCES,
    Figures,
    InstanceRecord,
    RleRecord,
    SelfTestResult,
    compare,
    describe_reference,
    form_of,
    match,
    selftest_engine,
    shortfalls,
)
from edgeseg.bundle.verify import sha256_file
from edgeseg.errors import BundleError, ModelError
from edgeseg.flash.store import EngineStore
from edgeseg.model import Model, load_model
from edgeseg.monitor.metrics import render_metrics
from edgeseg.sinks.mask_codec import rle_from_crop

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "engines" / "demo"
FP32, QDQ, QOP = "demo-320-fp32.onnx", "demo-320-int8-qdq.onnx", "demo-320-int8-qoperator.onnx"
CPU = DeviceInfo(onnxruntime="1.31.1")


@pytest.fixture(autouse=True)
def fresh_ledger() -> Any:
    """Each test starts with no cached verdicts and no counts."""
    LEDGER.clear()
    yield
    LEDGER.clear()


# -- the comparison, as a table ------------------------------------------------------------------

SIZE = (100, 100)


def inst(cls: int, score: float, box: tuple[float, float, float, float]) -> InstanceRecord:
    """An instance whose mask fills its box."""
    x0, y0, x1, y1 = (int(v) for v in box)
    rle = rle_from_crop(np.ones((y1 - y0, x1 - x0), np.bool_), (x0, y0, x1, y1), SIZE)
    return InstanceRecord(class_id=cls, score=score, box=box, mask=RleRecord(size=SIZE, counts=rle["counts"]))


def scored(i: InstanceRecord, score: float) -> InstanceRecord:
    return i.model_copy(update={"score": score})


A = inst(0, 0.9, (10, 10, 50, 50))
B = inst(1, 0.8, (60, 60, 90, 90))


@pytest.mark.parametrize(
    "reference, output, expected",
    [
        ([A, B], [A, B], dict(reference_instances=2, matched=2, output_instances=2, extra=0, box_iou=1.0,
                              mask_iou=1.0, score_diff=0.0)),
        ([A, B], [A], dict(reference_instances=2, matched=1, extra=0, pairs=1)),                  # one missed
        ([A], [inst(1, 0.9, (10, 10, 50, 50))], dict(matched=0, output_instances=1, extra=1)),    # class flipped
        ([A], [inst(0, 0.9, (40, 40, 80, 80))], dict(matched=0, extra=1)),                       # box moved: IoU 0.05
        ([A], [inst(0, 0.9, (10, 10, 50, 60))], dict(matched=1, box_iou=0.8, mask_iou=0.8)),     # grown by 1/4
        ([A], [scored(A, 0.7)], dict(matched=1, score_diff=0.2, score_diff_max=0.2)),
        ([A], [scored(A, 0.3)], dict(matched=1, output_instances=0, extra=0)),           # drifted under the floor
        ([A, scored(B, 0.3)], [A], dict(reference_instances=1, matched=1)),              # weak reference: no miss
        ([A], [A, scored(B, 0.3)], dict(output_instances=1, extra=0)),                   # weak extra: not counted
        ([A], [A, B], dict(output_instances=2, extra=1)),                                       # strong extra
        ([], [], dict(reference_instances=0, output_instances=0, box_iou=1.0, pairs=0)),
    ],
)
def test_compare(reference: list[InstanceRecord], output: list[InstanceRecord], expected: dict[str, float]) -> None:
    figures = compare({"im": reference}, {"im": output})
    for key, value in expected.items():
        assert getattr(figures, key) == pytest.approx(value, abs=1e-6), key


def test_match_is_greedy_by_reference_score() -> None:
    """Two overlapping references of one class, one output: the higher-scoring reference gets it."""
    low, high = inst(0, 0.5, (10, 10, 50, 50)), inst(0, 0.9, (12, 12, 52, 52))
    assert match([low, high], [inst(0, 0.8, (11, 11, 51, 51))]) == [(1, 0)]


@pytest.mark.parametrize(
    "precision, quantization, form",
    [("fp32", None, "fp32"), ("fp16", None, "fp16"), ("int8", "qdq-symmetric", "int8-qdq"),
     ("int8", "qoperator", "int8-qoperator"), ("int8", None, "int8-qoperator")],
)
def test_form_of(precision: str, quantization: Optional[str], form: str) -> None:
    assert form_of(precision, quantization) == form


def test_tolerances_are_ordered_by_precision() -> None:
    """fp32 is held tightest, int8 loosest; every bound is a proper fraction."""
    fp32, fp16, int8 = TOLERANCES["fp32"], TOLERANCES["fp16"], TOLERANCES["int8-qdq"]
    for name in ("min_recall", "min_precision", "min_box_iou", "min_mask_iou"):
        assert 0 < getattr(int8, name) <= getattr(fp16, name) <= getattr(fp32, name) < 1, name
    assert 0 < fp32.max_score_diff <= fp16.max_score_diff <= int8.max_score_diff < 1


def test_failure_is_one_line_with_its_figures() -> None:
    figures = Figures(reference_instances=23, matched=14, output_instances=20, extra=1, box_iou=0.93, mask_iou=0.71,
                      score_diff=0.05, score_diff_max=0.3, pairs=14)
    result = SelfTestResult("demo-320-int8.engine", 320, "int8-qdq", figures,
                            shortfalls(figures, TOLERANCES["int8-qdq"]))
    assert not result.passed
    assert result.one_line() == ("self-test failed: demo-320-int8.engine matched 61% of 23 reference instances "
                                 "(need 80%), mask IoU 0.71 (need 0.85) (int8-qdq tolerances)")
    ok = replace(result, failures=())
    assert ok.passed and ok.one_line().startswith("self-test passed: demo-320-int8.engine matched 61% of 23")
    crashed = SelfTestResult("x.engine", 320, "fp16", None, error="RuntimeError: CUDA error 700")
    assert crashed.one_line() == ("self-test failed: x.engine could not run the self-test images "
                                  "(RuntimeError: CUDA error 700)")


# -- the manifest record -------------------------------------------------------------------------


def test_selftest_files_must_be_hash_verified() -> None:
    doc = json.loads((DEMO / "manifest.json").read_text())
    del doc["extra_files"]["selftest/reference.json"]
    with pytest.raises(BundleError, match=r"selftest file selftest/reference.json is not in extra_files"):
        parse_manifest(json.dumps(doc), "manifest.json")


def test_manifest_round_trips_and_omits_an_absent_reference() -> None:
    text = (DEMO / "manifest.json").read_text()
    manifest = parse_manifest(text, "manifest.json")
    assert manifest.selftest is not None and manifest.to_json() == text
    assert describe_reference(manifest) == "reference outputs of 4 images at 320 (selftest/reference.json)"
    old = manifest.model_copy(update={"selftest": None})
    assert "selftest" not in json.loads(old.to_json())  # older runtimes (extra keys forbidden) still read it
    assert "selftest" not in old.model_dump(mode="json")
    assert describe_reference(old).startswith("no self-test reference (exported before self-tests)")


# -- engines/demo: every engine passes; broken ones are refused and the next one serves ----------------


@pytest.mark.parametrize("file", [FP32, QDQ, QOP])
def test_every_demo_engine_passes(file: str) -> None:
    manifest = load_manifest(DEMO)
    engine = next(e for e in manifest.engines if e.file == file)
    result = selftest_engine(DEMO, manifest, engine, threads=1)
    assert result is not None and result.passed, result.one_line() if result else None
    assert result.figures is not None and result.figures.reference_instances >= 20
    assert result.one_line().startswith(f"self-test passed: {file} matched 100% of")


def copy_demo(tmp_path: Path) -> Path:
    out = tmp_path / "demo"
    shutil.copytree(DEMO, out)
    return out


def write_manifest(bundle: Path, manifest: Manifest) -> None:
    (bundle / "manifest.json").write_text(manifest.to_json())


def replace_engine(bundle: Path, file: str, data: bytes) -> None:
    """Put ``data`` in place of ``file`` and record its hash: a bundle whose files are intact but
    whose engine is wrong (as a bad build would be)."""
    (bundle / file).write_bytes(data)
    manifest = load_manifest(bundle)
    engines = [e.model_copy(update={"sha256": sha256_file(bundle / file), "bytes": len(data)}) if e.file == file
               else e for e in manifest.engines]
    write_manifest(bundle, manifest.model_copy(update={"engines": engines}))


def broken_qdq() -> bytes:
    """The demo's Q/DQ file with the activation scale of its middle quantised input x0.1."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    proto = onnx.load(str(DEMO / QDQ))
    inits = {t.name: t for t in proto.graph.initializer}
    quants = [n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    tensor = inits[quants[len(quants) // 2].input[1]]
    tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * np.float32(0.1), tensor.name))
    return bytes(proto.SerializeToString())


class ShiftedBoxes(Backend):
    """A backend whose box centres come back 40 px off: what a driver or kernel bug looks like."""

    def __init__(self, inner: Backend, pred_index: int):
        self.inner, self.pred_index, self.info = inner, pred_index, inner.info

    def infer(self, inputs: Any) -> Any:
        outputs = [np.array(o) for o in self.inner.infer(inputs)]
        outputs[self.pred_index][:, :2, :] += 40.0
        return outputs

    def close(self) -> None:
        self.inner.close()


def buggy_driver(monkeypatch: pytest.MonkeyPatch, files: tuple[str, ...]) -> None:
    """Every engine in ``files`` loads with ``ShiftedBoxes`` around its backend."""
    real = edgeseg.model.open_engine

    def open_engine(path: Path, manifest: Manifest, engine: EngineRecord, *args: Any, **kw: Any) -> Model:
        model = real(path, manifest, engine, *args, **kw)
        if engine.file in files:
            return Model(model.spec, ShiftedBoxes(model.backend, model.spec.pred_index), model.engine, model.bundle)
        return model

    monkeypatch.setattr(edgeseg.model, "open_engine", open_engine)


def test_candidates_fall_back_within_the_resolution() -> None:
    manifest = load_manifest(DEMO)
    assert [e.file for e in candidate_engines(manifest, CPU)] == [QOP, FP32, QDQ]  # fastest first
    assert [e.file for e in candidate_engines(manifest, CPU, 320, "int8")] == [QOP, QDQ, FP32]
    assert [e.file for e in candidate_engines(manifest, CPU, 320, "fp32")] == [FP32, QOP, QDQ]


def test_load_runs_the_selftest_once_per_engine() -> None:
    model = load_model(DEMO, threads=1)
    model.close()
    model = load_model(DEMO, threads=1)  # the adaptive ladder reloads: the verdict is kept
    try:
        assert model.engine is not None and model.engine.file == QOP
        assert LEDGER.counts().runs == {(QOP, "passed"): 1}
        page = render_metrics(model=model)
        assert f'edgeseg_selftest_runs_total{{engine="{QOP}",result="passed"}} 1' in page
    finally:
        model.close()


def test_a_broken_engine_is_refused_and_the_next_serves(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bundle = copy_demo(tmp_path)
    replace_engine(bundle, QOP, broken_qdq())
    with caplog.at_level(logging.WARNING, logger="edgeseg"):
        model = load_model(bundle, threads=1)
    try:
        assert model.engine is not None and model.engine.file == FP32
        failed = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(failed) == 1 and f"self-test failed: {QOP} matched " in failed[0] and "\n" not in failed[0]
        assert any(f"{FP32} serves instead of {QOP}" in r.getMessage() for r in caplog.records)
        page = render_metrics(model=model)
        assert f'edgeseg_selftest_failures_total{{engine="{QOP}"}} 1' in page
        assert f'edgeseg_selftest_fallbacks_total{{refused="{QOP}",serving="{FP32}"}} 1' in page
    finally:
        model.close()
    model = load_model(bundle, threads=1, precision="int8")  # the other int8 engine; QOP not tried again
    try:
        assert model.engine is not None and model.engine.file == QDQ
        assert LEDGER.counts().runs == {(QOP, "failed"): 1, (FP32, "passed"): 1, (QDQ, "passed"): 1}
    finally:
        model.close()


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        # a plan TensorRT will not deserialise, as a TensorRT or driver update leaves it
        ("unloadable", "cannot load"),
        # a file changed on disk after install (a dying SD card)
        ("modified", "does not match the manifest"),
    ],
)
def test_an_engine_that_cannot_load_is_refused_and_the_next_serves(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str, said: str
) -> None:
    bundle = copy_demo(tmp_path)
    if damage == "unloadable":
        replace_engine(bundle, QOP, b"not a network")
    else:
        (bundle / QOP).write_bytes(b"x" + (bundle / QOP).read_bytes()[1:])
    with caplog.at_level(logging.WARNING, logger="edgeseg"):
        model = load_model(bundle, threads=1)
    try:
        assert model.engine is not None and model.engine.file == FP32
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(QOP in w and said in w and "\n" not in w for w in warned), warned
        assert LEDGER.counts().fallbacks == {(QOP, FP32): 1}
    finally:
        model.close()


def test_every_engine_failing_refuses_the_bundle_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    buggy_driver(monkeypatch, (FP32, QDQ, QOP))
    with pytest.raises(BundleError) as err:
        load_model(DEMO, threads=1)
    text = str(err.value)
    assert text.startswith("bundle demo: every engine for 320 that runs here was refused: ")
    assert "\n" not in text and all(f"self-test failed: {f} matched 0% of" in text for f in (FP32, QDQ, QOP))


def test_a_bundle_without_reference_loads_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bundle = copy_demo(tmp_path)
    manifest = load_manifest(bundle)
    extra = {k: v for k, v in manifest.extra_files.items() if not k.startswith("selftest/")}
    write_manifest(bundle, manifest.model_copy(update={"selftest": None, "extra_files": extra}))
    with caplog.at_level(logging.WARNING, logger="edgeseg"):
        load_model(bundle, threads=1).close()
        load_model(bundle, threads=1).close()
    warnings = [r.getMessage() for r in caplog.records if "no self-test reference" in r.getMessage()]
    assert len(warnings) == 1 and "serve untested" in warnings[0]
    assert LEDGER.counts().skipped == {"demo": 2} and not LEDGER.counts().runs
    assert selftest_engine(bundle, load_manifest(bundle), manifest.engines[0]) is None


def test_a_modified_reference_refuses_the_load(tmp_path: Path) -> None:
    bundle = copy_demo(tmp_path)
    path = bundle / "selftest" / "reference.json"
    path.write_text(path.read_text().replace('"score": 0.9', '"score": 0.1', 1))
    with pytest.raises(BundleError, match=r"selftest/reference.json: sha256 .* \(modified\); refusing its self-test"):
        load_model(bundle, threads=1)


def test_selftest_engine_reports_an_engine_that_cannot_load() -> None:
    manifest = load_manifest(DEMO)

    def loader(d: Path, m: Manifest, e: EngineRecord) -> Model:
        raise ModelError("cannot load model x.engine: deserialisation failed")

    result = selftest_engine(DEMO, manifest, manifest.engines[0], loader=loader)
    assert result is not None and not result.passed
    assert result.one_line() == (f"self-test failed: {FP32} could not run the self-test images "
                                 "(cannot load: cannot load model x.engine: deserialisation failed)")


# -- install --------------------------------------------------------------------------------------


def store(tmp_path: Path) -> EngineStore:
    return EngineStore(tmp_path / "root", probe=lambda: CPU)


def test_install_self_tests_the_engines(tmp_path: Path) -> None:
    s = store(tmp_path)
    result = s.install(DEMO, activate=True)
    assert not [n for n in result.notes if "self-test" in n]
    assert (result.path / "selftest" / "reference.json").is_file()
    assert s.inspect_installed(result.bundle_id).ok  # the self-test files are part of the verified bundle
    model = load_model(s.root / "active", threads=1)
    model.close()
    # install's own check keeps no verdict; the activation's test-load (of the staged copy) and the
    # daemon's load (of `active`) each test once: the verdict is per bundle path
    assert LEDGER.counts().runs[(QOP, "passed")] == 2


def test_install_keeps_a_bundle_with_one_failing_engine_and_says_so(tmp_path: Path) -> None:
    bundle = copy_demo(tmp_path)
    replace_engine(bundle, QOP, broken_qdq())
    result = store(tmp_path).install(bundle)
    notes = [n for n in result.notes if "self-test" in n]
    assert len(notes) == 1 and notes[0].startswith(f"self-test failed: {QOP} matched ")
    assert notes[0].endswith("; the runtime falls back to an engine that passes")


def test_install_refuses_a_bundle_whose_engines_all_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    buggy_driver(monkeypatch, (FP32, QDQ, QOP))
    s = store(tmp_path)
    with pytest.raises(BundleError) as err:
        s.install(DEMO, activate=True)
    assert "refused: every engine that runs here failed its self-test: self-test failed: " in str(err.value)
    assert "\n" not in str(err.value)
    assert s.ids() == [] and s.active_id() is None and not list(s.root.glob(".staging-*"))


def test_install_of_a_bundle_without_reference_warns_untested(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    bundle = copy_demo(tmp_path)
    manifest = load_manifest(bundle)
    extra = {k: v for k, v in manifest.extra_files.items() if not k.startswith("selftest/")}
    write_manifest(bundle, manifest.model_copy(update={"selftest": None, "extra_files": extra}))
    shutil.rmtree(bundle / "selftest")
    with caplog.at_level(logging.WARNING, logger="edgeseg"):
        result = store(tmp_path).install(bundle)
    assert result.notes == []
    assert any(r.getMessage() == "bundle demo: no self-test reference (exported before self-tests): engines "
               "installed untested" for r in caplog.records)
