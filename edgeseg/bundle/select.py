"""Which engine of a bundle to run: compatible first, then resolution, then precision or speed.

``select_engine`` names the one engine to load; ``candidate_engines`` lists it first and then
the engines to fall back to, in order, when it fails its self-test (``edgeseg.bundle.selftest``).
"""

from __future__ import annotations

from typing import Literal

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


def compatible_engines(manifest: Manifest, device: DeviceInfo) -> tuple[list[EngineRecord], list[str]]:
    """Engines that can run here (TensorRT ones first when any fits) and why the others cannot."""
    ok, refused = partition_engines(manifest, device)
    if any(e.runtime == "tensorrt" for e in ok):
        ok = [e for e in ok if e.runtime == "tensorrt"]
    return ok, refused


def resolutions(engines: list[EngineRecord]) -> list[int]:
    """The input sizes available, ascending (an engine's size is the larger side)."""
    return sorted({max(e.resolution) for e in engines})


def select_engine(
    manifest: Manifest,
    device: DeviceInfo,
    resolution: int | None = None,
    precision: PrecisionChoice = "auto",
) -> EngineRecord:
    """The engine to load; BundleError naming every refused engine and why when none fits.

    ``resolution`` None takes the largest available. ``precision`` "auto" takes the fastest by
    the latency measured at export (TensorRT engines beat ONNX Runtime ones whenever one runs).
    """
    ok, refused = compatible_engines(manifest, device)
    why = f" (refused: {'; '.join(refused)})" if refused else ""
    if not ok:
        raise BundleError(f"bundle {manifest.name}: no engine can run on this device{why}")
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


def _fallback_key(e: EngineRecord, precision: PrecisionChoice) -> tuple[bool, bool, tuple[float, int]]:
    """Requested precision first (when one is), TensorRT before ONNX Runtime, then speed."""
    return (precision != "auto" and e.precision != precision, e.runtime != "tensorrt", _speed_key(e))


def candidate_engines(
    manifest: Manifest,
    device: DeviceInfo,
    resolution: int | None = None,
    precision: PrecisionChoice = "auto",
) -> list[EngineRecord]:
    """``select_engine``'s choice, then every other engine of that resolution that runs here.

    The fallbacks, for an engine refused by its self-test: the requested precision's other
    engines, then other precisions on TensorRT, then the ONNX Runtime engines (the CPU twin, which
    ``compatible_engines`` leaves out wherever a TensorRT engine fits), each group fastest first.
    Raises like ``select_engine`` when it finds no engine at all.
    """
    first = select_engine(manifest, device, resolution, precision)
    size = max(first.resolution)
    usable, _ = partition_engines(manifest, device)
    rest = [e for e in usable if max(e.resolution) == size and e.file != first.file]
    return [first, *sorted(rest, key=lambda e: _fallback_key(e, precision))]
