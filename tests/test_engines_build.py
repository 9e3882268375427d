"""``edgeseg engines build`` and ``engines.build_on_start``: TensorRT plans built on the device
from a bundle's ONNX files into its device-local overlay, next to the signed manifest.

The builder runs for real against the in-process fake of tensorrt (tests/trt_fakes.py), which
"parses" engines/demo's real ONNX files (Q/DQ or not) and writes ``PLAN``; the plan self-test is
injected (the fake plan cannot run), except in the one test that checks the real self-test's
wiring with an ONNX file standing in for the plan. Runtime only: also runs on Python 3.8.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

import pytest
from trt_fakes import GPU, FakeBuilderTrt, install_builder

from edgeseg import cli
from edgeseg.backends.tensorrt import tensorrt_version
from edgeseg.backends.trt_build import build_engine
from edgeseg.backends.trt_plan import TrtVersion
from edgeseg.bundle.device import DeviceInfo
from edgeseg.bundle.local import (
    DEVICE_MANIFEST,
    DeviceManifest,
    load_merged_manifest,
    overlay_problems,
    read_device_manifest,
    read_signed,
)
from edgeseg.bundle.manifest import EngineRecord, Manifest
from edgeseg.bundle.select import select_engine
from edgeseg.bundle.selftest import Figures, SelfTestResult, engine_form
from edgeseg.config import parse_config
from edgeseg.errors import BundleError, ExportError
from edgeseg.flash import build as build_module
from edgeseg.flash import cli as engines_cli
from edgeseg.flash.build import (
    BuildReport,
    build_for_service,
    build_plans,
    onnx_sources,
    parse_precisions,
    parse_sizes,
    plan_requests,
    preflight,
    selftest_plan,
)
from edgeseg.flash.signature import generate_keypair, sign_bundle
from edgeseg.flash.store import EngineStore
from edgeseg.model import Model, load_model
from edgeseg.service.build_on_start import BuildOnStart, build_decision

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "engines" / "demo"
FP32, QDQ = "demo-320-fp32.onnx", "demo-320-int8-qdq.onnx"
FP16_PLAN, INT8_PLAN = "device/demo-320-fp16.engine", "device/demo-320-int8.engine"
ORIN = DeviceInfo(tensorrt="10.3.0", onnxruntime="1.31.1", gpu="Orin", compute_capability=(8, 7), gpu_source="pycuda")
CPU = DeviceInfo(onnxruntime="1.31.1")
FIGURES = Figures(reference_instances=25, matched=25, output_instances=25, extra=0, box_iou=0.99, mask_iou=0.98,
                  score_diff=0.01, score_diff_max=0.03, pairs=25)

SelfTest = Callable[[Path, Manifest, EngineRecord, Path], Optional[SelfTestResult]]


def passing(bundle_dir: Path, manifest: Manifest, engine: EngineRecord, staged: Path) -> SelfTestResult:
    assert staged.is_file() and staged.parent != bundle_dir / "device", "tested before it is committed"
    return SelfTestResult(engine.file, max(engine.resolution), engine_form(engine), FIGURES)


def failing_int8(bundle_dir: Path, manifest: Manifest, engine: EngineRecord, staged: Path) -> SelfTestResult:
    if engine.precision != "int8":
        return passing(bundle_dir, manifest, engine, staged)
    return SelfTestResult(engine.file, 320, "int8-qdq", FIGURES, failures=("matched 40% of 25 reference instances",))


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A copy of engines/demo (ONNX Runtime engines, Q/DQ ONNX, self-test reference)."""
    d = tmp_path / "engines" / "demo"
    shutil.copytree(DEMO, d)
    return d


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> FakeBuilderTrt:
    return install_builder(monkeypatch, "10.3.0", GPU)


def snapshot(root: Path) -> List[Tuple[str, str]]:
    """Every path under ``root`` with its content's sha256 ('dir' for folders)."""
    return [(p.relative_to(root).as_posix(), "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*"))]


def run_build(
    bundle: Path, precisions: Optional[Tuple[str, ...]] = None, device: DeviceInfo = ORIN,
    selftest: Optional[SelfTest] = passing, **kwargs: Any,
) -> Tuple[BuildReport, List[str]]:
    manifest, _ = read_signed(bundle)
    assert device.tensorrt is not None
    requests, _ = plan_requests(manifest, TrtVersion.parse(device.tensorrt), precisions)
    lines: List[str] = []
    report = build_plans(bundle, requests, device, selftest=selftest, say=lines.append,
                         heartbeat_s=kwargs.pop("heartbeat_s", 0), **kwargs)
    return report, lines


