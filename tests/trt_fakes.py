"""In-process fakes of ``tensorrt`` and ``pycuda.driver`` for the TensorRT code's tests.

Shared by tests/test_trt_static.py (backend and builder bookkeeping) and
tests/test_engines_build.py (device builds into a bundle). They are strict where the real
libraries are (no current CUDA context, no call) and otherwise as small as the code under test
allows; they prove nothing about TensorRT's API itself (mypy against the stubs does that).
"""

from __future__ import annotations

import json
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeseg.backends import tensorrt as trt_backend
from edgeseg.backends import trt_build
from edgeseg.bundle.device import DeviceInfo


class FakeCuda:
    """pycuda.driver as far as edgeseg uses it, strict where pycuda is: no current context, no call."""

    class Error(Exception):
        pass

    def __init__(self) -> None:
        self.local = threading.local()
        self.memory: dict[int, np.ndarray] = {}
        self.next_ptr = 0x1000
        self.lock = threading.Lock()
        self.contexts: list[FakeCuda.Context] = []
        self.freed = 0
        outer = self

        class Context:
            def __init__(self) -> None:
                self.detached = False

            def push(self) -> None:
                outer.stack().append(self)

            @staticmethod
            def pop() -> None:
                if not outer.stack():
                    raise outer.Error("cannot pop non-current context")
                outer.stack().pop()

            def detach(self) -> None:
                self.detached = True

        class Device:
            def __init__(self, number: int) -> None:
                self.number = number

            def retain_primary_context(self) -> Context:
                ctx = Context()
                outer.contexts.append(ctx)
                return ctx

        class Stream:
            def __init__(self) -> None:
                outer.need_context("Stream")
                self.handle = id(self)

            def synchronize(self) -> None:
                outer.need_context("synchronize")

        class Allocation:
            def __init__(self, nbytes: int) -> None:
                with outer.lock:
                    self.ptr = outer.next_ptr
                    outer.next_ptr += nbytes + 256
                    outer.memory[self.ptr] = np.zeros(nbytes, np.uint8)

            def __int__(self) -> int:
                return self.ptr

            def free(self) -> None:
                outer.need_context("free")  # pycuda: "cannot activate out-of-thread context"
                with outer.lock:
                    del outer.memory[self.ptr]
                    outer.freed += 1

        class HostAllocation:
            def __init__(self, shape: tuple[int, ...], dtype: Any) -> None:
                self.buffer = np.zeros(shape, dtype)
                self.__array_interface__ = self.buffer.__array_interface__
                with outer.lock:
                    outer.hosts.append(self)
                self.freed = False

            def free(self) -> None:
                outer.need_context("host free")
                self.freed = True

        self.hosts: list[HostAllocation] = []
        self.Context, self.Device, self.Stream = Context, Device, Stream
        self.Allocation, self.HostAllocation = Allocation, HostAllocation

    def stack(self) -> list[Any]:
        if not hasattr(self.local, "stack"):
            self.local.stack = []
        stack: list[Any] = self.local.stack
        return stack

    def need_context(self, what: str) -> None:
        if not self.stack():
            raise self.Error(f"{what}: explicit_context_dependent failed: no currently active context?")

    def init(self) -> None:
        pass

    def mem_alloc(self, nbytes: int) -> Any:
        self.need_context("mem_alloc")
        return self.Allocation(nbytes)

    def pagelocked_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        self.need_context("pagelocked_empty")
        return np.asarray(self.HostAllocation(shape, dtype))

    def memcpy_htod_async(self, dest: Any, src: np.ndarray, stream: Any) -> None:
        self.need_context("memcpy_htod_async")
        self.memory[int(dest)][: src.nbytes] = src.reshape(-1).view(np.uint8)

    def memcpy_dtoh_async(self, dest: np.ndarray, src: Any, stream: Any) -> None:
        self.need_context("memcpy_dtoh_async")
        dest.reshape(-1).view(np.uint8)[:] = self.memory[int(src)][: dest.nbytes]


