"""``edgeseg doctor`` on recorded devices (tests/data/platforms/) and, for real, on this machine."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, Optional

import pytest

from edgeseg.bundle.manifest import (
    BuilderRecord,
    EngineRecord,
    Manifest,
    ModelRecord,
)
from edgeseg.cli import main
from edgeseg.doctor import FAIL, OK, WARN, Diagnosis, diagnose, fits_pin
from edgeseg.platform.host import Host, recorded_host

ROOT = Path(__file__).resolve().parents[1]
PLATFORMS = Path(__file__).parent / "data" / "platforms"
JP5, JP6, X86 = PLATFORMS / "jp5-agx-orin", PLATFORMS / "jp6-orin-nano", PLATFORMS / "x86-desktop"
AGX = "NVIDIA Jetson AGX Orin Developer Kit"
NANO = "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit"


def find(result: Diagnosis, what: str) -> tuple[str, str]:
    matches = [(f.status, f.finding) for f in result.findings if f.what.strip() == what]
    assert len(matches) == 1, f"{what}: {matches}"
    return matches[0]


def with_modules(host: Host, **modules: Optional[Dict[str, Any]]) -> Host:
    """``host`` with some modules replaced (None: not importable)."""
    def import_module(name: str) -> Any:
        key = name.replace(".", "_")
        if key in modules:
            value = modules[key]
            if value is None:
                raise ModuleNotFoundError(name)
            return SimpleNamespace(**value)
        return host.import_module(name)
    return dataclasses.replace(host, import_module=import_module)


def trt(version: str, sm_count: int, board: str) -> BuilderRecord:
    return BuilderRecord(runtime="tensorrt", version=version, gpu="Orin", compute_capability=(8, 7),
                         sm_count=sm_count, board=board)


def make_bundle(folder: Path, *builders: BuilderRecord, name: str = "gate") -> Path:
    engines = [EngineRecord(file=f"e{i}.{'onnx' if b.runtime == 'onnxruntime' else 'engine'}", sha256="a" * 64,
                            bytes=1, resolution=(640, 640), precision="fp16", builder=b)
               for i, b in enumerate(builders)]
    manifest = Manifest(name=name, model=ModelRecord(family="yolov8-seg", class_names=["a"], num_masks=32),
                        engines=engines)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(manifest.to_json())
    return folder


ORT = BuilderRecord(runtime="onnxruntime", version="1.16.3")


# -- the recorded devices, as they are ------------------------------------------------------------


@pytest.mark.parametrize(
    "root, what, status, finding",
    [
        (JP5, "board", OK, AGX),
        (JP5, "L4T/JetPack", OK, "R35.4.1 = JetPack 5.1.2 (Ubuntu 20.04, Python 3.8, TensorRT 8.5.2, CUDA 11.4)"),
        (JP5, "python", OK, "3.8.10"),
        (JP5, "cuda", OK, "11.4.19 (/usr/local/cuda/version.json)"),
        (JP5, "cudnn", OK, "8.6.0.166 (dpkg libcudnn8)"),
        (JP5, "tensorrt", OK, "8.5.2.2"),
        (JP5, "gpu", OK, "Orin (sm 87, 16 SMs; from pycuda)"),
        (JP5, "pycuda", OK, "2022.2.2"),
        (JP5, "numpy", OK, "1.23.5 (JetPack 5.1.2 needs numpy<1.24)"),
        (JP5, "opencv", OK, "4.5.4 with GStreamer (1.16.3), /usr/lib/python3.8/dist-packages/cv2/__init__.py"),
        (JP5, "cameras", OK, "/dev/video0"),
        (JP5, "power mode", OK, "MAXN, mode 0 (nvpmodel -q)"),
        (JP5, "clock", OK, "synchronised (timedatectl)"),
        (JP6, "board", OK, NANO),
        (JP6, "L4T/JetPack", OK, "R36.4.0 = JetPack 6.1 (Ubuntu 22.04, Python 3.10, TensorRT 10.3, CUDA 12.6)"),
        (JP6, "cudnn", OK, "9.3.0 (/usr/include/cudnn_version.h)"),
        (JP6, "tensorrt", OK, "10.3.0.30"),
        (JP6, "gpu", WARN, "no CUDA GPU identified (pycuda is not installed; NVML absent or found none)"),
        (JP6, "pycuda", WARN, "not installed: TensorRT engines cannot run"),
        (JP6, "numpy", OK, "1.26.4 (JetPack 6.1 needs numpy<2)"),
        (JP6, "power mode", OK, "7W, mode 1 (/var/lib/nvpmodel/status and /etc/nvpmodel.conf)"),
        (JP6, "clock", WARN, "not synchronised (timedatectl)"),
        (JP6, "cameras", WARN, "none under /dev"),
        (X86, "board", OK, "not a Jetson: x86_64, Ubuntu 22.04.4 LTS"),
        (X86, "cuda", OK, "not installed"),
        (X86, "tensorrt", WARN, "not installed: TensorRT engines cannot run here (ONNX Runtime ones can)"),
        (X86, "pycuda", OK, "not installed (not needed without TensorRT)"),
        (X86, "numpy", OK, "1.26.4"),
        (X86, "opencv", OK, "4.10.0 without GStreamer"),
        (X86, "mqtt", OK, "off"),
        (X86, "config", WARN, "no /etc/edgeseg/config.yaml"),
        (X86, "model", WARN, "none configured (model.path) and no /var/lib/edgeseg/engines/active"),
    ],
)
def test_recorded_devices(root: Path, what: str, status: str, finding: str) -> None:
    found = find(diagnose(recorded_host(root)), what)
    assert found[0] == status and found[1].startswith(finding), found


@pytest.mark.parametrize("root, absent", [(X86, ["L4T/JetPack", "power mode"]), (JP5, [])])
def test_jetson_only_lines(root: Path, absent: list[str]) -> None:
    whats = {f.what for f in diagnose(recorded_host(root)).findings}
    assert not whats & set(absent)


@pytest.mark.parametrize("root", [JP5, JP6, X86])
def test_no_service_configured_means_no_fail(root: Path) -> None:
    result = diagnose(recorded_host(root))
    assert not result.failed, [f.line() for f in result.findings if f.status == FAIL]


# -- what fails the configured service ----------------------------------------------------------


@pytest.mark.parametrize(
    "root, modules, python, what, finding",
    [
        (JP5, {"numpy": {"__version__": "1.24.4"}}, None, "numpy",
         "1.24.4 breaks JetPack 5.1.2's bindings (needs numpy<1.24"),
        (JP6, {"numpy": {"__version__": "2.0.1"}}, None, "numpy", "2.0.1 breaks JetPack 6.1's bindings (needs numpy<2"),
        (X86, {"numpy": None}, None, "numpy", "not importable"),
        (X86, {"cv2": None}, None, "opencv", "cv2 not importable"),
        (JP5, {}, "3.11.7", "python", "3.11.7: JetPack 5.1.2's TensorRT bindings exist for its system Python 3.8 only"),
    ],
)
def test_broken_stacks_fail(root: Path, modules: Dict[str, Any], python: Optional[str], what: str,
                            finding: str) -> None:
    host = with_modules(recorded_host(root), **modules)
    if python:
        host = dataclasses.replace(host, python_version=python)
    result = diagnose(host)
    assert find(result, what) == (FAIL, find(result, what)[1]) and find(result, what)[1].startswith(finding)
    assert result.failed


def test_tensorrt_installed_for_the_system_but_not_importable() -> None:
    result = diagnose(with_modules(recorded_host(JP5), tensorrt=None))
    status, finding = find(result, "tensorrt")
    assert status == WARN and "python3-libnvinfer 8.5.2-1+cuda11.4" in finding and "--system-site-packages" in finding


def config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text("version: 1\n" + text)
    return str(path)


@pytest.mark.parametrize(
    "root, text, modules, what, status, finding",
    [
        (X86, "model: {path: /nowhere/bundle}\n", {}, "model", FAIL, "/nowhere/bundle does not exist"),
        (X86, "mqtt: {uri: 'mqtt://broker.lan'}\n", {"paho_mqtt_client": None}, "mqtt", FAIL,
         "enabled but paho-mqtt is not installed"),
        (X86, "mqtt: {uri: 'mqtt://broker.lan'}\n", {}, "mqtt", OK, "enabled, paho-mqtt installed"),
        (X86, "source: {uri: 'csi://0'}\n", {}, "opencv", FAIL, "4.10.0 without GStreamer"),
        (JP6, "source: {uri: 'v4l2:///dev/video0'}\n", {}, "cameras", FAIL,
         "none under /dev; the configured source needs /dev/video0"),
        (JP5, "source: {uri: 'v4l2://0'}\n", {}, "cameras", OK, "/dev/video0"),
        (JP5, "source: {uri: 'rtsp://cam/stream'}\n", {}, "cameras", OK, "/dev/video0"),
        (X86, "postprocess: {nms: fastest}\n", {}, "config", FAIL, "field 'postprocess.nms'"),
    ],
)
def test_configured_service(tmp_path: Path, root: Path, text: str, modules: Dict[str, Any], what: str,
                            status: str, finding: str) -> None:
    result = diagnose(with_modules(recorded_host(root), **modules), config(tmp_path, text))
    assert find(result, what)[0] == status
    assert finding in find(result, what)[1]


# -- the bundle --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "root, builders, status, summary",
    [
        # JetPack 5 AGX Orin: its own plan runs, the Orin Nano's (other TensorRT, SMs, board) does not
        (JP5, [trt("8.5.2.2", 16, AGX), trt("10.3.0.30", 8, NANO), ORT], OK, "2 of 3 engines run here"),
        # an old manifest without SM count and board: compute capability and version decide
        (JP5, [BuilderRecord(runtime="tensorrt", version="8.5.2.2", gpu="Orin", compute_capability=(8, 7))], OK,
         "1 of 1 engines run here"),
        # another module's plan with the same TensorRT: refused, the ONNX Runtime engine serves
        (JP5, [trt("8.5.2.2", 8, NANO), ORT], WARN, "1 of 2 engines run here"),
        (JP5, [trt("10.3.0.30", 8, NANO)], FAIL, "0 of 1 engines run here"),
        # JetPack 6 without pycuda: no GPU identified, plans refused, ONNX Runtime fallback
        (JP6, [trt("10.3.0.30", 8, NANO), ORT], WARN, "1 of 2 engines run here"),
        (X86, [ORT], OK, "1 of 1 engines run here"),
    ],
)
def test_bundle_engines(tmp_path: Path, root: Path, builders: list[BuilderRecord], status: str,
                        summary: str) -> None:
    bundle = make_bundle(tmp_path / "gate", *builders)
    result = diagnose(recorded_host(root), model=str(bundle))
    found = find(result, "bundle gate")
    assert found[0] == status and found[1].startswith(summary), found
    engines = [f for f in result.findings if f.what.strip().startswith("engine ")]
    assert len(engines) == len(builders)
    assert sum(f.finding.endswith("runs here") for f in engines) == int(summary.split()[0])


def test_bundle_reasons_name_the_module(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "gate", trt("8.5.2.2", 8, NANO), ORT)
    result = diagnose(recorded_host(JP5), model=str(bundle))
    status, finding = find(result, "engine e0.engine")
    assert status == WARN and "built on a GPU with 8 SMs, this device's has 16" in finding
    assert "edgeseg engines build" in find(result, "bundle gate")[1]


def test_tensorrt_engines_without_pycuda_fail(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "gate", trt("10.3.0.30", 8, NANO), ORT)
    result = diagnose(recorded_host(JP6), model=str(bundle))
    status, finding = [(f.status, f.finding) for f in result.findings if f.what == "pycuda"][-1]
    assert status == FAIL and "TensorRT engines but pycuda is missing" in finding
    assert result.failed


def test_bundle_without_selftest_is_said(tmp_path: Path) -> None:
    result = diagnose(recorded_host(X86), model=str(make_bundle(tmp_path / "gate", ORT)))
    status, finding = find(result, "self-test")
    assert status == WARN and "no self-test reference" in finding


def test_active_bundle_of_the_configured_store(tmp_path: Path) -> None:
    """The installed layout: config under etc/, model.path = the store's ``active`` link."""
    import shutil

    root = tmp_path / "device"
    shutil.copytree(str(JP5), str(root))
    store = root / "var/lib/edgeseg/engines"
    make_bundle(store / "bundles/gate@1234", trt("8.5.2.2", 16, AGX), name="gate")
    (store / "active").symlink_to("bundles/gate@1234")
    (root / "etc/edgeseg").mkdir(parents=True)
    (root / "etc/edgeseg/config.yaml").write_text((ROOT / "configs/service.yaml").read_text())
    result = diagnose(recorded_host(root))
    assert find(result, "config")[0] == OK
    status, finding = find(result, "bundle gate")
    assert status == OK and finding == "1 of 1 engines run here (/var/lib/edgeseg/engines/active -> gate@1234)"
    assert find(result, "disk")[1].endswith("at /var/lib/edgeseg/engines")
    # the configured service is strict: remove the bundle and the doctor fails
    (store / "active").unlink()
    assert find(diagnose(recorded_host(root)), "model")[0] == FAIL


