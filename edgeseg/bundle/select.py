"""Which engine of a bundle to run: compatible first, then resolution, then precision or speed.

``select_engine`` names the one engine to load; ``candidate_engines`` lists it first and then
the engines to fall back to, in order, when it fails its self-test (``edgeseg.bundle.selftest``).
"""

from __future__ import annotations

from typing import Literal, Optional

from edgeseg.bundle.device import DeviceInfo
from edgeseg.bundle.manifest import EngineRecord, Manifest
from edgeseg.bundle.verify import partition_engines
from edgeseg.errors import BundleError

PrecisionChoice = Literal["auto", "fp32", "fp16", "int8"]

#: Without measured latencies, "auto" prefers precisions in this order.
_AUTO_ORDER = {"fp16": 0, "int8": 1, "fp32": 2}


def _speed_key(e: EngineRecord) -> tuple[float, int]:
    latency = e.latency.median_ms if e.latency is not None else float("inf")
    return latency, _AUTO_ORDER[e.precision]


def preferred_runtime(engines: list[EngineRecord], device: DeviceInfo) -> Optional[str]:
    """The runtime whose engines ``auto`` keeps when several run here: TensorRT wherever a plan
    fits; else OpenVINO on an x86 CPU (about twice ONNX Runtime's speed at fp32 accuracy where
    the CPU has bf16, docs/openvino.md); else None (ONNX Runtime, or whatever runs)."""
    runtimes = {e.runtime for e in engines}
    if "tensorrt" in runtimes:
        return "tensorrt"
    if "openvino" in runtimes and device.x86:
        return "openvino"
    return None


def compatible_engines(
    manifest: Manifest, device: DeviceInfo, runtime: Optional[str] = None
) -> tuple[list[EngineRecord], list[str]]:
    """Engines that can run here and why the others cannot.

    ``runtime`` None (``model.backend: auto``) keeps the preferred runtime's engines
    (``preferred_runtime``); a runtime named keeps only its engines.
    """
    ok, refused = partition_engines(manifest, device)
    keep = runtime or preferred_runtime(ok, device)
    if keep is not None:
        ok = [e for e in ok if e.runtime == keep]
    return ok, refused


def resolutions(engines: list[EngineRecord]) -> list[int]:
    """The input sizes available, ascending (an engine's size is the larger side)."""
    return sorted({max(e.resolution) for e in engines})


def select_engine(
    manifest: Manifest,
    device: DeviceInfo,
    resolution: int | None = None,
    precision: PrecisionChoice = "auto",
    runtime: Optional[str] = None,
) -> EngineRecord:
    """The engine to load; BundleError naming every refused engine and why when none fits.

    ``resolution`` None takes the largest available. ``precision`` "auto" takes the fastest by
    the latency measured at export (TensorRT engines beat ONNX Runtime ones whenever one runs,
    OpenVINO ones on an x86 CPU). ``runtime`` keeps to one runtime's engines.
    """
    ok, refused = compatible_engines(manifest, device, runtime)
    why = f" (refused: {'; '.join(refused)})" if refused else ""
    if not ok:
        which = f"{runtime} engine" if runtime else "engine"
        raise BundleError(f"bundle {manifest.name}: no {which} can run on this device{why}")
    sizes = resolutions(ok)
    size = sizes[-1] if resolution is None else resolution
    at_size = [e for e in ok if max(e.resolution) == size]
    if not at_size:
        raise BundleError(
            f"bundle {manifest.name}: no engine for resolution {size}; available {sizes}{why}"
        )
    if precision != "auto":
        at_size = [e for e in at_size if e.precision == precision]
        if not at_size:
            have = sorted({e.precision for e in ok if max(e.resolution) == size})
            raise BundleError(f"bundle {manifest.name}: no {precision} engine at {size}; available {have}")
    return min(at_size, key=_speed_key)


#: Fallback order of runtimes: TensorRT, then OpenVINO (where preferred), then ONNX Runtime.
_RUNTIME_ORDER = {"tensorrt": 0, "openvino": 1, "onnxruntime": 2}


def _fallback_key(e: EngineRecord, precision: PrecisionChoice, x86: bool) -> tuple[bool, int, tuple[float, int]]:
    """Requested precision first (when one is), TensorRT before OpenVINO (on x86) before ONNX
    Runtime, then speed."""
    rank = _RUNTIME_ORDER[e.runtime] if x86 or e.runtime != "openvino" else 3
    return precision != "auto" and e.precision != precision, rank, _speed_key(e)


def candidate_engines(
    manifest: Manifest,
    device: DeviceInfo,
    resolution: int | None = None,
    precision: PrecisionChoice = "auto",
    runtime: Optional[str] = None,
) -> list[EngineRecord]:
    """``select_engine``'s choice, then every other engine of that resolution that runs here.

    The fallbacks, for an engine refused by its self-test or its hash: the requested precision's
    other engines, then other precisions on TensorRT, then OpenVINO's (on x86), then the ONNX
    Runtime engines (the CPU twin, which ``compatible_engines`` leaves out wherever a TensorRT
    or OpenVINO engine is preferred), each group fastest first. ``runtime`` keeps to one
    runtime's engines. Raises like ``select_engine`` when it finds no engine at all.
    """
    first = select_engine(manifest, device, resolution, precision, runtime)
    size = max(first.resolution)
    usable, _ = partition_engines(manifest, device)
    rest = [e for e in usable if max(e.resolution) == size and e.file != first.file
            and (runtime is None or e.runtime == runtime)]
    return [first, *sorted(rest, key=lambda e: _fallback_key(e, precision, device.x86))]
