"""System telemetry, each figure labelled with the source it came from.

Sources, each optional; one that is absent or fails is reported as such and never raises:

* ``jtop``: jetson-stats on a Jetson (CPU per core, GPU load, RAM and swap use, temperatures,
  power rails, fans), used only when ``jtop`` imports *and* its service answers. It then replaces
  psutil's system figures and the thermal zones (the same numbers, read by the Jetson's tool).
* ``psutil``: CPU use (total and per core), memory, and this process (RSS, CPU, threads).
* ``nvml``: NVIDIA GPUs through pynvml (nvidia-ml-py): utilisation, memory, temperature, power.
* ``thermal``: ``/sys/class/thermal/thermal_zone*/temp`` in degrees Celsius, by zone type.

``Telemetry.snapshot()`` reads every source (at most once per ``max_age_s``; scrapes and the
periodic stats share it) and returns a ``TelemetrySnapshot``: the readings, and per source "ok"
or why it is absent or failing. A source that starts failing is logged once, and once more
when it recovers.
"""

from __future__ import annotations

import abc
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Tuple

from edgeseg.resources import Closeable

log = logging.getLogger(__name__)

#: Where Linux exposes thermal zones.
THERMAL_ROOT = Path("/sys/class/thermal")
#: Thermal zone readings are in millidegrees Celsius.
MILLI = 1000.0
#: jtop reports power in milliwatts.
MILLIWATTS_PER_WATT = 1000.0
#: How long a snapshot is reused, seconds.
DEFAULT_MAX_AGE_S = 1.0

Labels = Tuple[Tuple[str, str], ...]  # evaluated at import: typing's form for Python 3.8


@dataclass(frozen=True)
class Reading:
    """One figure: a unit-suffixed name ("cpu_percent", "temperature_celsius"), its value, the
    source that measured it and labels that tell several of one name apart (core, zone, gpu)."""

    name: str
    value: float
    source: str
    labels: Labels = ()
    help: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "source": self.source, "labels": dict(self.labels)}


@dataclass(frozen=True)
class TelemetrySnapshot:
    """Readings at one time, and the state of every source ("ok", or why not)."""

    time: float
    readings: tuple[Reading, ...]
    sources: Mapping[str, str]

    def value(self, name: str, source: str | None = None, **labels: str) -> float | None:
        """The first reading of ``name`` (from ``source``, with ``labels``), or None."""
        want = set(labels.items())
        for r in self.readings:
            if r.name == name and (source is None or r.source == source) and want <= set(r.labels):
                return r.value
        return None

    def as_dict(self) -> dict[str, Any]:
        return {"time": round(self.time, 3), "sources": dict(self.sources),
                "readings": [r.as_dict() for r in self.readings]}


class TelemetrySource(Closeable, abc.ABC):
    """One place figures come from; ``close`` releases its connection or library handle."""

    name: str

    @abc.abstractmethod
    def read(self) -> list[Reading]:
        """Current figures; may raise (the caller reports the source as failing)."""


class PsutilSource(TelemetrySource):
    """psutil: system CPU and memory (unless ``system`` is off) and this process."""

    name = "psutil"

    def __init__(self, system: bool = True):
        import psutil

        self._psutil = psutil
        self.system = system
        self._process = psutil.Process(os.getpid())
        # cpu_percent(None) measures since the previous call: prime both so the first read means something.
        psutil.cpu_percent(percpu=True)
        psutil.cpu_percent()
        self._process.cpu_percent()

    def read(self) -> list[Reading]:
        p, src = self._psutil, self.name
        out: list[Reading] = []
        if self.system:
            out.append(Reading("cpu_percent", float(p.cpu_percent()), src, help="CPU use of all cores, percent"))
            out += [Reading("cpu_core_percent", float(v), src, (("core", str(i)),), "CPU use per core, percent")
                    for i, v in enumerate(p.cpu_percent(percpu=True))]
            mem = p.virtual_memory()
            out += [
                Reading("memory_total_bytes", float(mem.total), src, help="physical memory"),
                Reading("memory_used_bytes", float(mem.total - mem.available), src,
                        help="physical memory in use (total - available)"),
            ]
            try:
                load1, _, _ = os.getloadavg()
                out.append(Reading("load_average_1m", load1, src, help="runnable tasks, 1-minute average"))
            except OSError:
                pass
        with self._process.oneshot():
            out += [
                Reading("process_resident_bytes", float(self._process.memory_info().rss), src,
                        help="resident memory of this process"),
                Reading("process_cpu_percent", float(self._process.cpu_percent()), src,
                        help="CPU use of this process, percent of one core"),
                Reading("process_threads", float(self._process.num_threads()), src, help="threads of this process"),
            ]
        return out


