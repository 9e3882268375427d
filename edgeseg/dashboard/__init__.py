"""The web dashboard served by the daemon: live stream, statistics, controls, system monitor.

``DashboardSink`` is written to by the pipeline like any sink; ``DashboardServer`` serves the
page, the MJPEG stream, Server-Sent Events, the control API and /metrics from a daemon thread;
``Controls`` is what the daemon implements so the page can change the running pipeline.
"""

from edgeseg.dashboard.controls import ControlRequest, Controls, parse_control
from edgeseg.dashboard.feed import DashboardSink
from edgeseg.dashboard.server import DashboardError, DashboardServer, authorize

__all__ = [
    "ControlRequest",
    "Controls",
    "DashboardError",
    "DashboardServer",
    "DashboardSink",
    "authorize",
    "parse_control",
]