def test_damaged_bundle_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b/manifest.json").write_text("{not json")
    status, finding = find(diagnose(recorded_host(X86), model=str(tmp_path / "b")), "bundle")
    assert status == FAIL and "not valid JSON" in finding and "\n" not in finding


@pytest.mark.parametrize("version, pin, expected", [
    ("1.23.5", "numpy<1.24", True), ("1.24.0", "numpy<1.24", False), ("1.26.4", "numpy<2", True),
    ("2.0.0rc1", "numpy<2", False), ("1.23.5", "numpy>=1", None),
])
def test_fits_pin(version: str, pin: str, expected: Optional[bool]) -> None:
    assert fits_pin(version, pin) is expected


# -- the command -------------------------------------------------------------------------------


@pytest.mark.parametrize("root, code", [(JP5, 0), (JP6, 0), (X86, 0)])
def test_cli_exit_codes_and_json(capsys: pytest.CaptureFixture[str], root: Path, code: int) -> None:
    assert main(["doctor", "--root", str(root), "--json"]) == code
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is (code == 0)
    assert {f["status"] for f in doc["findings"]} <= {OK, WARN, FAIL}
    assert "compute_capability" in doc["device"]


def test_cli_fails_with_a_broken_service(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = config(tmp_path, "model: {path: /nowhere/bundle}\n")
    assert main(["doctor", "--root", str(X86), "--config", path]) == 1
    out = capsys.readouterr().out
    assert "FAIL  model: /nowhere/bundle does not exist" in out
    assert out.rstrip().splitlines()[-1].startswith("doctor: 1 FAIL")


def test_cli_refuses_a_bad_root_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--root", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgeseg: --root:") and err.count("\n") == 1


def test_doctor_on_this_machine() -> None:
    """For real, here (x86, no GPU): it runs, says what is missing, and never shows a traceback."""
    done = subprocess.run([sys.executable, "-m", "edgeseg", "doctor"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode in (0, 1), done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert all(line.split(None, 1)[0] in (OK, WARN, FAIL, "doctor:") for line in lines)
    gpu = next(line for line in lines if line.split(None, 1)[1].startswith("gpu:"))
    trt_line = next(line for line in lines if line.split(None, 1)[1].startswith("tensorrt:"))
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert "not installed" in trt_line or "cannot import" in trt_line
    try:
        import pycuda.driver  # noqa: F401
    except ImportError:
        assert "no CUDA GPU identified" in gpu