# -- which ONNX builds which plan -------------------------------------------------------------------


def _without_qdq(m: Manifest) -> Manifest:
    return m.model_copy(update={"engines": [e for e in m.engines if e.file != QDQ]})


def _qdq_in_extra_files(m: Manifest) -> Manifest:
    qdq = next(e for e in m.engines if e.file == QDQ)
    return m.model_copy(update={"engines": [e for e in m.engines if e.file != QDQ],
                                "extra_files": {**m.extra_files, QDQ: qdq.sha256}})


def test_onnx_sources_of_the_demo_bundle() -> None:
    manifest, _ = read_signed(DEMO)
    sources = {k: v.file for k, v in onnx_sources(manifest).items()}
    assert sources == {(320, "fp32"): FP32, (320, "fp16"): FP32, (320, "int8"): QDQ}  # never the QOperator file
    assert {k: v.file for k, v in onnx_sources(_qdq_in_extra_files(manifest)).items()}[(320, "int8")] == QDQ


@pytest.mark.parametrize(
    ("edit", "version", "precisions", "sizes", "expected", "noted"),
    [
        (None, "10.3.0", None, None, ["device/demo-320-fp16.engine", "device/demo-320-int8.engine"], ""),
        (None, "8.5.2.2", ("fp32",), (320,), ["device/demo-320-fp32.engine"], ""),
        (_without_qdq, "10.3.0", None, None, ["device/demo-320-fp16.engine"], "no Q/DQ ONNX for int8 at 320"),
        (_qdq_in_extra_files, "10.3.0", ("int8",), None, ["device/demo-320-int8.engine"], ""),
        (None, "11.1.0", None, None, ["device/demo-320-int8.engine"], "no FP16 builder flag"),
    ],
)
def test_plan_requests(
    edit: Optional[Callable[[Manifest], Manifest]], version: str, precisions: Optional[Tuple[str, ...]],
    sizes: Optional[Tuple[int, ...]], expected: List[str], noted: str,
) -> None:
    manifest, _ = read_signed(DEMO)
    manifest = edit(manifest) if edit else manifest
    requests, notes = plan_requests(manifest, TrtVersion.parse(version), precisions, sizes)
    assert [r.file for r in requests] == expected
    assert all(r.source.file == (QDQ if r.precision == "int8" else FP32) for r in requests)
    assert noted in " ".join(notes)


# -- refusals: one line, nothing written, whichever comes first --------------------------------------


def _l4t_unknown() -> str:
    return "L4T R37.0.0 is not in edgeseg's JetPack table (known: R35 = JetPack 5, R36 = JetPack 6)"


def _drop_qdq(bundle: Path) -> None:
    doc = json.loads((bundle / "manifest.json").read_text())
    doc["engines"] = [e for e in doc["engines"] if e["file"] != QDQ]
    (bundle / "manifest.json").write_text(json.dumps(doc))
    (bundle / QDQ).unlink()


REFUSALS = [
    # (case, device, platform problem, arguments after BUNDLE, change to the bundle, message)
    ("no TensorRT", CPU, None, [], None, "engines build: TensorRT is not installed here"),
    ("no NVIDIA GPU", DeviceInfo(tensorrt="10.3.0", onnxruntime="1.31.1"), None, [], None,
     "engines build: no CUDA GPU identified (probed with pycuda, then NVML)"),
    ("old TensorRT", DeviceInfo(tensorrt="8.4.3", gpu="Xavier", compute_capability=(7, 2)), None, [], None,
     r"engines build: TensorRT 8.4.3 is older than 8.5"),
    ("unknown JetPack", ORIN, _l4t_unknown(), [], None, "engines build: L4T R37.0.0 is not in edgeseg's JetPack"),
    ("precision without ONNX", ORIN, None, ["--precision", "int8"], _drop_qdq,
     "bundle demo: no Q/DQ ONNX for int8 at 320"),
    ("fp16 on TensorRT 11", DeviceInfo(tensorrt="11.1.0", gpu="RTX", compute_capability=(8, 9)), None,
     ["--precision", "fp16"], None, "has no FP16 builder flag"),
    ("unknown resolution", ORIN, None, ["--resolutions", "320,640"], None,
     "bundle demo: no ONNX for resolution 640; it has 320"),
    ("bad precision", ORIN, None, ["--precision", "fp16,bf16"], None, "--precision 'fp16,bf16': expected a list"),
    ("bad resolutions", ORIN, None, ["--resolutions", "big"], None, "--resolutions 'big': expected"),
    ("bad workspace", ORIN, None, ["--workspace", "0"], None, "--workspace 0: expected at least 1 MiB"),
    ("tampered ONNX", ORIN, None, [], lambda b: (b / FP32).write_bytes(b"x" * 3478009),
     "not building from it: demo-320-fp32.onnx: sha256"),
    ("not a bundle", ORIN, None, [], lambda b: (b / "manifest.json").unlink(), "not an engine bundle"),
]


