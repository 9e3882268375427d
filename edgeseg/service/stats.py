"""One snapshot of what the daemon is doing: for STATUS=, the log, and the MQTT stats topic."""

from __future__ import annotations

import time
from typing import Any

from edgeseg.model import Model
from edgeseg.pipeline.runner import Pipeline


def snapshot(pipeline: Pipeline, model: Model, started: float, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Counters, recent stage medians and the engine in use, as plain JSON-able values."""
    c = pipeline.counters
    stages = {name: round(s.median, 2) for name, s in pipeline.times.summaries().items()}
    engine = model.engine
    out: dict[str, Any] = {
        "uptime_s": round(time.monotonic() - started, 1),
        "frames": c.processed,
        "fps": round(c.fps, 2),
        "instances": c.instances,
        "dropped": pipeline.drops,
        "skipped": sum(cam.skipped for cam in pipeline.cameras()),
        "sink_errors": c.sink_errors,
        "stage_median_ms": stages,
        "model": model.spec.name,
        "resolution": list(model.spec.input_size),
        "backend": model.backend.info.provider,
        "engine": None if engine is None else {"file": engine.file, "precision": engine.precision},
    }
    cameras = pipeline.cameras()
    if len(cameras) > 1 or any(cam.name for cam in cameras):
        out["cameras"] = [cam.as_dict() for cam in cameras]
    out.update(extra or {})
    return out


def status_line(stats: dict[str, Any]) -> str:
    """The short STATUS= text systemctl status shows."""
    mqtt = stats.get("mqtt")
    broker = ""
    if isinstance(mqtt, dict):
        state = "connected" if mqtt.get("connected") else "disconnected"
        broker = f"; MQTT {state}, queue {mqtt.get('queue_depth', 0)}"
    cameras = stats.get("cameras") or []
    online = ""
    if len(cameras) > 1:
        down = [c["name"] for c in cameras if not c.get("online")]
        online = f", {len(cameras) - len(down)}/{len(cameras)} cameras online" + (
            f" ({', '.join(down)} offline)" if down else "")
    return (f"{stats['fps']:.1f} FPS, {stats['frames']} frames{online}; {stats['model']} "
            f"{stats['resolution'][1]}x{stats['resolution'][0]} on {stats['backend']}{broker}")
