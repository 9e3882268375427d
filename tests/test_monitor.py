"""Monitoring: the Prometheus text format (checked by a parser of the 0.0.4 grammar), per-stage
histograms, the /metrics page of a real pipeline, and telemetry from every source, present,
absent or failing."""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import types
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edgeseg.adaptive.controller import AdaptiveController
from edgeseg.adaptive.ladder import ModelLadder
from edgeseg.config.adaptive import AdaptiveConfig
from edgeseg.model import Model, load_model
from edgeseg.monitor.metrics import (
    CONTENT_TYPE,
    Family,
    Registry,
    StageHistograms,
    escape_help,
    escape_label_value,
    format_value,
    render_metrics,
)
from edgeseg.monitor.telemetry import (
    NvmlSource,
    PsutilSource,
    Reading,
    Telemetry,
    TelemetrySource,
    ThermalZoneSource,
    default_sources,
    jtop_readings,
)
from edgeseg.pipeline.processor import FrameProcessor
from edgeseg.pipeline.runner import Pipeline
from edgeseg.postprocess import Postprocessor
from edgeseg.postprocess.settings import PostprocessSettings
from edgeseg.sources import open_source
from edgeseg.structures import FrameResult

# -- a parser of the text exposition format 0.0.4 -------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\\\|\\"|\\n)*)"')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def _labels(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        m = _PAIR.match(text, pos)
        assert m is not None, f"bad label set at {text[pos:]!r}"
        out[m.group(1)] = re.sub(r"\\\\|\\\"|\\n", lambda e: _UNESCAPE[e.group(0)], m.group(2))
        pos = m.end()
        if pos < len(text):
            assert text[pos] == ",", f"expected ',' in {text!r}"
            pos += 1
    return out


def parse_exposition(text: str) -> dict[str, dict[str, Any]]:
    """Families by name: help, type and samples (name, labels, value); asserts the grammar."""
    assert text.endswith("\n")
    families: dict[str, dict[str, Any]] = {}
    current: str | None = None
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert name not in families, f"family {name} appears twice"
            families[name] = {"help": line.split(" ", 3)[3] if line.count(" ") >= 3 else "", "samples": []}
            current = name
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name == current and "type" not in families[name], f"TYPE of {name} not right after its HELP"
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped")
            families[name]["type"] = kind
        else:
            m = _SAMPLE.match(line)
            assert m is not None, f"not a sample line: {line!r}"
            name, labels, value = m.group(1), _labels(m.group(2) or ""), m.group(3)
            assert current is not None and "type" in families[current]
            suffixes = ("_bucket", "_sum", "_count") if families[current]["type"] == "histogram" else ("",)
            assert any(name == current + s for s in suffixes), f"{name} outside its family {current}"
            key = (name, tuple(sorted(labels.items())))
            assert key not in seen, f"duplicate sample {key}"
            seen.add(key)
            families[current]["samples"].append((name, labels, float(value)))
    for name, fam in families.items():
        if fam["type"] == "histogram":
            _check_histogram(name, fam["samples"])
    return families


def _check_histogram(name: str, samples: list[tuple[str, dict[str, str], float]]) -> None:
    series: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
    counts: dict[tuple[tuple[str, str], ...], float] = {}
    for sample, labels, value in samples:
        rest = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        if sample.endswith("_bucket"):
            series.setdefault(rest, []).append((float(labels["le"]), value))
        elif sample.endswith("_count"):
            counts[rest] = value
    for rest, buckets in series.items():
        bounds = [b for b, _ in buckets]
        assert bounds == sorted(bounds) and math.isinf(bounds[-1]), f"{name}{rest}: le not ascending to +Inf"
        values = [v for _, v in buckets]
        assert values == sorted(values), f"{name}{rest}: buckets not cumulative"
        assert values[-1] == counts[rest], f"{name}{rest}: +Inf bucket != _count"


def value_of(families: dict[str, dict[str, Any]], name: str, **labels: str) -> float:
    family = name if name in families else re.sub(r"_(bucket|sum|count)$", "", name)
    for sample, got, value in families[family]["samples"]:
        if sample == name and labels.items() <= got.items():
            return float(value)
    raise KeyError(f"{name} {labels}")


# -- the format ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "value, text",
    [(1, "1"), (0.0, "0"), (1.5, "1.5"), (-2.0, "-2"), (0.001, "0.001"), (1e20, "1e+20"),
     (math.inf, "+Inf"), (-math.inf, "-Inf"), (math.nan, "NaN")],
)
def test_format_value(value: float, text: str) -> None:
    assert format_value(value) == text