@pytest.mark.parametrize(("case", "device", "platform", "args", "change", "message"), REFUSALS,
                         ids=[r[0] for r in REFUSALS])
def test_refusals_are_one_line_and_write_nothing(
    bundle: Path, fake_trt: FakeBuilderTrt, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    case: str, device: DeviceInfo, platform: Optional[str], args: List[str],
    change: Optional[Callable[[Path], Any]], message: str,
) -> None:
    monkeypatch.setattr(engines_cli, "_device_facts", lambda: (device, platform))
    if change is not None:
        change(bundle)
    before = snapshot(bundle.parent)
    code = cli.main(["engines", "build", str(bundle), *args, "--root", str(bundle.parent / "store")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert snapshot(bundle.parent) == before
    assert not [c for c in fake_trt.calls if c[0] == "create_network"], "refused before any build"


def test_an_unwritable_bundle_is_refused_before_building(
    bundle: Path, fake_trt: FakeBuilderTrt, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(build_module.os, "access", lambda path, mode: Path(path) != bundle)  # root writes anything
    before = snapshot(bundle.parent)
    with pytest.raises(BundleError, match=r"cannot write .*demo \(the plans go to device/") as err:
        run_build(bundle)
    assert "\n" not in str(err.value) and snapshot(bundle.parent) == before and fake_trt.calls == []


def test_preflight_and_parsers_directly() -> None:
    assert str(preflight(ORIN)) == "10.3.0"
    assert parse_precisions("int8, fp16") == ("fp16", "int8") and parse_sizes("640,320,640") == (320, 640)
    with pytest.raises(BundleError, match="TensorRT is not installed"):
        preflight(CPU)


@pytest.mark.skipif(tensorrt_version() is not None, reason="TensorRT is installed here")
def test_cli_on_this_machine_without_tensorrt_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["engines", "build", str(DEMO)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("edgeseg: engines build: TensorRT is not installed here")
    assert not (DEMO / "device").exists()


# -- building ----------------------------------------------------------------------------------------


def test_build_from_the_demo_bundle_into_the_device_overlay(bundle: Path, fake_trt: FakeBuilderTrt) -> None:
    report, lines = run_build(bundle)
    assert report.ok and report.built == [FP16_PLAN, INT8_PLAN] and report.skipped == []
    assert [c[1] for c in fake_trt.calls if c[0] == "flag"] == ["FP16", "INT8"]  # int8 from the Q/DQ ONNX
    overlay = read_device_manifest(bundle)
    assert overlay is not None
    raw = (bundle / "manifest.json").read_bytes()
    assert overlay.bundle == "demo" and overlay.bundle_sha256 == hashlib.sha256(raw).hexdigest()
    assert [(p.engine.file, p.built_from.file, p.engine.quantization) for p in overlay.plans] == [
        (FP16_PLAN, FP32, None), (INT8_PLAN, QDQ, "qdq-symmetric")]
    plan = overlay.plans[0].engine
    assert plan.builder.model_dump() == {"runtime": "tensorrt", "version": "10.3.0", "gpu": "Orin",
                                         "compute_capability": (8, 7)}
    assert (bundle / FP16_PLAN).read_bytes() == b"PLAN" and plan.bytes == 4
    assert (bundle / "device" / "timing.cache").read_bytes() == b"timings"
    assert sorted(p.name for p in (bundle / "device").iterdir()) == [
        "demo-320-fp16.engine", "demo-320-int8.engine", "manifest.json", "timing.cache"]
    assert overlay_problems(bundle, read_signed(bundle)[0], raw) == []
    assert sorted(p.name for p in bundle.parent.iterdir()) == ["demo"], "no staging left beside the bundle"
    assert lines[0].startswith("[1/2] demo-320-fp16.engine: building fp16 at 320 from demo-320-fp32.onnx")
    assert lines[1].startswith("[1/2] demo-320-fp16.engine: built in") and "self-test passed" in lines[1]
    assert lines[3].startswith("[2/2] demo-320-int8.engine: built in")


def test_progress_says_it_is_still_building(bundle: Path, fake_trt: FakeBuilderTrt) -> None:
    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.3)
        return build_engine(*args, **kwargs)

    _, lines = run_build(bundle, ("fp16",), builder=slow, heartbeat_s=0.05)
    assert any(line.startswith("[1/1] demo-320-fp16.engine: still building, 0 s") for line in lines), lines


def test_a_plan_already_built_for_this_device_is_skipped(bundle: Path, fake_trt: FakeBuilderTrt) -> None:
    run_build(bundle)
    first = snapshot(bundle / "device")
    report, lines = run_build(bundle)
    assert report.built == [] and report.skipped == [FP16_PLAN, INT8_PLAN]
    assert "up to date" in lines[0] and "--force rebuilds" in lines[0]
    assert snapshot(bundle / "device") == first
    report, _ = run_build(bundle, ("fp16",), force=True)
    assert report.built == [FP16_PLAN]
    assert ("timing_cache", b"timings") in fake_trt.calls, "the timing cache of the first build was reused"
    newer = DeviceInfo(tensorrt="10.3.1", onnxruntime="1.31.1", gpu="Orin", compute_capability=(8, 7))
    fake_trt.__version__ = "10.3.1"
    report, _ = run_build(bundle, ("int8",), device=newer)
    assert report.built == [INT8_PLAN], "another TensorRT version: rebuilt"
    overlay = read_device_manifest(bundle)
    assert overlay is not None and [p.engine.builder.version for p in overlay.plans] == ["10.3.0", "10.3.1"]


def test_a_plan_failing_its_selftest_is_not_recorded(bundle: Path, fake_trt: FakeBuilderTrt) -> None:
    report, lines = run_build(bundle, selftest=failing_int8)
    assert report.built == [FP16_PLAN] and not report.ok
    assert report.failed == ["self-test failed: device/demo-320-int8.engine matched 40% of 25 reference instances "
                             "(int8-qdq tolerances)"]
    assert any("not recorded: self-test failed" in line for line in lines)
    overlay = read_device_manifest(bundle)
    assert overlay is not None and [p.engine.file for p in overlay.plans] == [FP16_PLAN]
    assert not (bundle / INT8_PLAN).exists() and overlay_problems(bundle, *read_signed(bundle)) == []


def test_a_build_failure_is_one_line_and_the_next_plan_still_builds(bundle: Path, fake_trt: FakeBuilderTrt) -> None:
    def fp16_fails(onnx: Path, engine: Path, precision: str, **kwargs: Any) -> Any:
        if precision == "fp16":
            engine.write_bytes(b"half a pl")
            raise ExportError(f"{onnx}: TensorRT 10.3.0 could not build a fp16 engine\n(see its log)")
        return build_engine(onnx, engine, precision, **kwargs)  # type: ignore[arg-type]

    report, _ = run_build(bundle, builder=fp16_fails)
    assert report.built == [INT8_PLAN] and len(report.failed) == 1
    assert report.failed[0].startswith(f"{FP16_PLAN}: ") and "\n" not in report.failed[0]
    assert not (bundle / FP16_PLAN).exists()


def test_an_interrupted_build_leaves_the_previous_overlay_whole(
    bundle: Path, fake_trt: FakeBuilderTrt, monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_build(bundle, ("fp16",))
    before = snapshot(bundle.parent)

    def interrupted(onnx: Path, engine: Path, precision: str, **kwargs: Any) -> Any:
        engine.write_bytes(b"PL")  # half a plan in the staging folder
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_build(bundle, ("fp16", "int8"), force=True, builder=interrupted)
    assert snapshot(bundle.parent) == before

    real_rename = os.rename

    def rename(src: Any, dst: Any) -> None:  # killed as the staged folder moves into place
        if Path(dst) == bundle / "device" and "staging" in str(src):
            raise KeyboardInterrupt
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        run_build(bundle, ("int8",))
    monkeypatch.setattr(os, "rename", real_rename)
    assert snapshot(bundle.parent) == before, "the previous overlay is put back"

    # A build killed outright leaves a staging folder (and maybe the old overlay moved aside):
    # the runtime never looks there, and the next build cleans up (restoring the moved overlay).
    (bundle.parent / ".demo~device-staging-x").mkdir()
    (bundle.parent / ".demo~device-staging-x" / "demo-320-int8.engine").write_bytes(b"PL")
    aside = bundle.parent / ".demo~device-old-y"
    aside.mkdir()
    os.rename(bundle / "device", aside / "device")
    assert len(load_merged_manifest(bundle).engines) == 3
    report, _ = run_build(bundle)
    assert report.skipped == [FP16_PLAN] and report.built == [INT8_PLAN]
    assert sorted(p.name for p in bundle.parent.iterdir()) == ["demo"]


# -- the runtime's merged view -------------------------------------------------------------------------


def test_the_merged_manifest_adds_the_device_plans(bundle: Path, fake_trt: FakeBuilderTrt) -> None:
    run_build(bundle)
    merged = load_merged_manifest(bundle)
    signed, _ = read_signed(bundle)
    assert [e.file for e in merged.engines] == [e.file for e in signed.engines] + [FP16_PLAN, INT8_PLAN]
    assert merged.selftest == signed.selftest and merged.extra_files == signed.extra_files
    assert select_engine(merged, ORIN).file == FP16_PLAN  # a plan for this device beats ONNX Runtime
    assert select_engine(merged, CPU).runtime == "onnxruntime"
    other = DeviceInfo(tensorrt="10.3.0", onnxruntime="1.31.1", gpu="Xavier", compute_capability=(7, 2))
    assert select_engine(merged, other).runtime == "onnxruntime"


def _reflash(bundle: Path) -> None:
    doc = json.loads((bundle / "manifest.json").read_text())
    doc["created"] = "2027-01-01T00:00:00+00:00"
    (bundle / "manifest.json").write_text(json.dumps(doc))


def _garble(bundle: Path) -> None:
    path = bundle / DEVICE_MANIFEST
    path.chmod(0o644)
    path.write_text("{not json")


def _foreign_source(bundle: Path) -> None:
    path = bundle / DEVICE_MANIFEST
    doc = json.loads(path.read_text())
    doc["plans"][1]["built_from"]["file"] = "elsewhere.onnx"
    path.chmod(0o644)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    ("change", "engines", "warning"),
    [
        (_reflash, 3, "built for another manifest.json"),
        (_garble, 3, "device/manifest.json: not valid JSON (line 1"),
        (_foreign_source, 4, "built from elsewhere.onnx, which the signed manifest does not list"),
    ],
)
def test_a_stale_or_broken_overlay_is_ignored_with_a_warning(
    bundle: Path, fake_trt: FakeBuilderTrt, caplog: pytest.LogCaptureFixture,
    change: Callable[[Path], None], engines: int, warning: str,
) -> None:
    run_build(bundle)
    change(bundle)
    with caplog.at_level(logging.WARNING, logger="edgeseg.bundle.local"):
        assert len(load_merged_manifest(bundle).engines) == engines
        assert len(load_merged_manifest(bundle).engines) == engines
    warnings = [r.getMessage() for r in caplog.records if warning in r.getMessage()]
    assert len(warnings) == 1 and "serving its signed engines only" in warnings[0], caplog.text
    report, _ = run_build(bundle)  # the next build replaces it
    assert report.ok and overlay_problems(bundle, *read_signed(bundle)) == []


def test_load_model_serves_onnx_runtime_beside_plans_that_do_not_run_here(
    bundle: Path, fake_trt: FakeBuilderTrt,
) -> None:
    run_build(bundle)
    model = load_model(bundle)  # this machine: no TensorRT, so the plans are refused, ONNX Runtime serves
    try:
        assert model.engine is not None and model.engine.runtime == "onnxruntime"
        assert model.bundle is not None and FP16_PLAN in [e.file for e in model.bundle.engines]
    finally:
        model.close()


def test_the_real_selftest_runs_on_the_staged_file(bundle: Path, tmp_path: Path) -> None:
    """selftest_plan loads the staged file through open_engine and judges it against the signed
    reference (an ONNX file stands in for a plan: the only thing that runs here)."""
    manifest, _ = read_signed(bundle)
    fp32 = next(e for e in manifest.engines if e.file == FP32)
    staging = tmp_path / "staging"
    staging.mkdir()
    shutil.copyfile(bundle / FP32, staging / "demo-320-fp32.engine")
    record = fp32.model_copy(update={"file": "device/demo-320-fp32.engine"})
    result = selftest_plan(bundle, manifest, record, staging / "demo-320-fp32.engine")
    assert result is not None and result.passed and result.engine == "device/demo-320-fp32.engine", result
    (staging / "demo-320-fp32.engine").write_bytes(b"garbage")
    result = selftest_plan(bundle, manifest, record, staging / "demo-320-fp32.engine")
    assert result is not None and not result.passed and "cannot load" in result.one_line()


# -- signed, installed bundles --------------------------------------------------------------------------


@pytest.fixture
def installed(tmp_path: Path, bundle: Path) -> Tuple[EngineStore, str, Path]:
    private, public = generate_keypair(tmp_path / "keys")
    sign_bundle(bundle, private)
    store = EngineStore(tmp_path / "root", public, probe=lambda: ORIN, selftest=None)
    result = store.install(bundle, activate=True)
    return store, result.bundle_id, store.bundles_dir / result.bundle_id


def test_a_signed_installed_bundle_stays_verifiable_after_a_device_build(
    installed: Tuple[EngineStore, str, Path], fake_trt: FakeBuilderTrt,
) -> None:
    store, bid, path = installed
    report, _ = run_build(path)
    assert report.ok and len(report.built) == 2
    check = store.inspect_installed(bid)
    assert check.ok and check.signature_checked, check.problems
    assert store.activate(bid).active == bid  # re-verified
    assert sorted(p.name for p in store.bundles_dir.iterdir()) == [bid]  # no staging beside it
    assert oct((path / "device").stat().st_mode & 0o777) == "0o755"
    assert all(oct(p.stat().st_mode & 0o777) == "0o444" for p in (path / "device").iterdir())


def _tamper_plan(path: Path) -> None:
    (path / FP16_PLAN).chmod(0o644)
    (path / FP16_PLAN).write_bytes(b"PLAn")


def _drop_in(path: Path) -> None:
    (path / "device" / "extra.engine").write_bytes(b"PLAN")


def _no_manifest(path: Path) -> None:
    (path / DEVICE_MANIFEST).unlink()


def _stale(path: Path) -> None:
    doc = json.loads((path / DEVICE_MANIFEST).read_text())
    doc["bundle_sha256"] = "0" * 64
    (path / DEVICE_MANIFEST).chmod(0o644)
    (path / DEVICE_MANIFEST).write_text(json.dumps(doc))


def _outside(path: Path) -> None:
    (path / "devices.txt").write_text("not the device folder")


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        (_tamper_plan, "device/demo-320-fp16.engine: sha256"),
        (_drop_in, "device/extra.engine: not in device/manifest.json"),
        (_no_manifest, "device/: no manifest.json"),
        (_stale, "device/manifest.json: built for another manifest.json"),
        (_outside, "devices.txt: not in the manifest (added after install)"),
    ],
)
def test_the_store_verifies_the_overlay_by_its_own_manifest(
    installed: Tuple[EngineStore, str, Path], fake_trt: FakeBuilderTrt,
    tamper: Callable[[Path], None], problem: str,
) -> None:
    store, bid, path = installed
    run_build(path)
    (path / "device").chmod(0o755)
    tamper(path)
    check = store.inspect_installed(bid)
    assert any(p.startswith(problem) for p in check.problems), check.problems


def test_a_signed_manifest_cannot_claim_the_device_folder(tmp_path: Path, bundle: Path) -> None:
    doc = json.loads((bundle / "manifest.json").read_text())
    (bundle / "device").mkdir()
    (bundle / "device" / "x.engine").write_bytes(b"PLAN")
    doc["extra_files"]["device/x.engine"] = hashlib.sha256(b"PLAN").hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(doc))
    store = EngineStore(tmp_path / "root", probe=lambda: CPU, selftest=None)
    with pytest.raises(BundleError, match="device/x.engine: reserved name"):
        store.install(bundle)


