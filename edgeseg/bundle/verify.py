"""Integrity and compatibility: is this file the one the manifest describes, and can it run here?"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from edgeseg.bundle.device import DeviceInfo
from edgeseg.bundle.manifest import EngineRecord, Manifest

#: Read size when hashing; large enough that hashing a 100 MB engine is disk-bound.
_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_problem(bundle_dir: Path, name: str, sha256: str, size: int | None = None) -> str | None:
    """Why ``bundle_dir/name`` is not the file the manifest describes, or None if it is."""
    path = bundle_dir / name
    if Path(name).is_absolute() or ".." in Path(name).parts:
        return f"{name}: file names must stay inside the bundle"
    if not path.is_file():
        return f"{name}: missing"
    if size is not None and path.stat().st_size != size:
        return f"{name}: {path.stat().st_size} bytes, manifest says {size} (truncated or replaced)"
    actual = sha256_file(path)
    if actual != sha256:
        return f"{name}: sha256 {actual[:12]}... does not match the manifest's {sha256[:12]}... (modified)"
    return None


def integrity_problems(bundle_dir: str | Path, manifest: Manifest) -> list[str]:
    """Every file of the bundle that is missing, truncated or modified."""
    d = Path(bundle_dir)
    problems = [file_problem(d, e.file, e.sha256, e.bytes) for e in manifest.engines]
    problems += [file_problem(d, name, sha) for name, sha in manifest.extra_files.items()]
    return [p for p in problems if p]


def _same_version(built: str, here: str) -> bool:
    """TensorRT plans need the same major.minor.patch (and build, where both name one)."""
    a, b = built.split("."), here.split(".")
    n = min(len(a), len(b), 4)
    return len(a) >= 3 and len(b) >= 3 and a[:n] == b[:n]


def _sm(cc: Sequence[int]) -> str:
    return f"sm {cc[0]}{cc[1]}"


def incompatibility(engine: EngineRecord, device: DeviceInfo) -> str | None:
    """Why ``engine`` cannot run on ``device``, or None when it can.

    A TensorRT plan needs the TensorRT version and the GPU model that built it. The GPU model is
    decided on the compute capability, the SM count and the Jetson board, each compared only
    where both the record and the device know it (manifests written before SM counts and boards
    were recorded still load and are judged on the rest). Never on the name: the CUDA driver
    calls every Orin "Orin" and NVML "Orin (nvgpu)", whatever the module.
    """
    b = engine.builder
    if b.runtime == "onnxruntime":
        return None if device.onnxruntime else "ONNX Runtime is not installed"
    if b.runtime == "openvino":
        # An IR is portable across OpenVINO versions (a newer runtime reads older IRs) and devices.
        return None if device.openvino else "OpenVINO is not installed (pip install 'edgeseg[openvino]')"
    if device.tensorrt is None:
        return "TensorRT is not installed on this device"
    if not _same_version(b.version, device.tensorrt):
        return f"built with TensorRT {b.version}, this device has {device.tensorrt}"
    if device.compute_capability is None:
        return "no CUDA GPU found on this device (probed with pycuda, then NVML)"
    if b.compute_capability is not None and tuple(b.compute_capability) != tuple(device.compute_capability):
        return (f"built for {b.gpu or 'a GPU'} ({_sm(b.compute_capability)}), this device has "
                f"{device.gpu or 'a GPU'} ({_sm(device.compute_capability)})")
    if b.sm_count is not None and device.sm_count is not None and b.sm_count != device.sm_count:
        return f"built on a GPU with {b.sm_count} SMs, this device's has {device.sm_count} (another module)"
    if b.board is not None and device.board is not None and b.board != device.board:
        return f"built on {b.board!r}, this device is {device.board!r} (build on the module that runs it)"
    return None


def partition_engines(manifest: Manifest, device: DeviceInfo) -> tuple[list[EngineRecord], list[str]]:
    """The engines of ``manifest`` that can run on ``device``, and ``'file: why not'`` for the rest."""
    usable: list[EngineRecord] = []
    unusable: list[str] = []
    for e in manifest.engines:
        reason = incompatibility(e, device)
        if reason is None:
            usable.append(e)
        else:
            unusable.append(f"{e.file}: {reason}")
    return usable, unusable