class NvmlSource(TelemetrySource):
    """NVIDIA GPUs through NVML (pynvml / nvidia-ml-py)."""

    name = "nvml"

    def __init__(self) -> None:
        import pynvml

        self._nvml: Any = pynvml
        pynvml.nvmlInit()
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        self._closed = False

    def read(self) -> list[Reading]:
        n, src = self._nvml, self.name
        out: list[Reading] = []
        for i, h in enumerate(self._handles):
            gpu: Labels = (("gpu", str(i)),)
            for name, get, scale, text in (
                ("gpu_utilization_percent", lambda h: n.nvmlDeviceGetUtilizationRates(h).gpu, 1.0, "GPU busy, percent"),
                ("gpu_memory_used_bytes", lambda h: n.nvmlDeviceGetMemoryInfo(h).used, 1.0, "GPU memory in use"),
                ("gpu_memory_total_bytes", lambda h: n.nvmlDeviceGetMemoryInfo(h).total, 1.0, "GPU memory"),
                ("gpu_temperature_celsius", lambda h: n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU), 1.0,
                 "GPU temperature"),
                ("gpu_power_watts", lambda h: n.nvmlDeviceGetPowerUsage(h), MILLIWATTS_PER_WATT, "GPU power draw"),
            ):
                try:
                    out.append(Reading(name, float(get(h)) / scale, src, gpu, text))
                except n.NVMLError:  # a figure this GPU does not support (power on some boards)
                    continue
        return out

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # shutting down a library that already failed: nothing left to do
                pass


class ThermalZoneSource(TelemetrySource):
    """Linux thermal zones: ``<root>/thermal_zone*/temp`` (millidegrees) labelled by ``type``."""

    name = "thermal"

    def __init__(self, root: Path = THERMAL_ROOT):
        self.root = root
        self._zones = sorted(root.glob("thermal_zone*"), key=lambda p: (len(p.name), p.name))
        if not self._zones:
            raise FileNotFoundError(f"no thermal zones under {root}")

    def read(self) -> list[Reading]:
        out: list[Reading] = []
        for zone in self._zones:
            try:
                milli = float((zone / "temp").read_text().strip())
            except (OSError, ValueError):  # a zone that is powered down or not readable right now
                continue
            try:
                kind = (zone / "type").read_text().strip()
            except OSError:
                kind = ""
            out.append(Reading("temperature_celsius", milli / MILLI, self.name,
                               (("zone", zone.name), ("type", kind)), "temperature by thermal zone"))
        return out


def jtop_readings(stats: Mapping[str, Any], source: str = "jtop") -> list[Reading]:
    """Readings from jtop's ``stats`` dictionary (jetson-stats 4.x keys; "OFF" and others skipped)."""
    out: list[Reading] = []
    for key, value in stats.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        v = float(value)
        if key.startswith("CPU") and key[3:].isdigit():
            out.append(Reading("cpu_core_percent", v, source, (("core", str(int(key[3:]) - 1)),),
                               "CPU use per core, percent"))
        elif key == "GPU" or key.startswith("GPU") and key[3:].isdigit():
            out.append(Reading("gpu_utilization_percent", v, source, (("gpu", key[3:] or "0"),), "GPU busy, percent"))
        elif key == "RAM":
            out.append(Reading("memory_used_ratio", v, source, help="physical memory in use, fraction"))
        elif key == "SWAP":
            out.append(Reading("swap_used_ratio", v, source, help="swap in use, fraction"))
        elif key.startswith("Temp "):
            out.append(Reading("temperature_celsius", v, source, (("zone", key[5:]), ("type", key[5:])),
                               "temperature by sensor"))
        elif key.startswith("Power "):
            out.append(Reading("power_watts", v / MILLIWATTS_PER_WATT, source, (("rail", key[6:]),),
                               "power by rail (TOT: total)"))
        elif key.startswith("Fan "):
            out.append(Reading("fan_percent", v, source, (("fan", key[4:]),), "fan speed, percent"))
    return out


