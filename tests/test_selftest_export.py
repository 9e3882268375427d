"""Engine self-test, export side: the export writes the reference and judges every form it made.

The demo's fp32 ONNX (a static 320 model, 0.8 M parameters) is the source, so a whole export
with both int8 forms takes seconds; calibration images are synthetic shapes from the demo's own
generator. The real yolov8n-seg runs where ../shared/realdata is present.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
from onnx import numpy_helper

import export.quantize
from edgeseg.bundle.manifest import load_manifest
from edgeseg.bundle.selftest import LEDGER, parse_reference
from edgeseg.bundle.verify import integrity_problems, sha256_file
from edgeseg.model import load_model
from export.data.synthetic import write_split
from export.pipeline import ExportOptions, export_bundle
from export.selftest_reference import add_selftest_reference

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "engines" / "demo"
SOURCE = DEMO / "demo-320-fp32.onnx"


@pytest.fixture(autouse=True)
def fresh_ledger() -> object:
    LEDGER.clear()
    yield
    LEDGER.clear()


@pytest.fixture(scope="module")
def calibration(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    return write_split(out, "train", 12, size=320, seed=3).images_dir


def options(tmp_path: Path, calibration: Path | None, precisions: tuple[str, ...] = ("fp32", "int8")) -> ExportOptions:
    return ExportOptions(model=SOURCE, out=tmp_path / "engines" / "shapes", precisions=precisions,  # type: ignore[arg-type]
                         calibration=calibration, latency_runs=1, threads=1, progress=False)


def test_export_writes_a_reference_and_every_form_passes(tmp_path: Path, calibration: Path) -> None:
    result = export_bundle(options(tmp_path, calibration))
    out, manifest = result.bundle, load_manifest(result.bundle)
    record = manifest.selftest
    assert record is not None and record.resolutions == [320] and len(record.images) == 4
    assert integrity_problems(out, manifest) == []
    assert set(manifest.extra_files) >= {record.reference, *record.images}
    reference = parse_reference((out / record.reference).read_text(), record.reference)
    assert reference.resolutions[320].made_by == "shapes-320-fp32.onnx"
    assert sum(len(v) for v in reference.resolutions[320].images.values()) >= 8
    files = [e.file for e in manifest.engines]
    assert sorted(reference.export_checks) == sorted(files) and len(files) == 3
    assert all(line.startswith(f"self-test passed: {f} ") for f, line in reference.export_checks.items())
    for precision in ("fp32", "int8"):
        model = load_model(out, threads=1, precision=precision)  # type: ignore[arg-type]
        model.close()
    assert all(result == "passed" for (_, result) in LEDGER.counts().runs)


def break_scale(path: Path) -> None:
    """One activation scale of a Q/DQ model x0.1, in place (a calibration gone wrong)."""
    proto = onnx.load(str(path))
    inits = {t.name: t for t in proto.graph.initializer}
    quants = [n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    tensor = inits[quants[len(quants) // 2].input[1]]
    tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * 0.1, tensor.name))
    onnx.save(proto, str(path))


def test_a_failing_form_is_not_shipped(tmp_path: Path, calibration: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = export.quantize.quantize_for_tensorrt

    def bad_cpu_form(fp32: Path, out: Path, images: object, **kw: object) -> Path:
        real(fp32, out, images, progress=False)  # type: ignore[arg-type]
        break_scale(out)
        return out

    monkeypatch.setattr(export.quantize, "quantize_for_cpu", bad_cpu_form)
    result = export_bundle(options(tmp_path, calibration))
    files = [e.file for e in result.manifest.engines]
    assert files == ["shapes-320-fp32.onnx", "shapes-320-int8-qdq.onnx"]
    assert not (result.bundle / "shapes-320-int8-qoperator.onnx").exists()
    notes = [n for n in result.notes if "self-test" in n]
    assert len(notes) == 1 and notes[0].startswith("self-test failed: shapes-320-int8-qoperator.onnx matched ")
    assert notes[0].endswith("(int8-qoperator tolerances); not shipped") and "\n" not in notes[0]
    assert "not shipped" in result.report.read_text()


def test_without_images_the_bundle_has_no_reference(tmp_path: Path) -> None:
    result = export_bundle(options(tmp_path, None, ("fp32",)))
    assert result.manifest.selftest is None and not (result.bundle / "selftest").exists()
    assert any("no self-test reference" in n for n in result.notes)
    assert "selftest" not in json.loads((result.bundle / "manifest.json").read_text())


def test_an_old_bundle_gains_a_reference_and_keeps_every_file(tmp_path: Path, calibration: Path) -> None:
    bundle = tmp_path / "demo"
    shutil.copytree(DEMO, bundle)
    shutil.rmtree(bundle / "selftest")
    old = load_manifest(bundle)
    extra = {k: v for k, v in old.extra_files.items() if not k.startswith("selftest/")}
    old = old.model_copy(update={"selftest": None, "extra_files": extra})
    (bundle / "manifest.json").write_text(old.to_json())
    before = {p.name: sha256_file(p) for p in bundle.iterdir() if p.is_file() and p.name != "manifest.json"}
    manifest, refs = add_selftest_reference(bundle, sorted(calibration.glob("*.jpg")), threads=1)
    assert manifest.engines == old.engines and manifest.selftest is not None
    assert {p.name: sha256_file(p) for p in bundle.iterdir() if p.is_file() and p.name != "manifest.json"} == before
    assert not refs.failed and integrity_problems(bundle, load_manifest(bundle)) == []


@pytest.mark.realdata
def test_realdata_export_judges_both_int8_forms_on_coco(
    tmp_path: Path, model_dynamic: Path, train_images: Path
) -> None:
    opts = ExportOptions(model=model_dynamic, out=tmp_path / "yolo", resolutions=(320,), precisions=("fp32", "int8"),
                         calibration=train_images, calibration_limit=8, latency_runs=1, threads=2, progress=False)
    result = export_bundle(opts)
    reference = parse_reference((result.bundle / "selftest" / "reference.json").read_text(), "reference.json")
    strong = sum(1 for v in reference.resolutions[320].images.values() for r in v if r.score >= 0.4)
    assert strong >= 8
    assert [e.file for e in result.manifest.engines] == ["yolo-320-fp32.onnx", "yolo-320-int8-qdq.onnx",
                                                         "yolo-320-int8-qoperator.onnx"]
    assert all(line.startswith("self-test passed: ") for line in reference.export_checks.values())
