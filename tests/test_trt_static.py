"""The TensorRT code without TensorRT: mypy against NVIDIA's stubs, the absent-TensorRT paths, and
the backend's and builder's bookkeeping run against in-process fakes of tensorrt and pycuda.

No real GPU test lives here: TensorRT and pycuda cannot be installed on CI machines. The fakes do
not prove the TensorRT API (mypy against the stubs does that, as far as stubs can); they check
what is ours: CUDA context push/pop on every thread, slot limits, copies, frees, flags, files.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from trt_fakes import (
    DYNAMIC_ONNX,
    FP16_ONNX,
    FP32_ONNX,
    GPU,
    QDQ_ONNX,
    FakeBuilderTrt,
    FakeCuda,
    FakeTrt,
    install_builder,
    install_runtime,
)

from edgeseg.backends import tensorrt as trt_backend
from edgeseg.backends.tensorrt import TensorRTBackend, tensorrt_version
from edgeseg.backends.trt_build import build_engine, tensorrt_available
from edgeseg.bundle.device import DeviceInfo
from edgeseg.durable import write_atomically
from edgeseg.errors import BundleError, ExportError, ModelError

ROOT = Path(__file__).resolve().parents[1]
TYPINGS = ROOT / "typings"
CHECKED = ["edgeseg/backends/tensorrt.py", "edgeseg/backends/trt_plan.py", "edgeseg/backends/trt_build.py"]

# Deliberate misuses that mypy must flag: proof that the stubs are really on mypy_path (with
# ignore_missing_imports a missing stub would make tensorrt Any and everything would "pass").
MISUSE = '''
import pycuda.driver as cuda
import tensorrt as trt

def misuse(engine: trt.ICudaEngine, stream: cuda.Stream) -> None:
    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    builder.build_enginee(builder.create_network(0), builder.create_builder_config())
    engine.num_bindings  # 8.5-only, gone in 10: must go through getattr/hasattr
    engine.create_execution_context().execute_async_v3(stream)
    cuda.memcpy_htod_async(cuda.pagelocked_empty((1,), "f4"), cuda.mem_alloc(4), stream)
'''
MISUSE_ERRORS = [
    ('"Builder" has no attribute "build_enginee"', 7),
    ('"ICudaEngine" has no attribute "num_bindings"', 8),
    ('"execute_async_v3" of "IExecutionContext" has incompatible type "Stream"; expected "int"', 9),
    ('Argument 1 to "memcpy_htod_async" has incompatible type', 10),
]


#: The static check runs in the development environment (mypy 2.x parses the TensorRT stubs, whose
#: syntax older mypy releases reject); the Python 3.8/3.10 compatibility runs check the runtime.
MYPY_MIN_PYTHON = (3, 11)


@pytest.fixture(scope="module")
def mypy_output(tmp_path_factory: pytest.TempPathFactory) -> str:
    if sys.version_info < MYPY_MIN_PYTHON:
        pytest.skip(f"mypy against the TensorRT stubs runs on Python {MYPY_MIN_PYTHON[0]}.{MYPY_MIN_PYTHON[1]}+ "
                    "(the development environment)")
    if not (TYPINGS / "tensorrt" / "__init__.pyi").is_file():
        pytest.skip("typings/ missing: run `make typings` to unpack the TensorRT stubs mypy checks against")
    tmp = tmp_path_factory.mktemp("mypy")
    misuse = tmp / "trt_misuse.py"
    misuse.write_text(MISUSE, encoding="utf-8")
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir",
           str(tmp / "cache"), "--no-error-summary", "--show-error-codes", *CHECKED, str(misuse)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    return done.stdout + done.stderr


def test_mypy_passes_on_the_tensorrt_code(mypy_output: str) -> None:
    ours = [line for line in mypy_output.splitlines() if "trt_misuse.py" not in line and line.strip()]
    assert ours == [], "\n".join(ours)


@pytest.mark.parametrize(("message", "line"), MISUSE_ERRORS)
def test_mypy_catches_misuse_of_tensorrt_and_pycuda(mypy_output: str, message: str, line: int) -> None:
    hits = [e for e in mypy_output.splitlines() if f"trt_misuse.py:{line}:" in e and message in e]
    assert hits, f"mypy did not flag line {line} ({message}); output:\n{mypy_output}"


# --- where TensorRT is absent ----------------------------------------------------------------

needs_no_tensorrt = pytest.mark.skipif(tensorrt_version() is not None, reason="TensorRT is installed here")


@needs_no_tensorrt
def test_tensorrt_is_absent_here() -> None:
    assert tensorrt_available() is False


@needs_no_tensorrt
def test_build_engine_reports_missing_tensorrt(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="TensorRT is not installed") as err:
        build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", "fp16")
    assert "\n" not in str(err.value)


@needs_no_tensorrt
def test_backend_reports_missing_tensorrt_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="TensorRT is not installed") as err:
        TensorRTBackend(tmp_path / "m.engine", resolution=(640, 640))
    assert "\n" not in str(err.value) and not isinstance(err.value, ImportError)


def test_a_stub_only_tensorrt_package_counts_as_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))  # what tensorrt-stubs leaves
    assert tensorrt_version() is None and tensorrt_available() is False


def test_write_atomically_replaces_whole_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "m.engine"
    write_atomically(target, b"old")
    write_atomically(target, memoryview(b"new plan"))
    assert target.read_bytes() == b"new plan"
    assert [p.name for p in target.parent.iterdir()] == ["m.engine"]


# --- the backend against fakes ------------------------------------------------------------------

STATIC_ENGINE = {"shapes": {"images": [1, 3, 64, 64], "pred": [1, 6, 64], "proto": [1, 2, 16, 16]}}
DYNAMIC_ENGINE = {
    "shapes": {"images": [-1, 3, -1, -1], "pred": [-1, 6, -1], "proto": [-1, 2, -1, -1]},
    "profile": [[1, 3, 32, 32], [1, 3, 64, 64], [1, 3, 128, 128]],
}


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeTrt, FakeCuda]]:
    cuda = FakeCuda()
    trt = FakeTrt("10.3.0", cuda)
    install_runtime(monkeypatch, trt)
    yield trt, cuda
    trt_backend.trt_logger.cache_clear()
    assert cuda.stack() == [], "a CUDA context was left pushed on the test thread"


def _engine(tmp_path: Path, doc: dict[str, Any] | bytes) -> Path:
    path = tmp_path / "m.engine"
    path.write_bytes(doc if isinstance(doc, bytes) else json.dumps(doc).encode())
    return path


def _frame(value: float, size: int = 64) -> np.ndarray:
    return np.full((1, 3, size, size), value, np.float32)


def test_fake_backend_describes_and_runs_a_static_engine(fakes: tuple[FakeTrt, FakeCuda], tmp_path: Path) -> None:
    trt, cuda = fakes
    with TensorRTBackend(_engine(tmp_path, STATIC_ENGINE), metadata={"names": "[]"}) as backend:
        info = backend.info
        assert info.provider == "TensorRT 10.3.0" and info.metadata == {"names": "[]"}
        assert [(t.name, t.shape, t.dtype) for t in info.inputs] == [("images", (1, 3, 64, 64), "float32")]
        assert [t.shape for t in info.outputs] == [(1, 6, 64), (1, 2, 16, 16)]
        first = backend.infer(_frame(1.0))
        second = backend.infer(_frame(2.0))
        assert [o.shape for o in first] == [(1, 6, 64), (1, 2, 16, 16)]
        assert all(o.dtype == np.float32 for o in first)
        assert all((o == 1.0).all() for o in first), "outputs must be copies, not views of reused buffers"
        assert all((o == 2.0).all() for o in second)
        with pytest.raises(ModelError, match="input shape"):
            backend.infer(_frame(1.0, size=32))
    assert len(trt.exec_contexts) == 1
    assert cuda.memory == {} and all(h.freed for h in cuda.hosts)
    assert cuda.contexts[0].detached


def test_fake_backend_runs_threads_on_at_most_contexts_slots(
    fakes: tuple[FakeTrt, FakeCuda], tmp_path: Path
) -> None:
    trt, cuda = fakes
    backend = TensorRTBackend(_engine(tmp_path, STATIC_ENGINE), contexts=2)
    errors: list[BaseException] = []
    stacks: list[int] = []

    def worker(k: int) -> None:
        try:
            for i in range(5):
                value = float(10 * k + i)
                out = backend.infer(_frame(value))
                assert all((o == value).all() for o in out)
            stacks.append(len(cuda.stack()))
        except BaseException as exc:  # collected and re-raised by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert stacks == [0, 0, 0, 0], "every thread pops what it pushed"
    assert len(trt.exec_contexts) == 2
    done = threading.Thread(target=backend.close)  # closed from a thread other than the creator's
    done.start()
    done.join()
    assert cuda.memory == {} and all(h.freed for h in cuda.hosts)
    backend.close()
    with pytest.raises(ModelError, match="after close"):
        backend.infer(_frame(1.0))


def test_fake_backend_sizes_a_dynamic_engine_from_the_resolution(
    fakes: tuple[FakeTrt, FakeCuda], tmp_path: Path
) -> None:
    trt, _ = fakes
    with TensorRTBackend(_engine(tmp_path, DYNAMIC_ENGINE), resolution=(32, 64)) as backend:
        assert backend.info.inputs[0].shape == (1, 3, 32, 64)
        assert [t.shape for t in backend.info.outputs] == [(1, 6, 32), (1, 2, 8, 16)]
        assert trt.exec_contexts[0].shapes == {"images": (1, 3, 32, 64)}
        assert all((o == 3.0).all() for o in backend.infer(np.full((1, 3, 32, 64), 3.0, np.float32)))


def test_fake_backend_gives_8_6_dynamic_engines_one_context_per_profile(
    fakes: tuple[FakeTrt, FakeCuda], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trt, _ = fakes
    trt.__version__ = "8.6.2"
    with TensorRTBackend(_engine(tmp_path, {**DYNAMIC_ENGINE, "profiles": 1}), resolution=(64, 64)) as backend:
        assert backend._max_slots == 1
    assert "1 context(s), not 2" in caplog.text


@pytest.mark.parametrize(
    ("version", "doc", "resolution", "error", "match"),
    [
        ("10.3.0", b"other-version", None, BundleError, "another TensorRT version or for another GPU architecture"),
        ("8.4.3", STATIC_ENGINE, None, BundleError, r"older than 8\.5"),
        ("10.3.0", DYNAMIC_ENGINE, None, None, None),  # no resolution: the profile's opt shape
        ("10.3.0", DYNAMIC_ENGINE, (256, 256), BundleError, "outside the engine's profile"),
        ("10.3.0", STATIC_ENGINE, (32, 32), BundleError, r"'images' is fixed at \(1, 3, 64, 64\)"),
    ],
)
def test_fake_backend_load_errors_are_one_line(
    fakes: tuple[FakeTrt, FakeCuda],
    tmp_path: Path,
    version: str,
    doc: Any,
    resolution: tuple[int, int] | None,
    error: type[Exception] | None,
    match: str | None,
) -> None:
    trt, cuda = fakes
    trt.__version__ = version
    path = _engine(tmp_path, doc)
    if error is None:
        with TensorRTBackend(path, resolution=resolution) as backend:
            assert backend.info.inputs[0].shape == (1, 3, 64, 64)
        return
    with pytest.raises(error, match=match) as err:
        TensorRTBackend(path, resolution=resolution)
    assert "\n" not in str(err.value)
    assert cuda.memory == {}
    assert all(c.detached for c in cuda.contexts)


# --- the builder against a fake ----------------------------------------------------------------


def _builder(monkeypatch: pytest.MonkeyPatch, version: str, gpu: DeviceInfo = GPU) -> FakeBuilderTrt:
    return install_builder(monkeypatch, version, gpu)


def _onnx(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / "m.onnx"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    ("version", "precision", "onnx", "network_flags", "builder_flags"),
    [
        ("8.5.2.2", "fp16", FP32_ONNX, 1 << 0, ["FP16"]),
        ("8.6.2", "int8", QDQ_ONNX, 1 << 0, ["INT8"]),
        ("10.3.0", "fp32", FP32_ONNX, 0, []),
        ("10.3.0", "int8", QDQ_ONNX, 0, ["INT8"]),
        ("10.13.0.35", "int8", QDQ_ONNX, 1 << 1, []),
        ("11.1.0", "fp16", FP16_ONNX, 0, []),
        ("11.1.0", "int8", QDQ_ONNX, 0, []),
    ],
)
def test_fake_build_sets_the_decided_flags(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    version: str,
    precision: Any,
    onnx: dict[str, Any],
    network_flags: int,
    builder_flags: list[str],
) -> None:
    trt = _builder(monkeypatch, version)
    engine, cache = tmp_path / "out" / "m.engine", tmp_path / "timing.cache"
    record = build_engine(_onnx(tmp_path, onnx), engine, precision, workspace_mib=512, timing_cache=cache)
    assert ("create_network", network_flags) in trt.calls
    assert [c[1] for c in trt.calls if c[0] == "flag"] == builder_flags
    assert ("pool", "WORKSPACE", 512 << 20) in trt.calls
    assert not [c for c in trt.calls if c[0] == "profile"], "a static ONNX needs no profile"
    assert engine.read_bytes() == b"PLAN" and cache.read_bytes() == b"timings"
    assert sorted(p.name for p in engine.parent.iterdir()) == ["m.engine"]
    assert record.model_dump() == {"runtime": "tensorrt", "version": version, "gpu": "Orin",
                                   "compute_capability": (8, 7)}


@pytest.mark.parametrize(("version", "profiles"), [("8.6.2", 2), ("10.3.0", 1)])
def test_fake_build_adds_static_profiles_for_a_dynamic_input(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, version: str, profiles: int
) -> None:
    trt = _builder(monkeypatch, version)
    build_engine(_onnx(tmp_path, DYNAMIC_ONNX), tmp_path / "m.engine", "fp16", resolution=(320, 320))
    shape = (1, 3, 320, 320)
    assert [c for c in trt.calls if c[0] == "profile"] == [("profile", {"images": (shape, shape, shape)})] * profiles


def test_fake_build_starts_a_fresh_timing_cache_when_the_old_one_mismatches(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    trt = _builder(monkeypatch, "10.3.0")
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"stale")
    build_engine(_onnx(tmp_path, FP32_ONNX), tmp_path / "m.engine", "fp32", timing_cache=cache)
    assert [c[1] for c in trt.calls if c[0] == "timing_cache"] == [b"stale", b""]
    assert cache.read_bytes() == b"timings"


@pytest.mark.parametrize(
    ("version", "precision", "onnx", "kwargs", "match"),
    [
        ("10.3.0", "fp16", {"error": "Unsupported ONNX op\nGridSample"}, {},
         r"cannot parse it: node 3: Unsupported ONNX op GridSample \(and 1 more\)"),
        ("10.3.0", "fp16", {**FP32_ONNX, "fail": True}, {}, "could not build a fp16 engine"),
        ("10.3.0", "int8", FP32_ONNX, {}, "needs a Q/DQ ONNX"),
        ("11.1.0", "fp16", FP32_ONNX, {}, r"no BuilderFlag\.FP16"),
        ("10.3.0", "fp16", DYNAMIC_ONNX, {}, "'images' has dynamic shape"),
        ("10.3.0", "bf16", FP32_ONNX, {}, "precision 'bf16'"),
        ("8.4.3", "fp16", FP32_ONNX, {}, r"older than 8\.5"),
        ("10.3.0", "fp16", FP32_ONNX, {"workspace_mib": 0}, "workspace 0 MiB"),
    ],
)
def test_fake_build_errors_are_one_line(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    version: str,
    precision: Any,
    onnx: dict[str, Any],
    kwargs: dict[str, Any],
    match: str,
) -> None:
    _builder(monkeypatch, version)
    engine = tmp_path / "m.engine"
    with pytest.raises(ExportError, match=match) as err:
        build_engine(_onnx(tmp_path, onnx), engine, precision, **kwargs)
    assert "\n" not in str(err.value)
    assert not engine.exists()


def test_fake_build_needs_to_know_the_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _builder(monkeypatch, "10.3.0", gpu=DeviceInfo())
    with pytest.raises(ExportError, match="no CUDA GPU identified"):
        build_engine(_onnx(tmp_path, FP32_ONNX), tmp_path / "m.engine", "fp32")
