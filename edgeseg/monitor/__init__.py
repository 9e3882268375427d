"""Monitoring: system telemetry labelled by source, and the Prometheus ``/metrics`` page.

    telemetry.py  jtop (Jetson), psutil, NVML, thermal zones; absent sources reported, never fatal
    metrics.py    per-stage latency histograms, counters and gauges in the text format 0.0.4
"""

from edgeseg.monitor.metrics import CONTENT_TYPE, StageHistograms, render_metrics
from edgeseg.monitor.telemetry import Reading, Telemetry, TelemetrySnapshot, TelemetrySource

__all__ = [
    "CONTENT_TYPE",
    "Reading",
    "StageHistograms",
    "Telemetry",
    "TelemetrySnapshot",
    "TelemetrySource",
    "render_metrics",
]