def test_cli_builds_an_installed_bundle_by_name(
    installed: Tuple[EngineStore, str, Path], fake_trt: FakeBuilderTrt, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    store, bid, path = installed
    monkeypatch.setattr(engines_cli, "_device_facts", lambda: (ORIN, None))
    monkeypatch.setattr(build_module, "selftest_plan", passing)
    assert store.public_key is not None
    flags = ["--root", str(store.root), "--public-key", str(store.public_key), "--pid-file", str(tmp_path / "no.pid")]
    assert cli.main(["engines", "build", "demo", "--precision", "fp16", *flags]) == 0
    out = capsys.readouterr().out
    assert f"engines build: {bid}: 1 plan on" in out and "[1/1] demo-320-fp16.engine: built in" in out
    assert "1 built, 0 up to date, 0 failed" in out and "no daemon" in out  # the active bundle: reload asked
    assert cli.main(["engines", "build", "active", "--precision", "fp16", *flags]) == 0
    assert "0 built, 1 up to date" in capsys.readouterr().out
    assert cli.main(["engines", "verify", *flags]) == 0
    assert "1 plan built on this device, signature verified" in capsys.readouterr().out
    assert cli.main(["engines", "list", *flags]) == 0
    assert f"{FP16_PLAN}  tensorrt fp16 320x320 (TensorRT 10.3.0, Orin sm87)  built here" in capsys.readouterr().out
    monkeypatch.setattr(build_module, "selftest_plan", failing_int8)
    assert cli.main(["engines", "build", "demo", "--precision", "int8", *flags]) == 1
    captured = capsys.readouterr()
    assert "self-test failed: device/demo-320-int8.engine" in captured.out and "1 failed" in captured.err


# -- the service: serve on ONNX Runtime, build in the background, reload ---------------------------------


def _model(engine: Optional[str], runtime: str = "onnxruntime") -> Model:
    manifest, _ = read_signed(DEMO)
    record = next(e for e in manifest.engines if e.file == FP32)
    if runtime == "tensorrt":
        record = record.model_copy(update={"file": FP16_PLAN, "builder": record.builder.model_copy(
            update={"runtime": "tensorrt"})})
    return Model(spec=None, backend=None, engine=record if engine else None,  # type: ignore[arg-type]
                 bundle=manifest if engine else None)


@pytest.mark.parametrize(
    ("enabled", "model", "device", "start", "why"),
    [
        (False, _model(FP32), ORIN, False, ""),
        (True, _model(None), ORIN, False, "is an ONNX file, not an engine bundle"),
        (True, _model(FP32, "tensorrt"), ORIN, False, "serving the TensorRT plan device/demo-320-fp16.engine"),
        (True, _model(FP32), CPU, False, "TensorRT is not installed: bundle demo serves on ONNX Runtime"),
        (True, _model(FP32), ORIN, True, "serving demo-320-fp32.onnx on ONNX Runtime while the plans build"),
    ],
)
def test_build_decision(enabled: bool, model: Model, device: DeviceInfo, start: bool, why: str) -> None:
    decided, text = build_decision(enabled, model, device)
    assert decided == start and why in text


def _service_config(bundle: Path, tmp_path: Path, build_on_start: bool = True) -> Any:
    return parse_config({
        "model": {"path": str(bundle), "threads": 1},
        "source": {"uri": str(bundle / "selftest"), "loop": True},
        "output": {"sinks": [f"jsonl:{tmp_path / 'results.jsonl'}"]},
        "engines": {"build_on_start": build_on_start, "build_precisions": ["fp16"],
                    "pid_file": str(tmp_path / "edgeseg.pid")},
    })


@pytest.mark.parametrize(
    ("outcome", "reloads", "logged"),
    [
        ("built", 1, "build_on_start: 1 built, 0 up to date, 0 failed"),
        ("refused", 0, "build_on_start: no plans built for"),
        ("crashed", 0, "RuntimeError: CUDA out of memory"),
        ("nothing new", 0, "0 built, 1 up to date, 0 failed; plans in"),
    ],
)
def test_build_on_start_runs_in_the_background(
    bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, outcome: str, reloads: int, logged: str,
) -> None:
    config = _service_config(bundle, tmp_path)
    calls: List[Tuple[Path, Any]] = []
    release = threading.Event()

    def build(path: Path, engines: Any) -> BuildReport:
        calls.append((path, engines))
        assert release.wait(10)
        if outcome == "refused":
            raise BundleError("engines build: no CUDA GPU identified (probed with pycuda, then NVML)")
        if outcome == "crashed":
            raise RuntimeError("CUDA out of memory\nat tactic 12")
        return BuildReport(path, built=[FP16_PLAN] if outcome == "built" else [],
                           skipped=[] if outcome == "built" else [FP16_PLAN])

    reloaded = threading.Event()
    starter = BuildOnStart(build, probe=lambda: ORIN)
    with caplog.at_level(logging.INFO, logger="edgeseg.serve"):
        thread = starter.start(config, _model(FP32), reloaded.set)
        assert thread is not None and starter.running
        assert starter.start(config, _model(FP32), reloaded.set) is None  # one build at a time
        release.set()
        thread.join(10)
    assert calls == [(bundle.resolve(), config.engines)]
    assert reloaded.is_set() == bool(reloads)
    lines = [r.getMessage() for r in caplog.records if logged in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0], caplog.text


def test_the_daemon_serves_on_cpu_while_building_then_reloads(
    bundle: Path, tmp_path: Path, fake_trt: FakeBuilderTrt,
) -> None:
    from edgeseg.service.daemon import Daemon  # noqa: PLC0415

    config_file = tmp_path / "config.yaml"
    doc = _service_config(bundle, tmp_path).model_dump(mode="json")
    config_file.write_text(json.dumps(doc))
    served_before_build = threading.Event()
    daemon_box: List[Daemon] = []

    def build(path: Path, engines: Any) -> BuildReport:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the service is up on ONNX Runtime before any plan exists
            if daemon_box[0].stats().get("frames", 0) > 0:
                served_before_build.set()
                break
            time.sleep(0.05)
        return build_for_service(path, ORIN, None, engines.build_precisions, selftest=passing)

    daemon = Daemon(str(config_file), build_on_start=BuildOnStart(build, probe=lambda: ORIN))
    daemon_box.append(daemon)
    runner = threading.Thread(target=daemon.run, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 90
        while daemon.reloads < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        daemon.request_stop()
        runner.join(60)
    assert not runner.is_alive()
    assert served_before_build.is_set() and daemon.reloads == 1
    overlay = read_device_manifest(bundle)
    assert overlay is not None and [p.engine.file for p in overlay.plans] == [FP16_PLAN]


def test_device_manifest_round_trips_and_refuses_foreign_plans(bundle: Path, fake_trt: FakeBuilderTrt) -> None:
    run_build(bundle)
    overlay = read_device_manifest(bundle)
    assert overlay is not None
    assert DeviceManifest.model_validate(json.loads(overlay.to_json())) == overlay
    doc = json.loads(overlay.to_json())
    doc["plans"][0]["engine"]["file"] = "demo-320-fp16.engine"  # outside device/
    with pytest.raises(ValueError, match="expected device/<name>.engine"):
        DeviceManifest.model_validate(doc)
    doc = json.loads(overlay.to_json())
    doc["plans"][1]["engine"]["precision"] = "fp16"
    doc["plans"][1]["engine"]["quantization"] = None
    with pytest.raises(ValueError, match="a second fp16 plan at 320"):
        DeviceManifest.model_validate(doc)


def test_a_batch_bundle_builds_its_plans_with_its_batch_profile(bundle: Path, fake_trt: FakeBuilderTrt) -> None:
    """An export with --batch N records max_batch on its ONNX files: the device build passes it
    to the builder (profile min 1 / opt N / max N) and records it on the plan."""
    manifest, _ = read_signed(bundle)
    batched = manifest.model_copy(update={"engines": [e.model_copy(update={"max_batch": 4}) for e in manifest.engines]})
    assert {s.max_batch for s in onnx_sources(batched).values()} == {4}
    assert ORIN.tensorrt is not None
    requests, _ = plan_requests(batched, TrtVersion.parse(ORIN.tensorrt), ("fp16",))
    seen: List[int] = []

    def recording(onnx: Path, engine: Path, precision: str, **kwargs: Any) -> Any:
        seen.append(kwargs["max_batch"])
        raise ExportError("recorded")

    report = build_plans(bundle, requests, ORIN, selftest=passing, say=lambda _line: None, heartbeat_s=0,
                         builder=recording)
    assert seen == [4] and len(report.failed) == 1
