"""The system monitor panel's figures: CPU, memory, temperatures and (on Jetson) GPU load.

Read with psutil (already a runtime dependency) and, for the Jetson's integrated GPU, from the
``load`` file its driver exposes in sysfs (per mille). Each reading is cheap (a few /proc and
/sys files) and is taken at most once per statistics event, never per frame. Values that this
machine does not expose are left out rather than reported as zero. Where the daemon runs the
monitor (``edgeseg.monitor.telemetry``), its snapshot is shown instead (``panel_from_telemetry``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import psutil

JETSON_GPU_LOAD_FILES: Final = (
    Path("/sys/devices/platform/gpu.0/load"),  # JetPack 5/6 (Orin)
    Path("/sys/devices/gpu.0/load"),  # JetPack 4 (Nano, TX2, Xavier)
    Path("/sys/devices/platform/17000000.ga10b/load"),  # Orin, by its device-tree name
)
MB: Final = 1024 * 1024
MAX_SENSORS: Final = 6
"""Temperatures shown at most (the hottest ones)."""


def _gpu_load_percent() -> float | None:
    for path in JETSON_GPU_LOAD_FILES:
        try:
            return int(path.read_text().strip()) / 10.0
        except (OSError, ValueError):
            continue
    return None


def _temperatures() -> dict[str, float]:
    read = getattr(psutil, "sensors_temperatures", None)
    if read is None:
        return {}
    try:
        sensors = read()
    except (OSError, RuntimeError):
        return {}
    readings: dict[str, float] = {}
    for chip, entries in sensors.items():
        for i, entry in enumerate(entries):
            name = entry.label or (chip if len(entries) == 1 else f"{chip}{i}")
            readings[name] = round(float(entry.current), 1)
    hottest = sorted(readings.items(), key=lambda kv: -kv[1])[:MAX_SENSORS]
    return dict(hottest)


class SystemMonitor:
    """Readings for the system panel; CPU figures cover the time since the previous reading."""

    def __init__(self) -> None:
        self._process = psutil.Process(os.getpid())
        psutil.cpu_percent(None)  # the first call only starts the measurement interval
        self._process.cpu_percent(None)

    def read(self) -> dict[str, Any]:
        memory = psutil.virtual_memory()
        out: dict[str, Any] = {
            "cpu_percent": round(psutil.cpu_percent(None), 1),
            "cpu_count": psutil.cpu_count() or 1,
            "process_cpu_percent": round(self._process.cpu_percent(None), 1),
            "load_avg": [round(v, 2) for v in psutil.getloadavg()],
            "memory_used_mb": round((memory.total - memory.available) / MB),
            "memory_total_mb": round(memory.total / MB),
            "memory_percent": round(float(memory.percent), 1),
            "process_rss_mb": round(self._process.memory_info().rss / MB, 1),
        }
        gpu = _gpu_load_percent()
        if gpu is not None:
            out["gpu_percent"] = gpu
        temperatures = _temperatures()
        if temperatures:
            out["temperatures_c"] = temperatures
        return out


def _label(reading: Mapping[str, Any], *keys: str) -> str:
    labels = reading.get("labels") or {}
    for key in keys:
        if labels.get(key):
            return str(labels[key])
    return str(reading.get("name", "?"))


def panel_from_telemetry(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """The panel's figures from an ``edgeseg.monitor`` telemetry snapshot (its ``as_dict()``).

    The monitor reads more places (jtop on a Jetson, NVML, thermal zones); the daemon may hand
    its snapshot to the dashboard instead of the dashboard reading psutil itself.
    """
    readings = [r for r in snapshot.get("readings", ()) if isinstance(r, Mapping)]
    first: dict[str, float] = {}
    for r in readings:
        first.setdefault(str(r.get("name")), float(r.get("value", 0.0)))
    out: dict[str, Any] = {}
    cores = [r for r in readings if r.get("name") == "cpu_core_percent"]
    if "cpu_percent" in first:
        out["cpu_percent"] = round(first["cpu_percent"], 1)
    elif cores:
        out["cpu_percent"] = round(sum(float(r["value"]) for r in cores) / len(cores), 1)
    if cores:
        out["cpu_count"] = len(cores)
    if "process_cpu_percent" in first:
        out["process_cpu_percent"] = round(first["process_cpu_percent"], 1)
    if "process_resident_bytes" in first:
        out["process_rss_mb"] = round(first["process_resident_bytes"] / MB, 1)
    if "load_average_1m" in first:
        out["load_avg"] = [round(first["load_average_1m"], 2)]
    if "memory_used_bytes" in first and first.get("memory_total_bytes"):
        out["memory_used_mb"] = round(first["memory_used_bytes"] / MB)
        out["memory_total_mb"] = round(first["memory_total_bytes"] / MB)
        out["memory_percent"] = round(100.0 * first["memory_used_bytes"] / first["memory_total_bytes"], 1)
    elif "memory_used_ratio" in first:
        ratio = first["memory_used_ratio"]
        out["memory_percent"] = round(100.0 * ratio if ratio <= 1.0 else ratio, 1)
    if "gpu_utilization_percent" in first:
        out["gpu_percent"] = round(first["gpu_utilization_percent"], 1)
    if "gpu_memory_used_bytes" in first and first.get("gpu_memory_total_bytes"):
        out["gpu_memory_used_mb"] = round(first["gpu_memory_used_bytes"] / MB)
        out["gpu_memory_total_mb"] = round(first["gpu_memory_total_bytes"] / MB)
    power = {_label(r, "rail"): float(r["value"]) for r in readings if r.get("name") == "power_watts"}
    if power:
        out["power_watts"] = round(power.get("TOT", sum(power.values())), 2)
    elif "gpu_power_watts" in first:
        out["power_watts"] = round(first["gpu_power_watts"], 2)
    temperatures = {
        _label(r, "type", "zone"): round(float(r["value"]), 1)
        for r in readings if r.get("name") in ("temperature_celsius", "gpu_temperature_celsius")
    }
    if temperatures:
        out["temperatures_c"] = dict(sorted(temperatures.items(), key=lambda kv: -kv[1])[:MAX_SENSORS])
    return out