@pytest.mark.parametrize(
    "raw, escaped",
    [("plain", "plain"), ('say "hi"', 'say \\"hi\\"'), ("C:\\dir", "C:\\\\dir"), ("two\nlines", "two\\nlines")],
)
def test_label_values_are_escaped_and_parse_back(raw: str, escaped: str) -> None:
    assert escape_label_value(raw) == escaped
    fam = Family("edgeseg_x", "help", "gauge")
    fam.add(1, {"v": raw})
    parsed = parse_exposition(fam.render())
    assert parsed["edgeseg_x"]["samples"] == [("edgeseg_x", {"v": raw}, 1.0)]


def test_help_text_escapes_backslash_and_newline_only() -> None:
    assert escape_help('a\\b\n"c"') == 'a\\\\b\\n"c"'


@pytest.mark.parametrize(
    "make",
    [
        lambda: Family("1bad", "h", "gauge"),
        lambda: Family("edgeseg_x", "h", "gauge").add(1, {"bad-name": "v"}),
        lambda: Family("edgeseg_x", "h", "gauge").add(1, {"__reserved": "v"}),
    ],
)
def test_invalid_names_are_refused(make: Any) -> None:
    with pytest.raises(ValueError, match="not valid"):
        make()


def test_one_family_per_name_and_type() -> None:
    reg = Registry()
    reg.gauge("x", "h", 1, {"a": "1"})
    reg.gauge("x", "h", 2, {"a": "2"})
    with pytest.raises(ValueError, match="registered as gauge"):
        reg.counter("x", "h", 1)
    assert reg.render() == '# HELP edgeseg_x h\n# TYPE edgeseg_x gauge\nedgeseg_x{a="1"} 1\nedgeseg_x{a="2"} 2\n'


def test_stage_histograms_are_cumulative_with_fixed_buckets() -> None:
    h = StageHistograms(buckets_s=(0.01, 0.1), fps_window_s=2.0)
    for t, ms in enumerate((5.0, 10.0, 50.0, 500.0)):
        h.observe_latency({"infer": ms, "decode": 1.0}, now=100.0 + t * 0.5)
    counts, total, n = h.snapshot()["infer"]
    assert counts == [2, 3, 4] and n == 4 and total == pytest.approx(0.565)  # 10 ms falls in le=0.01
    assert h.bounds[-1] == math.inf
    assert h.recent_fps(now=101.5) == pytest.approx(4 / 1.5)  # shorter than the window: since the first
    assert h.recent_fps(now=103.0) == pytest.approx(2 / 2.0)  # the frames at 101.0 and 101.5, over 2 s
    with pytest.raises(ValueError):
        StageHistograms(buckets_s=(0.0,))


# -- the /metrics page of a real pipeline ---------------------------------------------------------

class FixedSource(TelemetrySource):
    def __init__(self, name: str, readings: list[Reading]) -> None:
        self.name, self.readings = name, readings

    def read(self) -> list[Reading]:
        return self.readings


@pytest.fixture(scope="module")
def model(model_dynamic: Path) -> Model:
    return load_model(model_dynamic, imgsz=320, threads=1)


def test_metrics_page_of_a_real_pipeline(model: Model, model_dynamic: Path, val_images: Path) -> None:
    ladder = ModelLadder.open(model_dynamic, model, (320, 416))
    processor = FrameProcessor(model, Postprocessor(PostprocessSettings(), model.spec.class_names))
    controller = AdaptiveController(processor, ladder, AdaptiveConfig(enabled=True, target_fps=5.0))
    histograms = StageHistograms()

    def on_result(result: FrameResult) -> None:
        histograms.observe(result)
        controller.observe(result)

    thermal = FixedSource("thermal", [Reading("temperature_celsius", 41.5, "thermal",
                                              (("zone", "thermal_zone0"), ("type", 'odd "name"')), "temp")])
    telemetry = Telemetry([PsutilSource(), thermal], absent={"nvml": "absent: pynvml (nvidia-ml-py) not installed"})
    with open_source(str(val_images)) as source:
        pipeline = Pipeline(source, processor, [], max_frames=5, on_result=on_result)
        pipeline.run()
    text = render_metrics(pipeline, histograms=histograms, adaptive=controller, telemetry=telemetry.snapshot(),
                          extra={"uptime_seconds": 12.5})
    f = parse_exposition(text)
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
    assert f["edgeseg_frames_processed_total"]["type"] == "counter"
    assert value_of(f, "edgeseg_frames_processed_total") == 5 == value_of(f, "edgeseg_frames_captured_total")
    assert value_of(f, "edgeseg_frames_dropped_total") == 0 and value_of(f, "edgeseg_frames_in_flight") == 0
    assert f["edgeseg_stage_latency_seconds"]["type"] == "histogram"
    for stage in ("preprocess", "infer", "decode", "postprocess", "sink"):
        assert value_of(f, "edgeseg_stage_latency_seconds_count", stage=stage) == 5
        assert value_of(f, "edgeseg_stage_latency_seconds_bucket", stage=stage, le="+Inf") == 5
    infer_sum = value_of(f, "edgeseg_stage_latency_seconds_sum", stage="infer")
    assert 0 < infer_sum < 60 and value_of(f, "edgeseg_stage_latency_median_seconds", stage="infer") < infer_sum
    assert value_of(f, "edgeseg_fps") > 0 and value_of(f, "edgeseg_fps_average") > 0
    assert value_of(f, "edgeseg_info", model=model.spec.name, backend="CPUExecutionProvider", engine="") == 1
    assert value_of(f, "edgeseg_input_width_pixels") == 320
    assert value_of(f, "edgeseg_adaptive_size_pixels") in (320, 416)
    assert value_of(f, "edgeseg_adaptive_target_fps") == 5
    assert value_of(f, "edgeseg_adaptive_table_latency_seconds", size="320", kind="measured") > 0
    assert value_of(f, "edgeseg_process_resident_bytes", source="psutil") > 10e6
    assert value_of(f, "edgeseg_temperature_celsius", source="thermal", type='odd "name"') == 41.5
    assert value_of(f, "edgeseg_telemetry_source_up", source="psutil") == 1
    assert value_of(f, "edgeseg_telemetry_source_up", source="nvml") == 0
    assert value_of(f, "edgeseg_uptime_seconds") == 12.5
    assert all(s[1].get("source") for s in f["edgeseg_cpu_core_percent"]["samples"])


