"""Jetson facts (L4T -> JetPack -> stack), the probe seam, and the install plan of ``make install``.

The devices are recorded under tests/data/platforms/: a JetPack 5.1.2 AGX Orin (L4T R35.4.1), a
JetPack 6.1 Orin Nano (L4T R36.4.0, flashed without the CUDA toolkit) and an x86 workstation.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeseg.bundle.device import describe_device
from edgeseg.platform import jetson, probes
from edgeseg.platform.host import NOT_FOUND, Host, recorded_host
from edgeseg.platform.install import (
    CudaFacts,
    InstallError,
    InstallFacts,
    PythonFacts,
    plan_install,
    pycuda_missing,
    requirement_name,
    runtime_requirements,
)

ROOT = Path(__file__).resolve().parents[1]
PLATFORMS = Path(__file__).parent / "data" / "platforms"
JP5, JP6, X86 = PLATFORMS / "jp5-agx-orin", PLATFORMS / "jp6-orin-nano", PLATFORMS / "x86-desktop"


def write(root: Path, device_path: str, text: str) -> None:
    path = root / device_path.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


# -- parsing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue", (35, 4, 1)),
        ("# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64", (36, 4, 0)),
        ("# R36 (release), REVISION: 3, GCID: 1", (36, 3, 0)),
        ("# R32 (release), REVISION: 7.1, GCID: 29689809, BOARD: t186ref", (32, 7, 1)),
        ("R35 REVISION 4.1", None),
        ("", None),
    ],
)
def test_parse_tegra_release(text: str, expected: tuple[int, int, int] | None) -> None:
    assert jetson.parse_tegra_release(text) == expected


@pytest.mark.parametrize(
    "version, expected",
    [("35.4.1-20230801124926", (35, 4, 1)), ("36.4.0-20240912212859", (36, 4, 0)), ("36.3", (36, 3, 0)),
     ("garbage", None)],
)
def test_parse_package_version(version: str, expected: tuple[int, int, int] | None) -> None:
    assert jetson.parse_package_version(version) == expected


@pytest.mark.parametrize(
    "names, expected",
    [
        (["nvidia-l4t-core"], {"nvidia-l4t-core": "35.4.1-20230801124926"}),
        (["python3-numpy"], {}),  # "deinstall ok config-files": dpkg remembers it, it is not installed
        (["libcudnn*"], {"libcudnn8": "8.6.0.166-1+cuda11.4"}),
        (["libnvinfer8", "python3-libnvinfer", "absent"],
         {"libnvinfer8": "8.5.2-1+cuda11.4", "python3-libnvinfer": "8.5.2-1+cuda11.4"}),
    ],
)
def test_installed_packages(names: list[str], expected: dict[str, str]) -> None:
    status = (JP5 / "var/lib/dpkg/status").read_text(encoding="utf-8")
    assert jetson.installed_packages(status, names) == expected


@pytest.mark.parametrize(
    "l4t, jetpack, numpy_pin",
    [
        ((35, 1, 0), "5.0.2", "numpy<1.24"),
        ((35, 4, 1), "5.1.x", "numpy<1.24"),
        ((35, 6, 0), "5.1.x", "numpy<1.24"),
        ((36, 3, 0), "6.0", "numpy<2"),
        ((36, 4, 3), "6.1 / 6.2", "numpy<2"),
        ((32, 7, 1), "4.6.x", ""),
        ((38, 2, 0), None, None),
        ((36, 0, 0), None, None),
    ],
)
def test_stack_for(l4t: tuple[int, int, int], jetpack: str | None, numpy_pin: str | None) -> None:
    stack = jetson.stack_for(l4t)
    assert (stack.jetpack if stack else None) == jetpack
    assert (stack.numpy_pin if stack else None) == numpy_pin


# -- the recorded devices ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "root, l4t, jetpack, board, pin, cuda, python",
    [
        (JP5, (35, 4, 1), "5.1.2", "NVIDIA Jetson AGX Orin Developer Kit", "numpy<1.24", "11.4", "3.8"),
        (JP6, (36, 4, 0), "6.1", "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit", "numpy<2", "12.6",
         "3.10"),
        (X86, None, None, None, "", None, None),
    ],
)
def test_read_platform(root: Path, l4t: tuple[int, int, int] | None, jetpack: str | None, board: str | None,
                       pin: str, cuda: str | None, python: str | None) -> None:
    p = jetson.read_platform(recorded_host(root))
    assert (p.l4t, p.jetpack, p.board, p.numpy_pin) == (l4t, jetpack, board, pin)
    assert p.is_jetson == (l4t is not None)
    assert (p.stack.cuda if p.stack else None, p.stack.python if p.stack else None) == (cuda, python)
    assert p.problem() is None
    assert jetson.pip_constraints(p) == ([pin] if pin else [])


@pytest.mark.parametrize(
    "files, l4t, source, problem",
    [
        # containers and trimmed images may lack the release file: dpkg's nvidia-l4t-core says it
        ({"/var/lib/dpkg/status": "Package: nvidia-l4t-core\nStatus: install ok installed\n"
                                  "Version: 36.4.3-20250107174145\n"}, (36, 4, 3),
         "dpkg nvidia-l4t-core 36.4.3-20250107174145", None),
        ({"/etc/nv_tegra_release": "# R38 (release), REVISION: 2.0, GCID: 1, BOARD: generic\n"}, (38, 2, 0),
         "/etc/nv_tegra_release", "L4T R38.2.0 is not in edgeseg's JetPack table"),
        ({"/etc/nv_tegra_release": "# R32 (release), REVISION: 7.1, GCID: 1\n"}, (32, 7, 1),
         "/etc/nv_tegra_release", "out of scope: edgeseg's runtime needs Python 3.8+"),
        ({"/proc/device-tree/model": "NVIDIA Jetson Xavier NX Developer Kit\x00"}, None, "",
         "without an L4T release"),
        ({"/proc/device-tree/model": "Raspberry Pi 4 Model B Rev 1.4\x00"}, None, "", None),
    ],
)
def test_read_platform_edge_cases(tmp_path: Path, files: dict[str, str], l4t: tuple[int, int, int] | None,
                                  source: str, problem: str | None) -> None:
    for name, text in files.items():
        write(tmp_path, name, text)
    p = jetson.read_platform(Host(root=tmp_path))
    assert (p.l4t, p.l4t_source) == (l4t, source)
    found = p.problem()
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found and "\n" not in found
    assert "\n" not in p.describe()
    assert jetson.pip_constraints(p) == ([] if problem or not l4t else ["numpy<2"])


@pytest.mark.parametrize(
    "args, root, out, err",
    [
        (["--pip-constraints"], JP5, "numpy<1.24\n", ""),
        (["--pip-constraints"], JP6, "numpy<2\n", ""),
        (["--pip-constraints"], X86, "", ""),
        (["--describe"], JP5, "NVIDIA Jetson AGX Orin Developer Kit: L4T R35.4.1 (from /etc/nv_tegra_release) = "
                              "JetPack 5.1.2: Ubuntu 20.04, Python 3.8, TensorRT 8.5.2, CUDA 11.4, numpy<1.24\n", ""),
        (["--describe"], X86, "not a Jetson (no /etc/nv_tegra_release, no nvidia-l4t-core package)\n", ""),
    ],
)
def test_jetson_cli_runs_without_third_party_packages(args: list[str], root: Path, out: str, err: str) -> None:
    """``make install`` runs it with the bare system Python: ``-S`` hides every site-package."""
    done = subprocess.run([sys.executable, "-S", "-m", "edgeseg.platform.jetson", *args, "--root", str(root)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, out, err)


def test_jetson_cli_unknown_release_says_so_in_one_line(tmp_path: Path) -> None:
    write(tmp_path, "/etc/nv_tegra_release", "# R38 (release), REVISION: 2.0, GCID: 1\n")
    done = subprocess.run([sys.executable, "-S", "-m", "edgeseg.platform.jetson", "--pip-constraints",
                           "--root", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "L4T R38.2.0 is not in edgeseg's JetPack table" in done.stderr


# -- the seam ------------------------------------------------------------------------------------


def test_recorded_host_answers_like_the_device() -> None:
    host = recorded_host(JP5)
    assert host.run(["nvpmodel", "-q"]).stdout.splitlines()[1] == "NV Power Mode: MAXN"
    assert host.run(["/usr/bin/python3", "-c", "anything"]).ok  # a "*" key answers by prefix
    assert host.run(["nvidia-smi"]).returncode == NOT_FOUND  # not recorded = not installed
    assert host.try_import("pynvml") is None and host.try_import("never-recorded") is None
    driver = host.import_module("pycuda.driver")
    assert driver.Device(0).compute_capability() == (8, 7)
    assert driver.Device(0).get_attribute(driver.device_attribute.MULTIPROCESSOR_COUNT) == 16
    assert host.which("nvcc") is None and host.which("nvcc", ["/usr/local/cuda/bin"]) == "/usr/local/cuda/bin/nvcc"
    assert (host.machine, host.python_version) == ("aarch64", "3.8.10")


@pytest.mark.parametrize("make", [lambda p: p / "absent", lambda p: (p / "f").write_text("x") and p / "f"])
def test_recorded_host_refuses_a_non_directory(tmp_path: Path, make: object) -> None:
    with pytest.raises(ValueError, match="not a directory"):
        recorded_host(make(tmp_path))  # type: ignore[operator]


def test_recorded_host_refuses_broken_json(tmp_path: Path) -> None:
    (tmp_path / "modules.json").write_text("{not json")
    with pytest.raises(ValueError, match="modules.json: not a readable JSON recording"):
        recorded_host(tmp_path)


@pytest.mark.parametrize(
    "root, tensorrt, gpu, cc, sms, board, source",
    [
        (JP5, "8.5.2.2", "Orin", (8, 7), 16, "NVIDIA Jetson AGX Orin Developer Kit", "pycuda"),
        (JP6, "10.3.0.30", None, None, None, "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit", ""),
        (X86, None, None, None, None, None, ""),
    ],
)
def test_describe_device(root: Path, tensorrt: str | None, gpu: str | None, cc: tuple[int, int] | None,
                         sms: int | None, board: str | None, source: str) -> None:
    d = describe_device(recorded_host(root))
    assert (d.tensorrt, d.gpu, d.compute_capability, d.sm_count, d.board, d.gpu_source) == (
        tensorrt, gpu, cc, sms, board, source)


def test_describe_device_from_nvml_has_no_sm_count(tmp_path: Path) -> None:
    """NVML names the GPU "Orin (nvgpu)" and has no SM count query: the device says so (None)."""
    (tmp_path / "modules.json").write_text(json.dumps({"pynvml": {
        "nvmlInit()": None, "nvmlDeviceGetHandleByIndex()": 0, "nvmlDeviceGetName()": "Orin (nvgpu)",
        "nvmlDeviceGetCudaComputeCapability()": [8, 7]}}))
    d = describe_device(recorded_host(tmp_path))
    assert (d.gpu, d.compute_capability, d.sm_count, d.gpu_source) == ("Orin (nvgpu)", (8, 7), None, "nvml")


@pytest.mark.parametrize(
    "root, cuda, cudnn, power, clock, cameras",
    [
        (JP5, ("11.4.19", "/usr/local/cuda/version.json"), ("8.6.0.166", "dpkg libcudnn8"),
         ("MAXN, mode 0", "nvpmodel -q"), ("yes", "timedatectl"), ["/dev/video0"]),
        (JP6, ("12.6.68", "/usr/local/cuda/version.json"), ("9.3.0", "/usr/include/cudnn_version.h"),
         ("7W, mode 1", "/var/lib/nvpmodel/status and /etc/nvpmodel.conf"), ("no", "timedatectl"), []),
        (X86, None, None, None, ("yes", "timedatectl"), []),
    ],
)
def test_probes(root: Path, cuda: tuple[str, str] | None, cudnn: tuple[str, str] | None,
                power: tuple[str, str] | None, clock: tuple[str, str] | None, cameras: list[str]) -> None:
    host = recorded_host(root)
    assert probes.cuda_version(host) == cuda
    assert probes.cudnn_version(host) == cudnn
    assert probes.power_mode(host) == power
    assert probes.clock_synchronized(host) == clock
    assert probes.cameras(host) == cameras


@pytest.mark.parametrize(
    "files, commands, expected",
    [
        ({"/usr/local/cuda/version.txt": "CUDA Version 10.2.300\n"}, {}, ("10.2.300", "/usr/local/cuda/version.txt")),
        ({"/usr/local/cuda/bin/nvcc": ""},
         {"/usr/local/cuda/bin/nvcc --version": {"stdout": "Cuda compilation tools, release 12.2, V12.2.140\n"}},
         ("12.2.140", "/usr/local/cuda/bin/nvcc --version")),
        ({"/usr/local/cuda/version.json": "{broken"}, {}, None),
    ],
)
def test_cuda_version_fallbacks(tmp_path: Path, files: dict[str, str], commands: dict[str, object],
                                expected: tuple[str, str] | None) -> None:
    for name, text in files.items():
        write(tmp_path, name, text)
    (tmp_path / "commands.json").write_text(json.dumps(commands))
    assert probes.cuda_version(recorded_host(tmp_path)) == expected


def test_clock_falls_back_to_the_timesyncd_flag(tmp_path: Path) -> None:
    write(tmp_path, "/run/systemd/timesync/synchronized", "")
    assert probes.clock_synchronized(recorded_host(tmp_path)) == ("yes", "/run/systemd/timesync/synchronized")


# -- the install plan ---------------------------------------------------------------------------


REQUIREMENTS = runtime_requirements(ROOT / "setup.py")


def facts(root: Path, python: str = "3.8", cv2: str | None = "4.5.4", pycuda: str | None = None,
          cuda: CudaFacts | None = None) -> InstallFacts:
    cuda = cuda or CudaFacts("/usr/local/cuda/bin/nvcc", "/usr/local/cuda", True, True)
    return InstallFacts(jetson.read_platform(recorded_host(root)), PythonFacts("/usr/bin/python3", python, cv2, pycuda),
                        cuda, REQUIREMENTS)


def shell(steps: list) -> list[str]:  # type: ignore[type-arg]
    return [s.shell() for s in steps]


def test_runtime_requirements_come_from_setup_py() -> None:
    assert "opencv-python-headless>=4.8" in REQUIREMENTS and "numpy>=1.21" in REQUIREMENTS
    assert [requirement_name(r) for r in ("paho-mqtt>=2,<3", "PyYAML>=6", "opencv_python_headless")] == [
        "paho-mqtt", "pyyaml", "opencv-python-headless"]


@pytest.mark.parametrize("text", ["RUNTIME = make()\n", "OTHER = []\n", "RUNTIME = [1, 2]\n", "def (:\n"])
def test_runtime_requirements_refuse_other_setup_files(tmp_path: Path, text: str) -> None:
    (tmp_path / "setup.py").write_text(text)
    with pytest.raises(InstallError, match="setup.py"):
        runtime_requirements(tmp_path / "setup.py")


@pytest.mark.parametrize(
    "root, pin",
    [(JP5, "numpy<1.24"), (JP6, "numpy<2")],
)
def test_jetson_plan(root: Path, pin: str) -> None:
    python = "3.8" if root == JP5 else "3.10"
    lines = shell(plan_install(facts(root, python), "/opt/edgeseg", "/src"))
    assert "/usr/bin/python3 -m venv --system-site-packages /opt/edgeseg/venv" in lines
    assert f"cat > /opt/edgeseg/constraints.txt <<'EOF'\n{pin}\nEOF" in lines
    pip = "/opt/edgeseg/venv/bin/python -m pip install --quiet -c /opt/edgeseg/constraints.txt"
    assert f"{pip} --no-deps /src" in lines
    deps = next(line for line in lines if line.startswith(pip) and "'numpy>=1.21'" in line)
    assert "opencv" not in deps and "'paho-mqtt>=2,<3'" in deps  # all of RUNTIME except OpenCV
    assert f'CUDA_ROOT=/usr/local/cuda PATH=/usr/local/cuda/bin:"$PATH" {pip} pycuda' in lines
    assert not any("opencv" in line for line in lines if not line.startswith("#"))


def test_plan_of_a_jetson_without_system_opencv_installs_pypis() -> None:
    lines = shell(plan_install(facts(JP5, cv2=None), "/opt/edgeseg", "/src"))
    assert "/opt/edgeseg/venv/bin/python -m pip install --quiet -c /opt/edgeseg/constraints.txt /src" in lines
    assert any("no GStreamer" in line for line in lines if line.startswith("#"))


def test_x86_plan_is_a_plain_venv() -> None:
    lines = shell(plan_install(facts(X86, "3.11", cv2=None), "/opt/edgeseg", "/src"))
    assert lines[1:] == ["/usr/bin/python3 -m venv /opt/edgeseg/venv",
                         "/opt/edgeseg/venv/bin/python -m pip install --quiet --upgrade pip",
                         "/opt/edgeseg/venv/bin/python -m pip install --quiet /src"]


@pytest.mark.parametrize(
    "cuda, python, expected",
    [
        (CudaFacts("/usr/local/cuda/bin/nvcc", "/usr/local/cuda", True, True), "3.8", None),
        (CudaFacts(None, None, False, True), "3.8", "nvcc not found (looked in PATH and /usr/local/cuda/bin): "
                                                   "sudo apt install nvidia-cuda-dev"),
        (CudaFacts("/usr/local/cuda/bin/nvcc", "/usr/local/cuda", False, True), "3.8",
         "CUDA headers missing (/usr/local/cuda/include/cuda.h): sudo apt install nvidia-cuda-dev"),
        (CudaFacts("/usr/bin/nvcc", "/usr", True, False), "3.10",
         "Python headers missing (/usr/include/python3.10/Python.h): sudo apt install python3.10-dev"),
    ],
)
def test_pycuda_missing(cuda: CudaFacts, python: str, expected: str | None) -> None:
    found = pycuda_missing(cuda, python)
    assert (found is None) if expected is None else (found is not None and found.startswith(expected))


def test_plan_skips_pycuda_that_cannot_build_and_says_why_in_one_line() -> None:
    steps = plan_install(facts(JP6, "3.10", cuda=CudaFacts(None, None, False, False)), "/opt/edgeseg", "/src")
    notes = [s.note for s in steps if "pycuda" in s.note]
    assert len(notes) == 1 and "nvcc not found" in notes[0] and "nvidia-cuda-dev" in notes[0]
    assert not any("pycuda" in s.argv for s in steps)


def test_plan_leaves_a_system_pycuda_alone() -> None:
    steps = plan_install(facts(JP5, pycuda="2022.2.2"), "/opt/edgeseg", "/src")
    assert not any("pycuda" in s.argv for s in steps)


@pytest.mark.parametrize(
    "root, python, files, error",
    [
        (JP5, "3.11", {}, "is Python 3.11; JetPack 5.1.2's TensorRT bindings exist for its system Python 3.8 only"),
        (JP6, "3.8", {}, "JetPack 6.1's TensorRT bindings exist for its system Python 3.10 only"),
        (None, "3.6", {"/etc/nv_tegra_release": "# R32 (release), REVISION: 7.1, GCID: 1\n"}, "out of scope"),
    ],
)
def test_plan_refusals(tmp_path: Path, root: Path | None, python: str, files: dict[str, str], error: str) -> None:
    for name, text in files.items():
        write(tmp_path, name, text)
    with pytest.raises(InstallError, match=error.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        plan_install(facts(root or tmp_path, python), "/opt/edgeseg", "/src")


def test_plan_on_an_unknown_release_warns_and_does_not_pin(tmp_path: Path) -> None:
    write(tmp_path, "/etc/nv_tegra_release", "# R38 (release), REVISION: 2.0, GCID: 1\n")
    steps = plan_install(facts(tmp_path, "3.12"), "/opt/edgeseg", "/src")
    assert any(s.note.startswith("WARNING L4T R38.2.0 is not in edgeseg's JetPack table") for s in steps)
    assert not any(s.write for s in steps) and not any("-c" in s.argv for s in steps)
    assert any("--system-site-packages" in s.argv for s in steps)


@pytest.mark.parametrize(
    "root, present, absent",
    [
        (JP5, ["--system-site-packages", "numpy<1.24", "--no-deps", "CUDA_ROOT=/usr/local/cuda", " pycuda"],
         ["opencv-python-headless"]),
        (JP6, ["--system-site-packages", "numpy<2", "--no-deps", "# WARNING pycuda not installed",
               "sudo apt install nvidia-cuda-dev"], ["opencv-python-headless", "CUDA_ROOT"]),
        (X86, ["# not a Jetson", "-m venv /opt/edgeseg/venv\n"], ["--system-site-packages", "numpy<", "pycuda"]),
    ],
)
def test_install_dry_run_on_recorded_devices(root: Path, present: list[str], absent: list[str]) -> None:
    """The module ``make install`` runs, run as make runs it (bare system Python), planning for a device."""
    done = subprocess.run([sys.executable, "-S", "-m", "edgeseg.platform.install", "--root", str(root),
                           "--python", "/usr/bin/python3", "--prefix", "/opt/edgeseg", "--dry-run"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for text in present:
        assert text in done.stdout
    for text in absent:
        assert text not in done.stdout


def test_install_refusal_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-S", "-m", "edgeseg.platform.install", "--root", str(JP5),
                           "--python", "/usr/bin/python3.11", "--dry-run"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("install: ") and done.stderr.count("\n") == 1


def test_make_install_runs_the_plan_and_the_doctor() -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    done = subprocess.run(["make", "-n", "install", "PREFIX=/opt/x"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "-m edgeseg.platform.install --prefix /opt/x" in done.stdout
    assert "/opt/x/venv/bin/edgeseg doctor" in done.stdout