class FakeTrt(types.ModuleType):
    """tensorrt's runtime API (name-based, 8.5+); an "engine file" is JSON naming its tensors.

    Outputs: ``pred`` (1, 6, H*W/64) and ``proto`` (1, 2, H/4, W/4), every element equal to the
    input's mean, so results can be checked per call.
    """

    def __init__(self, version: str, cuda: FakeCuda) -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        self.cuda = cuda
        self.exec_contexts: list[Any] = []
        self.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda s, level=2: None})
        self.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
        fake = self

        class Context:
            def __init__(self, engine: Engine) -> None:
                cuda.need_context("create_execution_context")
                self.engine, self.shapes, self.addresses, self.busy = engine, {}, {}, 0
                self.profile = 0
                fake.exec_contexts.append(self)

            def set_optimization_profile_async(self, index: int, stream: int) -> bool:
                self.profile = index
                return True

            def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
                self.shapes[name] = tuple(shape)
                return True

            def get_tensor_shape(self, name: str) -> list[int]:
                h, w = self.shapes.get("images", self.engine.shapes["images"])[2:]
                if h < 0:
                    return list(self.engine.shapes[name])
                return [1, 6, h * w // 64] if name == "pred" else [1, 2, h // 4, w // 4]

            def set_tensor_address(self, name: str, ptr: int) -> bool:
                self.addresses[name] = ptr
                return True

            def execute_async_v3(self, stream: int) -> bool:
                cuda.need_context("execute_async_v3")
                self.busy += 1
                assert self.busy == 1, "one execution context used by two threads at once"
                time.sleep(0.002)
                x = cuda.memory[self.addresses["images"]].view(np.float32)
                for name in ("pred", "proto"):
                    cuda.memory[self.addresses[name]].view(np.float32)[:] = x.mean()
                self.busy -= 1
                return True

        class Engine:
            def __init__(self, doc: dict[str, Any]) -> None:
                self.shapes = {k: tuple(v) for k, v in doc["shapes"].items()}
                self.names = list(self.shapes)
                self.num_io_tensors = len(self.names)
                self.num_optimization_profiles = doc.get("profiles", 1)
                self.profile = doc.get("profile")

            def get_tensor_name(self, i: int) -> str:
                return self.names[i]

            def get_tensor_mode(self, name: str) -> str:
                return "INPUT" if name == "images" else "OUTPUT"

            def get_tensor_shape(self, name: str) -> list[int]:
                return list(self.shapes[name])

            def get_tensor_dtype(self, name: str) -> Any:
                return types.SimpleNamespace(name="FLOAT")

            def get_tensor_profile_shape(self, name: str, index: int) -> list[list[int]]:
                return [list(s) for s in self.profile]

            def create_execution_context(self) -> Context:
                return fake.Context(self)

        class Runtime:
            def __init__(self, logger: Any) -> None:
                pass

            def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
                cuda.need_context("deserialize_cuda_engine")
                return None if data == b"other-version" else Engine(json.loads(data))

        #: The execution context class engines create (a subclass of the fake may put its own).
        self.Context: Any = Context
        self.Runtime = Runtime



def read_fake_onnx(path: Path) -> dict[str, Any]:
    """What the fake parser "parses": a JSON document, or a real ONNX file seen as one.

    A real ONNX file (engines/demo's) parses as a static FP32 network, or as a Q/DQ network
    when its protobuf names QuantizeLinear nodes: enough for device builds of a real bundle.
    """
    data = path.read_bytes()
    try:
        doc: dict[str, Any] = json.loads(data)
        return doc
    except (UnicodeDecodeError, json.JSONDecodeError):
        return QDQ_ONNX if b"QuantizeLinear" in data else FP32_ONNX


class FakeBuilderTrt(types.ModuleType):
    """tensorrt's builder API; an "ONNX file" is JSON (inputs, layer types, output types) or a
    real ONNX file (``read_fake_onnx``)."""

    def __init__(self, version: str) -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        self.calls: list[tuple[Any, ...]] = []
        self.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda s, level=2: None})
        major = int(version.split(".")[0])
        flags = {"STRONGLY_TYPED": 1} if major >= 11 else {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(**flags)  # 11.x has no EXPLICIT_BATCH
        self.BuilderFlag = types.SimpleNamespace(**({} if major >= 11 else {"FP16": "FP16", "INT8": "INT8"}))
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
        self.Dims = tuple
        calls = self.calls
        named = types.SimpleNamespace

        class Network:
            def __init__(self, flags: int) -> None:
                calls.append(("create_network", flags))
                self.doc: dict[str, Any] = {}

            @property
            def num_layers(self) -> int:
                return len(self.doc["layers"])

            def get_layer(self, i: int) -> Any:
                out = named(dtype=named(name=self.doc["types"][i]))
                return named(type=named(name=self.doc["layers"][i]), num_outputs=1, get_output=lambda j: out)

            @property
            def num_inputs(self) -> int:
                return 1

            def get_input(self, i: int) -> Any:
                return named(name="images", shape=self.doc["input"], dtype=named(name="FLOAT"))

        class Parser:
            def __init__(self, network: Network, logger: Any) -> None:
                self.network = network
                self.errors: list[Any] = []

            def parse_from_file(self, path: str) -> bool:
                doc = read_fake_onnx(Path(path))
                if "error" in doc:
                    self.errors = [named(node=lambda: 3, desc=lambda: doc["error"])] * 2
                    return False
                self.network.doc = doc
                return True

            @property
            def num_errors(self) -> int:
                return len(self.errors)

            def get_error(self, i: int) -> Any:
                return self.errors[i]

        class Config:
            def set_memory_pool_limit(self, pool: str, size: int) -> None:
                calls.append(("pool", pool, size))

            def set_flag(self, flag: str) -> None:
                calls.append(("flag", flag))

            def add_optimization_profile(self, profile: Any) -> int:
                calls.append(("profile", dict(profile.shapes)))
                return 0

            def create_timing_cache(self, data: bytes) -> bytes:
                return data

            def set_timing_cache(self, cache: bytes, ignore_mismatch: bool) -> bool:
                calls.append(("timing_cache", cache))
                return cache != b"stale"

            def get_timing_cache(self) -> Any:
                return named(serialize=lambda: b"timings")

        class Profile:
            def __init__(self) -> None:
                self.shapes: dict[str, Any] = {}

            def set_shape(self, name: str, low: Any, opt: Any, high: Any) -> None:
                self.shapes[name] = (low, opt, high)

        class Builder:
            def __init__(self, logger: Any) -> None:
                pass

            def create_network(self, flags: int) -> Network:
                self.network = Network(flags)
                return self.network

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: Network, config: Config) -> np.ndarray | None:
                return None if network.doc.get("fail") else np.frombuffer(b"PLAN", np.uint8)  # buffer + nbytes

        self.Builder, self.OnnxParser = Builder, Parser