def test_metrics_page_without_a_pipeline_is_still_valid() -> None:
    assert render_metrics() == ""
    assert parse_exposition(render_metrics(histograms=StageHistograms()))


# -- telemetry ----------------------------------------------------------------------------------

class Flaky(TelemetrySource):
    name = "flaky"

    def __init__(self) -> None:
        self.fail = True

    def read(self) -> list[Reading]:
        if self.fail:
            raise RuntimeError("sensor gone\nsecond line")
        return [Reading("x_celsius", 1.0, self.name)]


def test_a_failing_source_is_reported_logged_once_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    flaky = Flaky()
    t = Telemetry([flaky, FixedSource("fixed", [Reading("y", 2.0, "fixed")])], absent={"nvml": "off"}, max_age_s=0)
    with caplog.at_level(logging.INFO, logger="edgeseg.monitor"):
        a, b = t.snapshot(), t.snapshot()
        flaky.fail = False
        c = t.snapshot()
    assert a.sources == {"nvml": "off", "flaky": "failing: RuntimeError: sensor gone", "fixed": "ok"}
    assert a.value("y") == 2.0 and a.value("x_celsius") is None and b.sources == a.sources
    assert caplog.text.count("telemetry source flaky failing") == 1 and "flaky recovered" in caplog.text
    assert c.sources["flaky"] == "ok" and c.value("x_celsius", source="flaky") == 1.0
    assert json.loads(json.dumps(c.as_dict()))["readings"][0] == {"name": "x_celsius", "value": 1.0,
                                                                    "source": "flaky", "labels": {}}


def test_snapshots_are_reused_for_max_age() -> None:
    t = Telemetry([FixedSource("fixed", [])], max_age_s=60)
    assert t.snapshot() is t.snapshot()
    assert t.snapshot(max_age_s=0) is not t.snapshot(max_age_s=0)


def test_psutil_figures_are_labelled_with_their_source() -> None:
    readings = PsutilSource().read()
    names = {r.name for r in readings}
    assert {"cpu_percent", "cpu_core_percent", "memory_used_bytes", "process_resident_bytes"} <= names
    assert {r.source for r in readings} == {"psutil"}
    assert {r.name for r in PsutilSource(system=False).read()} == {"process_resident_bytes", "process_cpu_percent",
                                                                   "process_threads"}


def test_thermal_zones_by_type_skipping_unreadable_ones(tmp_path: Path) -> None:
    for i, (temp, kind) in enumerate([("45000\n", "x86_pkg_temp"), (None, "acpitz"), ("38500", "gpu-thermal")]):
        zone = tmp_path / f"thermal_zone{i if i < 2 else 10}"
        zone.mkdir()
        (zone / "type").write_text(kind + "\n")
        if temp is not None:
            (zone / "temp").write_text(temp)
    readings = ThermalZoneSource(tmp_path).read()
    assert [(r.value, dict(r.labels)) for r in readings] == [
        (45.0, {"zone": "thermal_zone0", "type": "x86_pkg_temp"}),
        (38.5, {"zone": "thermal_zone10", "type": "gpu-thermal"}),
    ]
    _, absent = default_sources(use_jtop=False, use_nvml=False, thermal_root=tmp_path / "none")
    assert absent["thermal"].startswith("absent: no thermal zones under")


