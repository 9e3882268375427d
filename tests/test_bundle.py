"""Engine bundles: manifest validation, integrity, compatibility and engine choice."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from edgeseg.bundle.device import DeviceInfo, builder_record
from edgeseg.bundle.manifest import (
    BuilderRecord,
    EngineRecord,
    LatencyRecord,
    Manifest,
    ModelRecord,
    load_manifest,
    parse_manifest,
)
from edgeseg.bundle.select import select_engine
from edgeseg.bundle.verify import incompatibility, integrity_problems, sha256_file
from edgeseg.errors import BundleError

ORT = BuilderRecord(runtime="onnxruntime", version="1.31.1")
TRT_ORIN = BuilderRecord(runtime="tensorrt", version="10.3.0.30", gpu="Orin", compute_capability=(8, 7))
HERE_CPU = DeviceInfo(onnxruntime="1.31.1")
ORIN = DeviceInfo(tensorrt="10.3.0.30", onnxruntime="1.18.0", gpu="Orin", compute_capability=(8, 7))


def engine(file: str, size: int, precision: str, builder: BuilderRecord = ORT, latency: float | None = None,
           **kw: object) -> EngineRecord:
    lat = LatencyRecord(median_ms=latency, p90_ms=latency, device="x") if latency is not None else None
    return EngineRecord(file=file, sha256="a" * 64, bytes=1, resolution=(size, size), precision=precision,
                        builder=builder, latency=lat, **kw)  # type: ignore[arg-type]


def manifest(*engines: EngineRecord) -> Manifest:
    return Manifest(name="b", model=ModelRecord(family="yolov8-seg", class_names=["a", "b"], num_masks=32),
                    engines=list(engines))


#: GPU identities of the Orin modules (docs/jetson.md): every one is compute capability 8.7 and
#: "Orin" to the CUDA driver ("Orin (nvgpu)" to NVML); SM count = CUDA cores / 128 per Ampere SM
#: (AGX Orin 64 GB 2048 cores: 16; Orin NX and Orin Nano 8 GB 1024: 8; Orin Nano 4 GB 512: 4).
AGX = "NVIDIA Jetson AGX Orin Developer Kit"
NX = "NVIDIA Jetson Orin NX Engineering Reference Developer Kit"
NANO = "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit"
TRT_AGX = BuilderRecord(runtime="tensorrt", version="10.3.0.30", gpu="Orin", compute_capability=(8, 7),
                        sm_count=16, board=AGX)
TRT_NX = BuilderRecord(runtime="tensorrt", version="10.3.0.30", gpu="Orin", compute_capability=(8, 7),
                       sm_count=8, board=NX)
TRT_NANO_8GB = BuilderRecord(runtime="tensorrt", version="10.3.0.30", gpu="Orin", compute_capability=(8, 7),
                             sm_count=8, board=NANO)


def orin(sm_count: int | None, board: str | None, gpu: str = "Orin", source: str = "pycuda") -> DeviceInfo:
    return DeviceInfo(tensorrt="10.3.0.30", onnxruntime="1.18.0", gpu=gpu, compute_capability=(8, 7),
                      gpu_source=source, sm_count=sm_count, board=board)


@pytest.mark.parametrize(
    "builder, device, expected",
    [
        (ORT, HERE_CPU, None),
        (ORT, DeviceInfo(), "ONNX Runtime is not installed"),
        (TRT_ORIN, HERE_CPU, "TensorRT is not installed on this device"),
        (TRT_ORIN, ORIN, None),
        (TRT_ORIN, DeviceInfo(tensorrt="10.3.0", onnxruntime="1", gpu="Orin", compute_capability=(8, 7)), None),
        (TRT_ORIN, DeviceInfo(tensorrt="8.5.2.2", gpu="Orin", compute_capability=(8, 7)),
         "built with TensorRT 10.3.0.30, this device has 8.5.2.2"),
        (TRT_ORIN, DeviceInfo(tensorrt="10.4.0.1", gpu="Orin", compute_capability=(8, 7)), "this device has 10.4.0.1"),
        (TRT_ORIN, DeviceInfo(tensorrt="10.3.0.30", gpu="Xavier", compute_capability=(7, 2)),
         "built for Orin (sm 87), this device has Xavier (sm 72)"),
        (TRT_ORIN, DeviceInfo(tensorrt="10.3.0.30"), "no CUDA GPU found"),
        # the name never decides: pycuda's "Orin" and NVML's "Orin (nvgpu)" are the same GPU
        (TRT_AGX, orin(None, AGX, gpu="Orin (nvgpu)", source="nvml"), None),
        (TRT_AGX.model_copy(update={"gpu": "Orin (nvgpu)"}), orin(16, AGX), None),
        (TRT_AGX, orin(16, AGX, gpu="NVIDIA Orin"), None),
        # another Orin module: the SM count tells it apart
        (TRT_AGX, orin(8, NX), "built on a GPU with 16 SMs, this device's has 8"),
        (TRT_NANO_8GB, orin(4, NANO), "built on a GPU with 8 SMs, this device's has 4"),
        # same SM count, another board (Orin NX vs Orin Nano 8 GB): the board tells it apart
        (TRT_NX, orin(8, NANO), f"built on {NX!r}, this device is {NANO!r}"),
        (TRT_NX, orin(8, NX), None),
        # a side that does not record a fact is not judged on it
        (TRT_NX, orin(None, None), None),
        (TRT_NX, orin(8, None), None),
        # manifests from before SM counts and boards were recorded: compute capability and version decide
        (TRT_ORIN, orin(16, AGX), None),
        (TRT_ORIN, orin(4, NANO, gpu="Orin (nvgpu)"), None),
        (BuilderRecord(runtime="tensorrt", version="10.3.0.30"), orin(8, NANO), None),
        (TRT_ORIN, DeviceInfo(tensorrt="10.3.0.30", gpu="NVIDIA RTX A2000", compute_capability=(8, 6)),
         "built for Orin (sm 87), this device has NVIDIA RTX A2000 (sm 86)"),
    ],
)
def test_incompatibility(builder: BuilderRecord, device: DeviceInfo, expected: str | None) -> None:
    reason = incompatibility(engine("e", 640, "fp16", builder), device)
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and expected in reason


@pytest.mark.parametrize(
    "builder, keys",
    [
        ({"runtime": "tensorrt", "version": "8.5.2.2", "gpu": "Orin", "compute_capability": [8, 7]},
         ["runtime", "version", "gpu", "compute_capability"]),
        ({"runtime": "tensorrt", "version": "8.5.2.2", "compute_capability": [8, 7], "sm_count": 16, "board": AGX},
         ["runtime", "version", "gpu", "compute_capability", "sm_count", "board"]),
        ({"runtime": "onnxruntime", "version": "1.19.2"}, ["runtime", "version", "gpu", "compute_capability"]),
    ],
)
def test_builder_record_old_and_new_manifests(builder: dict[str, object], keys: list[str]) -> None:
    """Manifests without sm_count/board load; unknown ones stay out of the JSON (older runtimes refuse extra keys)."""
    doc = json.loads(manifest(engine("e.engine", 640, "fp16", ORT)).to_json())
    doc["engines"][0]["builder"] = builder
    loaded = parse_manifest(json.dumps(doc), "m.json")
    assert list(json.loads(loaded.to_json())["engines"][0]["builder"]) == keys
    assert parse_manifest(loaded.to_json(), "again") == loaded


@pytest.mark.parametrize("bad, field", [({"sm_count": 0}, "sm_count"), ({"board": ""}, "board")])
def test_builder_record_refuses_bad_identity(bad: dict[str, object], field: str) -> None:
    doc = json.loads(manifest(engine("e.engine", 640, "fp16", TRT_AGX)).to_json())
    doc["engines"][0]["builder"].update(bad)
    with pytest.raises(BundleError, match=field):
        parse_manifest(json.dumps(doc), "m.json")


def test_builder_record_from_device() -> None:
    device = orin(8, NANO)
    record = builder_record(device, "10.3.0.30")
    assert record == TRT_NANO_8GB
    assert incompatibility(engine("e", 640, "fp16", record), device) is None


BUNDLE = manifest(
    engine("a-320-fp32.onnx", 320, "fp32", latency=20),
    engine("a-320-int8.onnx", 320, "int8", latency=12, quantization="qoperator"),
    engine("a-320-qdq.onnx", 320, "int8", latency=40, quantization="qdq-symmetric"),
    engine("a-640-fp32.onnx", 640, "fp32", latency=70),
    engine("a-640-int8.onnx", 640, "int8", latency=46, quantization="qoperator"),
    engine("a-640-fp16.engine", 640, "fp16", TRT_ORIN, latency=8),
    engine("a-640-int8.engine", 640, "int8", TRT_ORIN, latency=5),
)


@pytest.mark.parametrize(
    "device, resolution, precision, expected, raises",
    [
        (HERE_CPU, None, "auto", "a-640-int8.onnx", None),          # largest size, fastest there
        (HERE_CPU, 320, "auto", "a-320-int8.onnx", None),
        (HERE_CPU, 320, "fp32", "a-320-fp32.onnx", None),
        (HERE_CPU, 320, "int8", "a-320-int8.onnx", None),            # QOperator beats Q/DQ on the CPU
        (ORIN, 640, "auto", "a-640-int8.engine", None),              # TensorRT first where it runs
        (ORIN, 640, "fp16", "a-640-fp16.engine", None),
        (HERE_CPU, 512, "auto", None, "no engine for resolution 512; available [320, 640]"),
        (HERE_CPU, 640, "fp16", None, "no fp16 engine at 640"),
        (DeviceInfo(), None, "auto", None, "no engine can run on this device"),
    ],
)
def test_select_engine(device: DeviceInfo, resolution: int | None, precision: str, expected: str | None,
                       raises: str | None) -> None:
    if raises:
        with pytest.raises(BundleError, match=re.escape(raises)):
            select_engine(BUNDLE, device, resolution, precision)  # type: ignore[arg-type]
    else:
        assert select_engine(BUNDLE, device, resolution, precision).file == expected  # type: ignore[arg-type]


def test_refusals_are_named() -> None:
    only_trt = manifest(engine("x.engine", 640, "fp16", TRT_ORIN))
    with pytest.raises(BundleError, match="x.engine: TensorRT is not installed on this device"):
        select_engine(only_trt, HERE_CPU)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("{not json", "not valid JSON (line 1"),
        ("[]", "Input should be a valid dictionary"),
        ('{"name": "b", "model": {"family": "yolov8-seg", "class_names": ["a"], "num_masks": 32}, "engines": []}',
         "field 'engines'"),
        ('{"name": "b", "model": {"family": "mask-rcnn", "class_names": ["a"], "num_masks": 32}, "engines": []}',
         "field 'model.family'"),
        ('{"name": "b", "colour": 1}', "field 'colour': unknown key"),
    ],
)
def test_bad_manifests_are_one_line(text: str, expected: str) -> None:
    with pytest.raises(BundleError) as info:
        parse_manifest(text, "engines/b/manifest.json")
    assert expected in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith("engines/b/manifest.json: ")


def test_manifest_round_trip(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(BUNDLE.to_json())
    assert load_manifest(tmp_path) == BUNDLE
    with pytest.raises(BundleError, match="not an engine bundle"):
        load_manifest(tmp_path / "missing")


def _real_bundle(tmp_path: Path) -> tuple[Path, Manifest]:
    d = tmp_path / "bundle"
    d.mkdir()
    (d / "e.onnx").write_bytes(b"engine bytes" * 100)
    rec = EngineRecord(file="e.onnx", sha256=sha256_file(d / "e.onnx"), bytes=1200, resolution=(320, 320),
                       precision="fp32", builder=ORT)
    m = manifest(rec)
    (d / "manifest.json").write_text(m.to_json())
    return d, m


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda d: None, None),
        (lambda d: (d / "e.onnx").write_bytes(b"engine bytes" * 50), "600 bytes, manifest says 1200"),
        (lambda d: (d / "e.onnx").write_bytes(b"ENGINE bytes" + b"engine bytes" * 99), "does not match"),
        (lambda d: (d / "e.onnx").unlink(), "e.onnx: missing"),
    ],
)
def test_integrity(tmp_path: Path, damage, expected: str | None) -> None:
    d, m = _real_bundle(tmp_path)
    damage(d)
    problems = integrity_problems(d, m)
    if expected is None:
        assert problems == []
    else:
        assert len(problems) == 1 and expected in problems[0]


def test_file_names_cannot_escape_the_bundle(tmp_path: Path) -> None:
    d, m = _real_bundle(tmp_path)
    bad = m.model_copy(update={"engines": [m.engines[0].model_copy(update={"file": "../e.onnx"})]})
    assert "must stay inside the bundle" in integrity_problems(d, bad)[0]


def test_manifest_json_is_plain(tmp_path: Path) -> None:
    doc = json.loads(BUNDLE.to_json())
    assert doc["format"] == "edgeseg-bundle" and doc["version"] == 1
    assert doc["engines"][5]["builder"]["compute_capability"] == [8, 7]