FP32_ONNX = {"input": [1, 3, 64, 64], "layers": ["CONVOLUTION"], "types": ["FLOAT"]}
QDQ_ONNX = {"input": [1, 3, 64, 64], "layers": ["QUANTIZE", "DEQUANTIZE", "CONVOLUTION"], "types": ["INT8"] * 3}
FP16_ONNX = {"input": [1, 3, 64, 64], "layers": ["CAST", "CONVOLUTION"], "types": ["HALF", "HALF"]}
DYNAMIC_ONNX = {**FP32_ONNX, "input": [-1, 3, -1, -1]}
GPU = DeviceInfo(tensorrt=None, gpu="Orin", compute_capability=(8, 7), gpu_source="pycuda")


def install_runtime(monkeypatch: pytest.MonkeyPatch, trt: FakeTrt) -> None:
    """Make ``import tensorrt`` give ``trt`` and ``import pycuda.driver`` its FakeCuda."""
    package = types.ModuleType("pycuda")
    package.driver = trt.cuda  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", trt.cuda)  # type: ignore[arg-type]
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    trt_backend.trt_logger.cache_clear()


def install_builder(monkeypatch: pytest.MonkeyPatch, version: str, gpu: DeviceInfo = GPU) -> FakeBuilderTrt:
    """Make ``import tensorrt`` give a FakeBuilderTrt of ``version`` and the builder see ``gpu``."""
    trt = FakeBuilderTrt(version)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_build, "probe_device", lambda: gpu)
    trt_backend.trt_logger.cache_clear()
    return trt