JTOP_STATS = {
    "time": datetime(2026, 1, 1), "uptime": timedelta(seconds=5), "CPU1": 12, "CPU2": "OFF", "CPU3": 40,
    "RAM": 0.42, "SWAP": 0.0, "EMC": 20, "GPU": 55.5, "APE": "OFF", "Fan pwmfan0": 30.0, "Temp cpu": 41.25,
    "Temp gpu": 40.0, "Power VDD_IN": 5230, "Power TOT": 6100, "jetson_clocks": "ON", "nvp model": "MAXN",
}


@pytest.mark.parametrize(
    "name, labels, value",
    [
        ("cpu_core_percent", {"core": "0"}, 12.0),
        ("cpu_core_percent", {"core": "2"}, 40.0),
        ("gpu_utilization_percent", {"gpu": "0"}, 55.5),
        ("memory_used_ratio", {}, 0.42),
        ("temperature_celsius", {"zone": "cpu", "type": "cpu"}, 41.25),
        ("power_watts", {"rail": "TOT"}, 6.1),
        ("power_watts", {"rail": "VDD_IN"}, 5.23),
        ("fan_percent", {"fan": "pwmfan0"}, 30.0),
    ],
)
def test_jtop_stats_become_labelled_readings(name: str, labels: dict[str, str], value: float) -> None:
    readings = jtop_readings(JTOP_STATS)
    match = [r for r in readings if r.name == name and dict(r.labels) == labels]
    assert len(match) == 1 and match[0].value == pytest.approx(value) and match[0].source == "jtop"
    assert not [r for r in readings if dict(r.labels).get("core") == "1"]  # CPU2 is off


def _fake_jtop(monkeypatch: pytest.MonkeyPatch, answers: bool) -> None:
    module = types.ModuleType("jtop")

    class JtopException(Exception):
        pass

    class jtop:  # noqa: N801 - the library's own spelling
        def start(self) -> None:
            if not answers:
                raise JtopException("The jetson_stats.service is not active. Please run:\nsudo systemctl restart")

        def is_alive(self) -> bool:
            return True

        stats = JTOP_STATS

        def close(self) -> None:
            pass

    module.jtop = jtop  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "jtop", module)


def test_jtop_is_used_only_when_its_service_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_jtop(monkeypatch, answers=False)
    sources, absent = default_sources(use_nvml=False)
    assert "jtop" not in {s.name for s in sources}
    assert absent["jtop"] == "absent: service does not answer (JtopException: The jetson_stats.service is not active." \
                             " Please run:)"
    _fake_jtop(monkeypatch, answers=True)
    sources, absent = default_sources()
    assert [s.name for s in sources] == ["jtop", "psutil"]
    assert absent["thermal"].startswith("not used") and absent["nvml"].startswith("not used")
    snap = Telemetry(sources, absent).snapshot()
    assert snap.value("power_watts", source="jtop", rail="TOT") == pytest.approx(6.1)
    assert snap.value("cpu_percent") is None  # jtop reports the system; psutil only this process
    assert snap.value("process_resident_bytes", source="psutil") is not None


def test_nvml_figures_per_gpu_skip_what_a_gpu_does_not_support(monkeypatch: pytest.MonkeyPatch) -> None:
    nv = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    def power(handle: int) -> int:
        if handle == 1:
            raise NVMLError("Not Supported")
        return 71_500

    ns = types.SimpleNamespace
    nv.__dict__.update(
        NVMLError=NVMLError, NVML_TEMPERATURE_GPU=0, nvmlInit=lambda: None, nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 2, nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetUtilizationRates=lambda h: ns(gpu=30 + h, memory=5),
        nvmlDeviceGetMemoryInfo=lambda h: ns(used=2 << 30, total=80 << 30, free=78 << 30),
        nvmlDeviceGetTemperature=lambda h, kind: 50 + h, nvmlDeviceGetPowerUsage=power,
    )
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    source = NvmlSource()
    readings = source.read()
    source.close()
    got = {(r.name, dict(r.labels)["gpu"]): r.value for r in readings}
    assert got[("gpu_utilization_percent", "1")] == 31 and got[("gpu_temperature_celsius", "0")] == 50
    assert got[("gpu_power_watts", "0")] == pytest.approx(71.5) and ("gpu_power_watts", "1") not in got
    assert got[("gpu_memory_total_bytes", "0")] == 80 << 30
    assert {r.source for r in readings} == {"nvml"}


def test_absent_libraries_are_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "jtop", None)  # import fails
    monkeypatch.setitem(sys.modules, "pynvml", None)
    sources, absent = default_sources()
    assert absent["jtop"] == "absent: jetson-stats not installed"
    assert absent["nvml"] == "absent: pynvml (nvidia-ml-py) not installed"
    assert "psutil" in {s.name for s in sources}
    snap = Telemetry(sources, absent).snapshot()
    assert snap.sources["psutil"] == "ok" and snap.value("cpu_percent", source="psutil") is not None