class JtopSource(TelemetrySource):
    """jetson-stats: connects to the jtop service; refuses (raises) when it does not answer."""

    name = "jtop"

    def __init__(self) -> None:
        from jtop import jtop

        self._jetson: Any = jtop()
        self._jetson.start()  # raises JtopException when jetson_stats.service does not answer

    def read(self) -> list[Reading]:
        if not self._jetson.is_alive():
            raise RuntimeError("lost the connection to the jtop service")
        return jtop_readings(self._jetson.stats, self.name)

    def close(self) -> None:
        try:
            self._jetson.close()
        except Exception:  # already closed, or the service went away: nothing left to release
            pass


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def default_sources(
    use_jtop: bool = True, use_nvml: bool = True, thermal_root: Path = THERMAL_ROOT
) -> tuple[list[TelemetrySource], dict[str, str]]:
    """The sources available here, and why each missing one is missing."""
    sources: list[TelemetrySource] = []
    absent: dict[str, str] = {}
    jetson = False
    if use_jtop:
        try:
            sources.append(JtopSource())
            jetson = True
        except ImportError:
            absent["jtop"] = "absent: jetson-stats not installed"
        except Exception as exc:  # JtopException and socket errors: the service does not answer
            absent["jtop"] = f"absent: service does not answer ({_why(exc)})"
    else:
        absent["jtop"] = "off"
    try:
        sources.append(PsutilSource(system=not jetson))
    except ImportError:
        absent["psutil"] = "absent: psutil not installed"
    if use_nvml and not jetson:
        try:
            sources.append(NvmlSource())
        except ImportError:
            absent["nvml"] = "absent: pynvml (nvidia-ml-py) not installed"
        except Exception as exc:  # NVMLError: no driver, no GPU
            absent["nvml"] = f"absent: {_why(exc)}"
    elif not use_nvml:
        absent["nvml"] = "off"
    else:
        absent["nvml"] = "not used: jtop reports the Jetson's GPU"
    if jetson:
        absent["thermal"] = "not used: jtop reports the temperatures"
    else:
        try:
            sources.append(ThermalZoneSource(thermal_root))
        except OSError as exc:
            absent["thermal"] = f"absent: {exc}"
    return sources, absent


class Telemetry:
    """Every available source, read together; thread-safe; never raises from ``snapshot``.

    Args:
        sources: what to read (default: ``default_sources()``, probed here).
        absent: source name -> why it is not in ``sources`` (shown in snapshots).
        max_age_s: a snapshot younger than this is returned again instead of re-reading.
    """

    def __init__(
        self,
        sources: Sequence[TelemetrySource] | None = None,
        absent: Mapping[str, str] | None = None,
        max_age_s: float = DEFAULT_MAX_AGE_S,
    ):
        if sources is None:
            found, why = default_sources()
            sources, absent = found, {**why, **(absent or {})}
        self.sources = list(sources)
        self._absent = dict(absent or {})
        self.max_age_s = max_age_s
        self._failing: dict[str, str] = {}
        self._last: TelemetrySnapshot | None = None
        self._lock = threading.Lock()

    def snapshot(self, max_age_s: float | None = None) -> TelemetrySnapshot:
        age = self.max_age_s if max_age_s is None else max_age_s
        with self._lock:
            now = time.time()
            if self._last is not None and now - self._last.time < age:
                return self._last
            readings: list[Reading] = []
            for source in self.sources:
                try:
                    got = source.read()
                except Exception as exc:  # a failing source is reported, never fatal
                    why = _why(exc)
                    if source.name not in self._failing:
                        log.warning("telemetry source %s failing: %s", source.name, why)
                    self._failing[source.name] = f"failing: {why}"
                    continue
                if self._failing.pop(source.name, None) is not None:
                    log.info("telemetry source %s recovered", source.name)
                readings += got
            states = {**self._absent, **{s.name: self._failing.get(s.name, "ok") for s in self.sources}}
            self._last = TelemetrySnapshot(now, tuple(readings), states)
            return self._last

    def close(self) -> None:
        for source in self.sources:
            source.close()


def readings_by_name(readings: Iterable[Reading]) -> dict[str, list[Reading]]:
    """Readings grouped by name, names in first-seen order."""
    out: dict[str, list[Reading]] = {}
    for r in readings:
        out.setdefault(r.name, []).append(r)
    return out
